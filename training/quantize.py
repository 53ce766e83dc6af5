"""Dynamic int8 quantization of an exported artifact, and its side-by-side check against the fp32 original.

    python -m training.quantize --model-dir exported/imdb-lstm --out /tmp/imdb-lstm-int8
    python -m training.quantize --model-dir exported/imdb-lstm --out /tmp/imdb-lstm-int8 --evaluate \
        --data ../shared/data/aclImdb_train.tar.gz --report benchmarks/quantize_results.json

Both graphs (`model.onnx` and `diagnostics.onnx`) go through onnxruntime's `quantize_dynamic` with the same settings:
the LSTM op becomes `DynamicQuantizeLSTM` (int8 W and R, per output channel) and the embedding `Gather` reads an
8-bit table (uint8 with a zero point, the quantizer's choice for Gather data), then `DequantizeLinear`. The quantizer
has no GRU or RNN kernel, so those cells stay fp32 and only their embedding shrinks. The output head and the
diagnostics graph's per-gate MatMuls stay fp32: they are tiny, and the head is where rounding would move the
calibrated probabilities most. Because both graphs quantize the same weights the same way, their 8-bit tensors are
identical and share one `weights.bin`, as the fp32 export does; the diagnostics then explain the int8 network (its
hidden states), not the fp32 one.

The result is a complete artifact directory: tokenizer and model card copied, a manifest with the new name, a
`quantization` block (source model and checksum, settings, op counts) and fresh sha256s, loadable by ModelRuntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from service.artifacts import ArtifactError, file_entry, load_manifest
from training.onnx_graph import externalize

GRAPHS = ("model.onnx", "diagnostics.onnx")
OP_TYPES = ("LSTM", "Gather")


class QuantizeError(RuntimeError):
    """The artifact cannot be quantized as asked (bad input, existing output, inconsistent graphs)."""


def quantize_graph(path: Path, out: Path, per_channel: bool, op_types: tuple[str, ...] = OP_TYPES) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))  # pulls the external weights.bin in beside it
    # The quantizer logs a generic "consider pre-processing" warning on the root logger for every graph; the
    # shape-inference pre-pass it suggests changes nothing in these small graphs.
    logging.disable(logging.WARNING)
    try:
        # Symmetric int8 weights (zero point 0); the default today, spelled out so that a new default cannot slip in.
        quantize_dynamic(
            model,
            str(out),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True},
        )
    finally:
        logging.disable(logging.NOTSET)
    return onnx.load(str(out))


def check_shared(graphs: dict[str, onnx.ModelProto]) -> None:
    """externalize() writes each initializer name once; a name the graphs share must hold the same bytes."""
    seen: dict[str, bytes] = {}
    for fname, graph in graphs.items():
        for t in graph.graph.initializer:
            data = t.SerializeToString()
            if seen.setdefault(t.name, data) != data:
                raise QuantizeError(f"{fname}: initializer {t.name!r} differs from the other graph's after quantization")


def quantize_artifact(
    model_dir: str | Path,
    out: str | Path,
    name: str | None = None,
    per_channel: bool = True,
    force: bool = False,
    op_types: tuple[str, ...] = OP_TYPES,
) -> dict:
    """Write the int8 artifact directory `out` from the verified fp32 artifact `model_dir`; returns its manifest."""
    import onnxruntime

    src, out = Path(model_dir), Path(out)
    unknown = set(op_types) - set(OP_TYPES)
    if unknown or not op_types:
        raise QuantizeError(f"op types {sorted(unknown) or '(none)'}: choose from {', '.join(OP_TYPES)}")
    manifest = load_manifest(src)
    if out.resolve() == src.resolve():
        raise QuantizeError(f"{out}: the output must not be the source artifact")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise QuantizeError(f"{out}: exists and is not empty (pass --force to replace it)")
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        graphs = {f: quantize_graph(src / f, Path(tmp) / f, per_channel, tuple(op_types)) for f in GRAPHS}
    check_shared(graphs)
    out.mkdir(parents=True, exist_ok=True)
    externalize(graphs, out / "weights.bin")
    for fname, graph in graphs.items():
        onnx.save(graph, str(out / fname))
        onnx.checker.check_model(str(out / fname))
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    ops = Counter(n.op_type for n in graphs["model.onnx"].graph.node)
    cell = manifest["model"].get("cell")
    quantized_cell = ops.get("DynamicQuantizeLSTM", 0) > 0
    new = dict(manifest)
    new["name"] = name or f"{manifest['name']}-int8"
    new["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new["quantization"] = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "onnxruntime": onnxruntime.__version__,
        "weights": "recurrent W and R: int8 symmetric"
        + (", per output channel" if per_channel else ", per tensor")
        + "; embedding table: 8-bit (uint8, zero point)",
        "activations": "uint8, scale computed per call",
        "op_types": list(op_types),
        "recurrent_cell": "int8 (DynamicQuantizeLSTM)"
        if quantized_cell
        else f"fp32 ({cell}: "
        + ("not asked for)" if cell == "lstm" and "LSTM" not in op_types else "onnxruntime has no dynamic int8 kernel for it)"),
        "source": {
            "name": manifest["name"],
            "version": manifest["version"],
            "model.onnx": manifest["files"]["model.onnx"]["sha256"],
            "weights.bin": manifest["files"].get("weights.bin", {}).get("sha256"),
        },
        "scoring_ops": dict(sorted(ops.items())),
    }
    if "diagnostics" in manifest:
        new["diagnostics"] = {
            **manifest["diagnostics"],
            "quantized": "the diagnostics graph quantizes the same "
            "weights the same way, so it explains this int8 network; per-gate recomputation uses the "
            "fp32 gate weights",
        }
        if manifest["diagnostics"].get("running_score") == "exact" and quantized_cell:
            # The int8 LSTM quantizes its inputs with a scale computed from each call's data, so a prefix scored
            # alone sees other scales than inside the whole text (measured: up to 0.005 apart in P(positive)).
            # Contributions still add up exactly to the final log-odds of the call that produced them.
            new["diagnostics"]["running_score"] = "approximate"
            new["diagnostics"]["note"] = (
                "running_score[t] approximates the model's answer for the text cut after token t: the int8 LSTM "
                "quantizes activations with a scale computed per call (measured differences up to ~0.005); "
                "contributions are log-odds and sum with contribution_baseline to the final log-odds"
            )
    card = (src / "MODEL_CARD.md").read_text(encoding="utf-8") if (src / "MODEL_CARD.md").is_file() else ""
    (out / "MODEL_CARD.md").write_text(
        card.rstrip() + f"\n\n## int8 variant `{new['name']}`\n\nMade by `python -m training.quantize` from "
        f"`{manifest['name']}` {manifest['version']}: {new['quantization']['weights']} weights for "
        f"{', '.join(op_types)} ({new['quantization']['recurrent_cell']}). The metrics above are the fp32 model's; "
        "measure this variant with `--evaluate`.\n",
        encoding="utf-8",
    )
    new["files"] = {p.name: file_entry(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (out / "manifest.json").write_text(json.dumps(new, indent=2) + "\n")
    return new


# -- side-by-side check -----------------------------------------------------------------------------------------------
def validation_split(data: str, limit: int = 0) -> tuple[list[str], np.ndarray]:
    """The grouped validation split training held out (TrainConfig defaults): texts and label indices."""
    from training.config import TrainConfig
    from training.data import grouped_split, load_labeled

    cfg = TrainConfig()
    _, val = grouped_split(load_labeled(data), cfg.val_fraction, cfg.seed)
    val = val[:limit] if limit else val
    return [e.text for e in val], np.array([e.label for e in val])


def evaluate(
    fp32_dir: Path, int8_dir: Path, texts: list[str], labels: np.ndarray, threads: int = 1, batch_size: int = 64, rounds: int = 2
) -> dict:
    """Accuracy, agreement, batched speed and size of the two artifacts. Speed: the two models take turns batch by
    batch (length-sorted batches of `batch_size`, `rounds` passes), so a burst of other load on a shared machine
    falls on both alike; the speedup is the median of the per-batch time ratios."""
    from service.runtime import ModelRuntime

    rts = {
        "fp32": ModelRuntime(fp32_dir, intra_op_threads=threads, inter_op_threads=1),
        "int8": ModelRuntime(int8_dir, intra_op_threads=threads, inter_op_threads=1),
    }
    encoded = rts["fp32"].encode(texts)  # same tokenizer file in both
    probs = {k: rt.predict(encoded, batch_size) for k, rt in rts.items()}  # also the warm-up
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens)
    chunks = [[encoded[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    seconds = {k: 0.0 for k in rts}
    ratios = []
    for _ in range(rounds):
        for chunk in chunks:
            took = {}
            for k, rt in rts.items():
                start = time.perf_counter()
                rt.run_batch(chunk)
                took[k] = time.perf_counter() - start
                seconds[k] += took[k]
            ratios.append(took["fp32"] / took["int8"])
    report: dict = {
        "reviews": len(texts),
        "mean_tokens": float(np.mean([e.num_tokens for e in encoded])),
        "threads": threads,
        "batch_size": batch_size,
        "rounds": rounds,
    }
    for k, rt in rts.items():
        pred = probs[k].argmax(1)
        report[k] = {
            "name": rt.name,
            "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "reviews_per_s": len(texts) * rounds / seconds[k],
            "bytes": sum(f["bytes"] for f in rt.manifest["files"].values()),
            "onnx_and_weights_bytes": sum(f["bytes"] for n, f in rt.manifest["files"].items() if n.endswith((".onnx", ".bin"))),
        }
    report["accuracy_change_points"] = (report["int8"]["accuracy"] - report["fp32"]["accuracy"]) * 100
    report["speedup"] = float(np.median(ratios))
    report["speedup_batch_quartiles"] = [float(np.percentile(ratios, q)) for q in (25, 75)]
    report["size_ratio"] = report["int8"]["onnx_and_weights_bytes"] / report["fp32"]["onnx_and_weights_bytes"]
    report["label_agreement"] = float((probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean())
    report["max_abs_prob_diff"] = float(np.abs(probs["fp32"] - probs["int8"]).max())
    report["wins"] = report["accuracy_change_points"] >= -0.3 and report["speedup"] > 1.0
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="fp32 artifact directory, e.g. exported/imdb-lstm")
    p.add_argument("--out", required=True, help="directory to write the int8 artifact to")
    p.add_argument("--name", help="model name (default: the source's name + '-int8')")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per channel")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--op-types", default=",".join(OP_TYPES), help="ops to quantize (default: %(default)s)")
    p.add_argument("--evaluate", action="store_true", help="compare accuracy, speed and size with the source")
    p.add_argument("--data", default="../shared/data/aclImdb_train.tar.gz", help="labelled data for --evaluate")
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N validation reviews (default: all)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the speed comparison")
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the batches for --evaluate")
    p.add_argument("--report", help="write the --evaluate report as JSON here")
    args = p.parse_args(argv)
    try:
        manifest = quantize_artifact(
            args.model_dir,
            args.out,
            args.name,
            per_channel=not args.per_tensor,
            force=args.force,
            op_types=tuple(t.strip() for t in args.op_types.split(",") if t.strip()),
        )
    except (ArtifactError, QuantizeError, OSError) as exc:
        print(f"quantize: error: {exc}", file=sys.stderr)
        return 2
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"quantize: wrote {manifest['name']} to {args.out} ({size / 1e6:.1f} MB; {manifest['quantization']['recurrent_cell']})")
    if not args.evaluate:
        return 0
    try:
        texts, labels = validation_split(args.data, args.limit)
    except Exception as exc:  # training.data raises DataError and OSError subclasses for unreadable data
        print(f"quantize: error: cannot read {args.data}: {exc}", file=sys.stderr)
        return 2
    report = {
        "source": str(args.model_dir),
        "quantized": str(args.out),
        "data": str(args.data),
        **evaluate(Path(args.model_dir), Path(args.out), texts, labels, threads=args.threads, rounds=args.rounds),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    record_evaluation(Path(args.out), report)
    return 0


def record_evaluation(out: Path, report: dict) -> None:
    """The side-by-side figures into the int8 artifact itself: a model card section and `quantization.evaluation`
    in the manifest (whose checksum of MODEL_CARD.md is refreshed)."""
    fp, q = report["fp32"], report["int8"]
    card = out / "MODEL_CARD.md"
    card.write_text(
        card.read_text(encoding="utf-8").rstrip()
        + f"\n\nMeasured side by side on {report['reviews']} grouped-validation reviews ({report['threads']} onnxruntime "
        f"thread(s), batches of {report['batch_size']}): accuracy {q['accuracy']:.4f} vs {fp['accuracy']:.4f} fp32 "
        f"({report['accuracy_change_points']:+.2f} points), {report['label_agreement']:.2%} of labels the same, "
        f"{report['speedup']:.2f}x faster, {report['size_ratio']:.2f}x the size.\n",
        encoding="utf-8",
    )
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    keep = ("reviews", "accuracy_change_points", "speedup", "speedup_batch_quartiles", "size_ratio", "label_agreement")
    manifest["quantization"]["evaluation"] = {
        "accuracy": q["accuracy"],
        "fp32_accuracy": fp["accuracy"],
        **{k: report[k] for k in keep},
    }
    manifest["files"]["MODEL_CARD.md"] = file_entry(card)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
