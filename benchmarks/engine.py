"""How close direct batched scoring comes to the arithmetic rate of onnxruntime itself (part of `make bench`).

    python -m benchmarks.engine                  # prints the JSON report; `make bench` stores it in results.json

1. The ceiling: onnxruntime's fp32 `MatMul` on a large square product (1024^3) with 1 and 2 intra-op threads, and
   on the two shapes a recurrent layer really runs: the input projection (all tokens of a batch at once: [64*T, E] x
   [E, G*H]) and the per-step recurrent product ([64, H] x [H, G*H], once per token position).
2. Each model's multiply-adds per token, read from its scoring graph: for every LSTM/GRU/RNN node (or its
   DynamicQuantizeLSTM form), the sizes of its W [dirs, G*H, in] and R [dirs, G*H, H] weights (the head and the
   pooling run once per text, not per token, and are left out).
3. Direct batched scoring (`ModelRuntime.predict`, length-sorted batches, tokenized beforehand): real tokens per
   second x 2 x multiply-adds = GFLOP/s achieved, as a fraction of the square MatMul rate on the same threads,
   measured again just before and after (the better kept: a shared machine's load drifts).
4. What holds it back: batch size, sorting (padding), threads, measured on the same texts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.runtime import CALL_TOKENS, ModelRuntime, plan_calls

RECURRENT_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def matmul_gflops(m: int, k: int, n: int, threads: int, seconds: float = 0.6) -> float:
    """fp32 GFLOP/s (2*m*k*n per call) of one onnxruntime MatMul with a constant right-hand side, as the model
    graphs have; best of repeated timed windows, so a burst of other load on a shared machine counts less."""
    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        "mm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializer=[b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    sess = session(model, threads)
    feed = {"A": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    sess.run(None, feed)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        calls, start = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - start < 0.05:
            sess.run(None, feed)
            calls += 1
        best = max(best, calls / (time.perf_counter() - start))
    return 2 * m * k * n * best / 1e9


def recurrent_shapes(model_dir: Path) -> list[dict]:
    """W and R shapes of every recurrent node of the scoring graph (dims only: no weights are read)."""
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in RECURRENT_OPS:
            w, r = dims[node.input[1]], dims[node.input[2]]
            if node.op_type == "DynamicQuantizeLSTM":  # stored transposed: [dirs, in, 4H] and [dirs, H, 4H]
                w, r = [w[0], w[2], w[1]], [r[0], r[2], r[1]]
            out.append({"op": node.op_type, "W": w, "R": r})
    return out


def macs_per_token(model_dir: Path) -> int:
    return sum(int(np.prod(s["W"])) + int(np.prod(s["R"])) for s in recurrent_shapes(model_dir))


def predict_rate(
    rt: ModelRuntime, encoded: list, batch_size: int, sort: bool = True, rounds: int = 2, max_tokens: int | None = None
) -> dict:
    """Texts/s and real tokens/s of batched scoring (best of `rounds`), and the share of padded positions. With
    `max_tokens`, calls are planned as the service plans them (`plan_calls`: also at most that many padded tokens,
    and no text much longer than the call's shortest)."""
    if max_tokens is not None:
        calls = plan_calls([(i, e.num_tokens) for i, e in enumerate(encoded)], batch_size, max_tokens)
        chunks = [[encoded[i] for i, _ in call] for call in calls]
    else:
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens) if sort else list(range(len(encoded)))
        chunks = [[encoded[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
    real = sum(e.num_tokens for e in encoded)
    padded = sum(len(c) * max(e.num_tokens for e in c) for c in chunks)
    rt.run_batch(chunks[0])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for chunk in chunks:
            rt.run_batch(chunk)
        best = min(best, time.perf_counter() - start)
    return {
        "batch_size": batch_size,
        "sorted": sort,
        "texts_per_s": len(encoded) / best,
        "tokens_per_s": real / best,
        "padding_share": 1 - real / padded,
    }


def engine_report(model_dirs: list[Path], texts: list[str], threads: tuple[int, ...] = (1, 2)) -> dict:
    threads = tuple(t for t in threads if t <= (os.cpu_count() or 1)) or (1,)
    started = time.perf_counter()
    report: dict = {"matmul_gflops": {}, "models": {}}
    for t in threads:
        report["matmul_gflops"][str(t)] = {"square_1024": matmul_gflops(1024, 1024, 1024, t)}
    for model_dir in model_dirs:
        shapes = recurrent_shapes(model_dir)
        macs = macs_per_token(model_dir)
        rts = {t: ModelRuntime(model_dir, intra_op_threads=t, inter_op_threads=1) for t in threads}
        first = rts[threads[0]]
        encoded = first.encode(texts)
        entry: dict = {
            "recurrent": shapes,
            "macs_per_token": macs,
            "mean_tokens": float(np.mean([e.num_tokens for e in encoded])),
            "direct": {},
            "held_back_by": {},
        }
        for t, rt in rts.items():
            # The MatMul rate is measured again right beside the model (before and after, the better kept), so
            # that on a shared machine the two figures of the fraction see the same load.
            around = [matmul_gflops(1024, 1024, 1024, t)]
            r = predict_rate(rt, encoded, 64, max_tokens=CALL_TOKENS)  # as the service and `predict` call it
            around.append(matmul_gflops(1024, 1024, 1024, t))
            achieved = r["tokens_per_s"] * 2 * macs / 1e9
            entry["direct"][str(t)] = {
                **r,
                "gflops": achieved,
                "matmul_gflops_beside": max(around),
                "share_of_matmul": achieved / max(around),
            }
        # What a recurrent layer multiplies, at the main batch size: one big input projection, then one small
        # product per token position. Their MatMul rates (1 thread) bound what the layer can reach.
        if shapes:
            s = shapes[0]
            gates_h, inp, hid = s["W"][1], s["W"][2], s["R"][2]
            t_len = int(entry["mean_tokens"])
            entry["held_back_by"]["matmul_gflops_1_thread"] = {
                f"input_projection_{64 * t_len}x{inp}x{gates_h}": matmul_gflops(64 * t_len, inp, gates_h, 1),
                f"recurrent_step_64x{hid}x{gates_h}": matmul_gflops(64, hid, gates_h, 1),
                f"recurrent_step_8x{hid}x{gates_h}": matmul_gflops(8, hid, gates_h, 1),
            }
        one = rts[threads[0]]
        entry["held_back_by"]["batch_size_1_thread"] = [
            predict_rate(one, encoded[:256], b, rounds=1) for b in (1, 8, 32, 64, 256)
        ]
        entry["held_back_by"]["unsorted_batch64_1_thread"] = predict_rate(one, encoded, 64, sort=False, rounds=1)
        report["models"][first.name] = entry
    report["texts"] = len(texts)
    report["seconds"] = time.perf_counter() - started
    return report


def summary_lines(report: dict) -> list[str]:
    """Plain-language findings, one per line, for the bench output and the README."""
    mm = report["matmul_gflops"]
    lines = [
        "onnxruntime fp32 MatMul (1024^3): "
        + ", ".join(f"{v['square_1024']:.0f} GFLOP/s on {t} thread(s)" for t, v in mm.items())
    ]
    for name, e in report["models"].items():
        direct = "; ".join(
            f"{t} thread(s): {d['texts_per_s']:.0f} texts/s, {d['gflops']:.1f} GFLOP/s = "
            f"{d['share_of_matmul']:.0%} of MatMul ({d['matmul_gflops_beside']:.0f})"
            for t, d in e["direct"].items()
        )
        lines.append(
            f"{name}: {e['macs_per_token'] / 1e3:.0f}k multiply-adds/token, {e['mean_tokens']:.0f} tokens/text; {direct}"
        )
        hb = e["held_back_by"]
        if "matmul_gflops_1_thread" in hb:
            lines.append(
                f"  {name} MatMul shapes (1 thread): "
                + ", ".join(f"{k.replace('_', ' ')} {v:.0f} GFLOP/s" for k, v in hb["matmul_gflops_1_thread"].items())
            )
        lines.append(
            f"  {name} batch size (1 thread, sorted): "
            + ", ".join(f"{b['batch_size']}: {b['texts_per_s']:.0f}/s" for b in hb["batch_size_1_thread"])
        )
        unsorted, srt = hb["unsorted_batch64_1_thread"], e["direct"][next(iter(e["direct"]))]
        lines.append(
            f"  {name} batch 64 unsorted: {unsorted['texts_per_s']:.0f}/s, {unsorted['padding_share']:.0%} "
            f"padding (sorted: {srt['texts_per_s']:.0f}/s, {srt['padding_share']:.0%})"
        )
    return lines


def main() -> int:
    from benchmarks.bench import REPO
    from benchmarks.wrk_bench import bench_texts
    from service.artifacts import discover

    dirs = discover(os.environ.get("BENCH_MODEL_ROOT", REPO / "exported"))
    texts, _, source = bench_texts(dirs[0], int(os.environ.get("BENCH_ENGINE_TEXTS", 256)))
    report = {"texts_source": source, **engine_report(dirs, texts)}
    print(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
