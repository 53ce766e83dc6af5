"""Export a trained run to the artifact directory the service loads.

    sentiment-export --run runs/lstm --out exported/imdb-lstm

Writes `model.onnx` (plain scoring: calibrated probabilities only), `diagnostics.onnx` (the same network plus
per-layer/per-direction hidden states, gate activations and the running score), `weights.bin` (their shared
weights), `tokenizer.json`, `manifest.json` (config, policy, metrics and the sha256 of every file; its schema is
service/contract.py) and MODEL_CARD.md.

The graphs themselves are built in training/graph.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

from service import contract
from service.artifacts import file_entry
from training import model_card
from training.cells import GATE_NAMES
from training.config import ModelConfig, TrainConfig
from training.graph import OPSET, GraphExporter, supports_exact_diagnostics
from training.models import RecurrentClassifier
from training.onnx_graph import externalize
from training.train import DERIVED_MODEL_FIELDS


def diagnostics_contract(cfg: ModelConfig) -> dict:
    """What the diagnostics graph of this architecture can claim (the service reads it; see training/graph.py)."""
    if supports_exact_diagnostics(cfg):
        return {
            "running_score": "exact",
            "contribution": "state_change" + ("+ngram" if cfg.ngram_buckets else ""),
            "note": "running_score[t] is the model's answer for the text cut after token t; contributions are "
            "log-odds and sum with contribution_baseline to the final log-odds",
        }
    return {
        "running_score": None,
        "contribution": "occlusion",
        "note": "bidirectional encoder: its backward half reads the whole text first, so no prefix reading "
        "exists; contributions come from occlusion (each token replaced by [UNK]), in log-odds",
    }


def source_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_command(cfg: TrainConfig) -> str:
    """The `sentiment-train` command that reproduces this run (every non-default setting spelled out)."""
    parts, default, default_model = ["sentiment-train"], TrainConfig(), ModelConfig()
    for obj, ref in ((cfg, default), (cfg.model, default_model)):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("model", "vocab_size", "num_labels", *DERIVED_MODEL_FIELDS) or value == getattr(ref, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            parts += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(parts)  # quoted: paths and names may contain spaces


def load_run(run_dir: str | Path) -> tuple[RecurrentClassifier, dict]:
    saved = torch.load(Path(run_dir) / "model.pt", weights_only=False)
    model = RecurrentClassifier(saved["model_config"])
    model.load_state_dict(saved["model"], strict=False)  # runs from before the n-gram branch lack its buffers
    return model.eval(), saved


def export_model(
    model: RecurrentClassifier,
    tokenizer_json: str,
    out: Path,
    *,
    name: str,
    version: str,
    train_cfg: TrainConfig,
    metrics: dict,
    temperature: float = 1.0,
    comparison: str | None = None,
    notes: str | None = None,
) -> dict:
    """Write a complete artifact directory; returns its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = GraphExporter(model, temperature, train_cfg.max_tokens)
    graphs = {contract.MODEL_FILE: exporter.build(diagnostics=False), contract.DIAGNOSTICS_FILE: exporter.build(diagnostics=True)}
    externalize(graphs, out / contract.WEIGHTS_FILE)
    for fname, graph in graphs.items():
        onnx.save(graph, out / fname)
        onnx.checker.check_model(str(out / fname))
    (out / contract.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    cfg = model.cfg
    vocab_size = len(json.loads(tokenizer_json)["model"]["vocab"])
    manifest = contract.Manifest(
        schema_version=contract.SCHEMA_VERSION,
        name=name,
        version=version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        labels=["negative", "positive"],
        model={**asdict(cfg), "directions": cfg.directions, "gates": list(GATE_NAMES[cfg.cell])},
        tokenizer=contract.TokenizerInfo(file=contract.TOKENIZER_FILE, vocab_size=vocab_size, pad_id=0, unk_token="[UNK]"),
        max_tokens=train_cfg.max_tokens,
        truncation=contract.TruncationPolicy(
            strategy=train_cfg.truncation,
            head_tokens=train_cfg.head_tokens,
            note=f"texts longer than max_tokens keep their first head_tokens and last max_tokens - head_tokens tokens "
            f"({train_cfg.truncation}); shorter texts are scored whole",
        ),
        temperature=temperature,
        diagnostics=contract.DiagnosticsContract(**diagnostics_contract(cfg)),
        onnx={
            "opset": OPSET,
            "scoring": contract.MODEL_FILE,
            "diagnostics": contract.DIAGNOSTICS_FILE,
            "inputs": {"input_ids": "int64 [batch, tokens]", "lengths": "int64 [batch]"},
        },
        metrics={k: v for k, v in metrics.items() if k != "history"},
        history=metrics.get("history", []),
        training={
            "command": train_command(train_cfg),
            "config": {k: v for k, v in asdict(train_cfg).items() if k != "model"},
            "source_commit": source_commit(),
        },
        files={},
    )
    model_card.write(out, manifest.to_dict(), comparison, notes)
    manifest.files = {
        p.name: contract.FileEntry(**file_entry(p))
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != contract.MANIFEST_FILE
    }
    written = manifest.to_dict()
    (out / contract.MANIFEST_FILE).write_text(json.dumps(written, indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sentiment-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="training run folder (holds model.pt)")
    parser.add_argument("--out", required=True, help="artifact directory to write, e.g. exported/imdb-lstm")
    parser.add_argument("--name", help="model name (default: the run's name)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--comparison", help="markdown table from training.sweep to include in MODEL_CARD.md")
    parser.add_argument("--notes", help="markdown file of extra notes for MODEL_CARD.md")
    args = parser.parse_args(argv)
    try:
        model, saved = load_run(args.run)
    except FileNotFoundError as exc:
        print(f"sentiment-export: error: {exc}", file=sys.stderr)
        return 2
    metrics = saved["metrics"]
    manifest = export_model(
        model,
        saved["tokenizer_json"],
        Path(args.out),
        name=args.name or saved["train_config"].name,
        version=args.version,
        train_cfg=saved["train_config"],
        metrics=metrics,
        temperature=metrics.get("temperature", 1.0),
        comparison=args.comparison,
        notes=args.notes,
    )
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"exported {manifest['name']} {manifest['version']} to {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
