"""Ray Data scoring (service/batch/ray.py): the `SentimentPredictor` on every batch format, inside
`map_batches` on a local Ray, and `sentiment-score --engine ray` agreeing with the local engine (labels equal,
scores within 1e-6) for each input format."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from batch_files import write_input  # noqa: E402

from service.batch import cli  # noqa: E402
from service.batch.ray import SentimentPredictor, pack_artifact  # noqa: E402
from service.runtime import ModelRuntime  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "A wonderful, moving film. The cast is superb.",
    "Terrible and boring, a waste of time.",
    "The plot was dull but the acting was brilliant<br /><br />I loved it!",
    "",
    None,
    " ".join(["the film was great and the story was awful"] * 12),
]  # past the tiny model's 64 tokens


def test_importing_the_modules_does_not_import_ray():
    code = "import sys, service.batch.cli, service.batch.ray; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0  # the base install needs no Ray


@pytest.fixture(scope="module")
def rt(tiny_artifact) -> ModelRuntime:
    return ModelRuntime(tiny_artifact, intra_op_threads=1)


def expected(rt: ModelRuntime, text) -> dict:
    if not isinstance(text, str) or not text.strip():
        return {"label": None, "score": None}
    enc = rt.encode([text])
    return rt.result(enc[0], rt.predict(enc, 1)[0])


@pytest.mark.parametrize("kind", ["pyarrow", "pandas", "numpy"])
def test_predictor_adds_score_columns_to_each_batch_format(tiny_artifact, rt, kind):
    pa = pytest.importorskip("pyarrow")
    ids = list(range(len(TEXTS)))
    if kind == "pyarrow":
        batch = pa.table({"id": ids, "text": TEXTS})
    elif kind == "pandas":
        batch = pytest.importorskip("pandas").DataFrame({"id": ids, "text": TEXTS})
    else:
        np = pytest.importorskip("numpy")
        batch = {"id": np.array(ids), "text": np.array(TEXTS, dtype=object)}
    predictor = SentimentPredictor(pack_artifact(tiny_artifact), batch_size=2)  # the bytes workers receive
    out = predictor(batch)
    assert type(out) is type(batch)
    rows = (
        out.to_pylist()
        if kind == "pyarrow"
        else (out.to_dict("records") if kind == "pandas" else [dict(zip(out, values)) for values in zip(*out.values())])
    )
    assert [r["id"] for r in rows] == ids  # input columns kept, rows in order
    for row, text in zip(rows, TEXTS):
        want = expected(rt, text)
        assert row["label"] == want["label"] or (want["label"] is None and row["error"])
        if want["score"] is not None:
            assert row["score"] == pytest.approx(want["score"], abs=1e-6)
            assert row["num_tokens"] == want["num_tokens"] and row["truncated"] == want["truncated"]
            assert row["error"] is None
    assert rows[3]["error"] == "empty text" and "missing text" in rows[4]["error"]
    assert rows[5]["truncated"]


def test_predictor_refuses_to_overwrite_columns_unless_prefixed(tiny_artifact):
    pa = pytest.importorskip("pyarrow")
    batch = pa.table({"text": ["good"], "label": ["positive"]})  # e.g. a labelled evaluation set
    with pytest.raises(ValueError, match="already has a column 'label'"):
        SentimentPredictor(str(tiny_artifact))(batch)
    out = SentimentPredictor(str(tiny_artifact), prefix="pred_")(batch)
    assert out.column("label").to_pylist() == ["positive"] and "pred_score" in out.column_names


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the CLI reuses a running Ray instead of starting its own)."""
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_predictor_in_map_batches_loads_the_artifact_once_per_actor(local_ray, tiny_artifact, rt):
    import ray.data as rd

    ds = rd.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS) if t is not None])
    ds = ds.map_batches(
        SentimentPredictor,
        fn_constructor_kwargs={"artifact": ray.put(pack_artifact(tiny_artifact))},
        compute=rd.ActorPoolStrategy(size=1),
        batch_size=2,
        batch_format="pandas",
    )
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    for row in rows:
        want = expected(rt, row["text"])
        if want["score"] is None:
            assert row["error"] == "empty text"
        else:
            assert row["label"] == want["label"] and abs(row["score"] - want["score"]) <= 1e-6


def read_rows(path: Path, fmt: str) -> list[dict]:
    """A file, or every part file of a directory, as row dicts with typed fields."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    rows = []
    for file in files:
        if fmt == "jsonl":
            rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(file).to_pylist()
        else:
            with file.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    row["score"] = float(row["score"]) if row["score"] else None
                    row["id"] = str(row["id"]).strip('"')
                    rows.append(row)
    return rows


REVIEWS = [
    {"id": 100 + i, "text": t, "title": f"t{i}"}
    for i, t in enumerate(
        [
            "Great film, loved it.",
            "Awful, boring, dull.",
            "The cast was superb and the story brilliant.",
            "Worst movie, a waste.",
            "It was a film.",
            "",
            "Beautiful<br />and enjoyable &amp; moving.",
        ]
        * 6
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("in_fmt,out_fmt", [("jsonl", "jsonl"), ("csv", "csv"), ("parquet", "parquet"), ("text", "jsonl")])
def test_ray_engine_gives_the_local_engines_rows(local_ray, tiny_artifact, tmp_path, in_fmt, out_fmt):
    src = write_input(tmp_path / f"in.{ {'text': 'txt'}.get(in_fmt, in_fmt) }", REVIEWS, in_fmt)
    keep = [] if in_fmt == "text" else ["--keep-fields", "title"]
    local, remote = tmp_path / f"local.{out_fmt}", tmp_path / f"ray.{out_fmt}"
    common = [str(src), "--model-dir", str(tiny_artifact), "--quiet", "--chunk-size", "8", *keep]
    assert cli.main([*common, "-o", str(local)]) == 0
    summary = tmp_path / "summary.json"
    assert cli.main([*common, "-o", str(remote), "--engine", "ray", "--summary-json", str(summary)]) == 0
    assert remote.is_dir() and not Path(f"{remote}.partial").exists()
    local_rows = read_rows(local, out_fmt)
    ray_rows = {str(r["id"]): r for r in read_rows(remote, out_fmt)}
    assert len(ray_rows) == len(local_rows) == len(REVIEWS)
    for row in local_rows:
        other = ray_rows[str(row["id"])]
        assert other["label"] == row["label"] and (other["error"] or None) == (row.get("error") or None)
        if row["score"] is not None:
            assert abs(float(other["score"]) - float(row["score"])) <= 1e-6
        if keep:
            assert other["title"] == row["title"]
    report = json.loads(summary.read_text())
    assert report["engine"] == "ray" and report["rows"] == len(REVIEWS) and report["errors"] == 6


@pytest.mark.slow
def test_ray_engine_on_error_fail_exits_1_naming_the_row(local_ray, tiny_artifact, tmp_path, capsys):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:7], "jsonl")
    argv = [str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_artifact), "--quiet", "--engine", "ray"]
    assert cli.main([*argv, "--on-error", "fail"]) == 1
    assert "row 6: empty text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_engine_reports_an_unreadable_input_with_exit_2(local_ray, tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")
    assert cli.main([str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_artifact), "--quiet", "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "Ray cannot read it as jsonl" in err and "Traceback" not in err


@pytest.mark.parametrize("extra,message", [(["--resume"], "local engine"), (["-o", "-"], "not stdin/stdout")])
def test_ray_engine_usage_errors(tiny_artifact, tmp_path, capsys, extra, message):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:2], "jsonl")
    argv = [str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_artifact), "--engine", "ray", *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
