"""training.quantize: the int8 artifact is complete and verifiable, scores close to its fp32 source, keeps its
diagnostics consistent with its own scores, and the CLI refuses what it must."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from service.artifacts import load_manifest
from service.runtime import ModelRuntime
from training.quantize import main, quantize_artifact

TEXTS = [
    "a great film with a superb cast",
    "dull plot and a boring waste of time",
    "the movie was fine",
    "loved it " * 10,
    "awful awful awful but the music was great",
]


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def scores(rt: ModelRuntime) -> np.ndarray:
    return rt.run_batch(rt.encode(TEXTS))


@pytest.fixture(scope="module")
def tiny_artifact(export_random):
    """An untrained bidirectional LSTM export (the shipped architecture, tiny): no training run needed."""
    return export_random("lstm", True).artifact


@pytest.fixture(scope="module")
def tiny_int8(tiny_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    manifest = quantize_artifact(tiny_artifact, out)
    return out, manifest


def test_int8_artifact_is_complete_verified_and_loads(tiny_artifact, tiny_int8):
    out, manifest = tiny_int8
    source = load_manifest(tiny_artifact)
    assert load_manifest(out, verify=True) == manifest  # every listed file's sha256 checks out
    assert set(manifest["files"]) == set(source["files"])
    assert manifest["name"] == source["name"] + "-int8"
    q = manifest["quantization"]
    assert q["source"] == {
        "name": source["name"],
        "version": source["version"],
        "model.onnx": source["files"]["model.onnx"]["sha256"],
        "weights.bin": source["files"]["weights.bin"]["sha256"],
    }
    assert q["recurrent_cell"].startswith("int8")
    for graph in ("model.onnx", "diagnostics.onnx"):
        found = ops(out / graph)
        assert found["DynamicQuantizeLSTM"] == 1 and "LSTM" not in found
        assert found["DequantizeLinear"] >= 1  # the 8-bit embedding table
    assert "## int8 variant" in (out / "MODEL_CARD.md").read_text()
    assert (out / "tokenizer.json").read_bytes() == (tiny_artifact / "tokenizer.json").read_bytes()
    rt = ModelRuntime(out, intra_op_threads=1, inter_op_threads=1)
    assert rt.name == manifest["name"]


def test_int8_scores_close_to_fp32(tiny_artifact, tiny_int8):
    fp32 = scores(ModelRuntime(tiny_artifact, intra_op_threads=1, inter_op_threads=1))
    int8 = scores(ModelRuntime(tiny_int8[0], intra_op_threads=1, inter_op_threads=1))
    np.testing.assert_allclose(int8.sum(1), 1.0, atol=1e-5)
    assert np.abs(int8 - fp32).max() < 0.05
    assert not np.array_equal(int8, fp32)  # the int8 graph really runs, not a copy of the fp32 one


def test_both_graphs_share_the_int8_weights(tiny_int8):
    out, _ = tiny_int8
    for graph in ("model.onnx", "diagnostics.onnx"):
        model = onnx.load(str(out / graph), load_external_data=False)
        external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert external <= {"weights.bin"}
        types = {t.name: t.data_type for t in model.graph.initializer}
        assert types["layer0.W_quantized"] == types["layer0.R_quantized"] == onnx.TensorProto.INT8
        assert types["embedding_quantized"] == onnx.TensorProto.UINT8  # the quantizer's 8-bit type for Gather data
        assert "embedding" not in types and "layer0.W" not in types  # no fp32 copy left beside the int8 one


def test_unidirectional_int8_diagnostics_end_at_its_own_score(export_random, tmp_path):
    """The exact running score of the diagnostics graph must end at the scoring graph's answer: both graphs run
    the same int8 weights."""
    src = export_random("lstm", False, ngram_buckets=64).artifact
    out = tmp_path / "uni-int8"
    quantize_artifact(src, out)
    rt = ModelRuntime(out, intra_op_threads=1, inter_op_threads=1)
    for text in TEXTS[:3]:
        enc = rt.encode([text])[0]
        plain = rt.run_batch([enc])[0]
        probs, report = rt.diagnose(text, enc)
        np.testing.assert_allclose(probs, plain, atol=1e-5)
        assert report["summary"]["final_score"] == pytest.approx(float(plain[rt.positive]), abs=1e-5)
        assert report["tokens"][-1]["running_score"] == pytest.approx(float(plain[rt.positive]), abs=1e-5)
        # Activation scales are per call, so a prefix scored alone is only close: the manifest and the report say so.
        assert report["summary"]["running_score_method"] == "approximate"
        total = report["summary"]["contribution_baseline"] + sum(t["contribution"] for t in report["tokens"])
        assert total == pytest.approx(report["summary"]["final_logodds"], abs=1e-4)
    assert rt.manifest["diagnostics"]["running_score"] == "approximate"
    assert ModelRuntime(src, intra_op_threads=1).manifest["diagnostics"]["running_score"] == "exact"


def test_gru_keeps_an_fp32_cell_and_says_so(export_random, tmp_path):
    src = export_random("gru", True).artifact
    manifest = quantize_artifact(src, tmp_path / "gru-int8", name="gru-q")
    assert manifest["name"] == "gru-q"
    assert manifest["quantization"]["recurrent_cell"].startswith("fp32 (gru")
    found = ops(tmp_path / "gru-int8" / "model.onnx")
    assert found["GRU"] == 1 and found["DequantizeLinear"] == 1
    rt = ModelRuntime(tmp_path / "gru-int8", intra_op_threads=1, inter_op_threads=1)
    fp32 = scores(ModelRuntime(src, intra_op_threads=1, inter_op_threads=1))
    assert np.abs(scores(rt) - fp32).max() < 0.05


def test_cli_refuses_a_non_empty_output_and_the_source_itself(tiny_artifact, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    assert main(["--model-dir", str(tiny_artifact), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["--model-dir", str(tiny_artifact), "--out", str(tiny_artifact)]) == 2
    assert "must not be the source" in capsys.readouterr().err
    assert main(["--model-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "quantize: error:" in capsys.readouterr().err


def test_cli_writes_and_evaluates(tiny_artifact, imdb_tarball, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "--model-dir",
                str(tiny_artifact),
                "--out",
                str(tmp_path / "q"),
                "--evaluate",
                "--data",
                str(imdb_tarball),
                "--rounds",
                "1",
                "--report",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["reviews"] > 0 and report["fp32"]["reviews_per_s"] > 0 and report["int8"]["reviews_per_s"] > 0
    # tiny weights: the scales and extra nodes outweigh the int8 saving, so only the arithmetic is checked here
    assert report["size_ratio"] == pytest.approx(
        report["int8"]["onnx_and_weights_bytes"] / report["fp32"]["onnx_and_weights_bytes"]
    )
    assert 0 <= report["int8"]["accuracy"] <= 1 and 0 <= report["label_agreement"] <= 1
    assert report["accuracy_change_points"] == pytest.approx((report["int8"]["accuracy"] - report["fp32"]["accuracy"]) * 100)
    # The figures travel with the artifact, which still verifies (the card's checksum was refreshed).
    manifest = load_manifest(tmp_path / "q", verify=True)
    assert manifest["quantization"]["evaluation"]["accuracy"] == report["int8"]["accuracy"]
    assert f"{report['speedup']:.2f}x faster" in (tmp_path / "q" / "MODEL_CARD.md").read_text()


def test_op_types_choose_what_is_quantized(tiny_artifact, tmp_path, capsys):
    manifest = quantize_artifact(tiny_artifact, tmp_path / "lstm-only", op_types=("LSTM",))
    found = ops(tmp_path / "lstm-only" / "model.onnx")
    assert found["DynamicQuantizeLSTM"] == 1 and "DequantizeLinear" not in found  # embedding left fp32
    assert manifest["quantization"]["op_types"] == ["LSTM"]
    manifest = quantize_artifact(tiny_artifact, tmp_path / "gather-only", op_types=("Gather",))
    assert ops(tmp_path / "gather-only" / "model.onnx")["LSTM"] == 1
    assert manifest["quantization"]["recurrent_cell"] == "fp32 (lstm: not asked for)"
    assert main(["--model-dir", str(tiny_artifact), "--out", str(tmp_path / "bad"), "--op-types", "Conv"]) == 2
    assert "choose from LSTM, Gather" in capsys.readouterr().err and not (tmp_path / "bad").exists()
