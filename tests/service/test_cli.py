"""`sentiment-score` (service/batch/): formats in and out, stdin/stdout, field options, bad
rows under both policies, exit codes, resume after an interrupted or killed run, flat memory, model lookup, and
agreement with the runtime and the HTTP service."""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import batch_files
import pytest

from service.batch import cli, writers
from service.batch.errors import InputError
from service.runtime import ModelRuntime

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[2]
POSITIVE = ["great", "wonderful", "loved", "excellent", "brilliant", "superb", "enjoyable", "beautiful"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull", "waste", "worst", "stupid"]
NEUTRAL = ["the", "film", "movie", "plot", "acting", "story", "cast", "was", "and", "it", "this", "a", "of"]


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    """Reviews of 2..90 words (the tiny model keeps 64 tokens, so some are truncated), ids not in row order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cue = POSITIVE if rng.random() < 0.5 else NEGATIVE
        words = [rng.choice(cue) if rng.random() < 0.3 else rng.choice(NEUTRAL) for _ in range(rng.randint(2, 90))]
        text = " ".join(words).capitalize() + ("." if i % 3 else "!<br /><br />It &amp; its cast.")
        out.append({"id": 1000 - i, "text": text, "title": f"t{i}"})
    return out


REVIEWS = make_reviews(40)


@pytest.fixture(scope="module")
def rt(tiny_artifact) -> ModelRuntime:
    return ModelRuntime(tiny_artifact, intra_op_threads=1)


@pytest.fixture(scope="module")
def expected(rt) -> dict[str, dict]:
    """Each review scored alone through the runtime: what every format and engine must reproduce."""
    out = {}
    for r in REVIEWS:
        enc = rt.encode([r["text"]])
        out[r["text"]] = rt.result(enc[0], rt.predict(enc, 1)[0])
    return out


def run(model: Path, *args: str) -> int:
    return cli.main([*map(str, args), "--model-dir", str(model), "--quiet", "--threads", "1"])


def write_input(path: Path, rows: list[dict], fmt: str) -> Path:
    return batch_files.write_input(path, rows, fmt, row_group_size=7)  # several row groups


def read_output(path: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for key in ("score", "unknown_share", "mean_forget_gate"):
                row[key] = float(row[key]) if row.get(key) else None
            row["num_tokens"] = int(row["num_tokens"]) if row["num_tokens"] else None
            row["truncated"] = {"true": True, "false": False}.get(row["truncated"])
            for key in ("top_positive", "top_negative"):
                if key in row:
                    row[key] = json.loads(row[key]) if row[key] else None
            row["error"] = row["error"] or None
            rows.append(row)
    return rows


def assert_matches(rows: list[dict], reviews: list[dict], expected: dict, ids: list) -> None:
    assert [r["id"] for r in rows] == ids
    for row, review in zip(rows, reviews):
        want = expected[review["text"]]
        assert row["label"] == want["label"]
        assert row["score"] == pytest.approx(want["score"], abs=1e-6)
        assert row["num_tokens"] == want["num_tokens"]
        assert row["truncated"] == want["truncated"]
        assert not row.get("error")


# -- formats -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("in_fmt", ["jsonl", "csv", "parquet", "text"])
def test_every_input_format_to_every_output_format(tiny_artifact, expected, tmp_path, in_fmt, out_fmt):
    src = write_input(tmp_path / f"in.{ {'text': 'txt'}.get(in_fmt, in_fmt) }", REVIEWS, in_fmt)
    out = tmp_path / f"out.{out_fmt}"
    assert run(tiny_artifact, src, "--output", out, "--chunk-size", "16") == 0
    ids = {
        "jsonl": [r["id"] for r in REVIEWS],
        "parquet": [r["id"] for r in REVIEWS],
        "csv": [str(r["id"]) for r in REVIEWS],  # CSV has no types: ids stay the strings they were
        "text": list(range(1, len(REVIEWS) + 1)),
    }[in_fmt]  # plain text: the line number
    if out_fmt == "csv":
        ids = [str(i) for i in ids]
    assert_matches(read_output(out, out_fmt), REVIEWS, expected, ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # no partial files left


def test_some_reviews_are_truncated_and_length_sorting_keeps_input_order(tiny_artifact, expected, tmp_path):
    src = write_input(tmp_path / "in.jsonl", REVIEWS, "jsonl")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "7", "--batch-size", "3") == 0
    rows = read_output(out, "jsonl")
    assert_matches(rows, REVIEWS, expected, [r["id"] for r in REVIEWS])
    assert any(r["truncated"] for r in rows) and not all(r["truncated"] for r in rows)
    assert set(rows[0]) == {"id", "label", "score", "num_tokens", "truncated", "unknown_share", "warnings"}  # + trust (#17)


def test_max_batch_tokens_sets_the_size_of_each_onnxruntime_call(tiny_artifact, expected, tmp_path, monkeypatch):
    # The calls are cut where --max-batch-tokens says (a GPU wants larger ones than the CPU-sized default), and the
    # scores do not depend on it (an fp32 model).
    src = write_input(tmp_path / "in.jsonl", REVIEWS, "jsonl")
    calls: list[list[int]] = []
    real = ModelRuntime.run_batch

    def counting(self, encoded):
        calls.append([e.num_tokens for e in encoded])
        return real(self, encoded)

    monkeypatch.setattr(ModelRuntime, "run_batch", counting)
    sizes = {}
    for budget in (1, 200, 100_000):
        calls.clear()
        out = tmp_path / f"out{budget}.jsonl"
        assert run(tiny_artifact, src, "-o", out, "--batch-size", "1000", "--max-batch-tokens", budget) == 0
        assert_matches(read_output(out, "jsonl"), REVIEWS, expected, [r["id"] for r in REVIEWS])
        scoring = calls[1:]  # the first is the runtime's warm-up
        assert sum(len(c) for c in scoring) == len(REVIEWS)
        assert all(len(c) == 1 or len(c) * max(c) <= budget for c in scoring)
        sizes[budget] = len(scoring)
    assert sizes[1] == len(REVIEWS) > sizes[200] > sizes[100_000]
    assert run(tiny_artifact, src, "-o", tmp_path / "x.jsonl", "--max-batch-tokens", "0") == 2


def test_format_flags_override_the_extension(tiny_artifact, expected, tmp_path):
    src = write_input(tmp_path / "reviews.data", REVIEWS[:5], "csv")
    out = tmp_path / "scored.out"
    assert run(tiny_artifact, src, "-o", out, "--input-format", "csv", "--output-format", "parquet") == 0
    assert_matches(pq.read_table(out).to_pylist(), REVIEWS[:5], expected, [str(r["id"]) for r in REVIEWS[:5]])


def test_stdin_to_stdout_in_a_subprocess(tiny_artifact, expected):
    data = "".join(json.dumps(r) + "\n" for r in REVIEWS[:6]).encode()
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "-", "--model-dir", str(tiny_artifact)],
        input=data,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert_matches(rows, REVIEWS[:6], expected, [r["id"] for r in REVIEWS[:6]])
    assert "6 rows" in proc.stderr.decode()  # the summary goes to stderr, never into the data


def test_output_defaults_to_stdout(tiny_artifact, tmp_path, capsys):
    src = write_input(tmp_path / "in.txt", REVIEWS[:3], "text")
    assert run(tiny_artifact, src) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [1, 2, 3]


# -- fields -------------------------------------------------------------------------------------------------------
def test_text_field_id_field_and_keep_fields(tiny_artifact, expected, tmp_path):
    rows = [{"rid": f"r{i}", "review": r["text"], "stars": i, "meta": {"k": i}} for i, r in enumerate(REVIEWS[:4])]
    del rows[2]["stars"]
    src = write_input(tmp_path / "in.jsonl", rows, "jsonl")
    out = tmp_path / "out.jsonl"
    assert (
        run(tiny_artifact, src, "-o", out, "--text-field", "review", "--id-field", "rid", "--keep-fields", "stars, meta,review")
        == 0
    )
    got = read_output(out, "jsonl")
    assert_matches(got, REVIEWS[:4], expected, ["r0", "r1", "r2", "r3"])
    assert [r["stars"] for r in got] == [0, 1, None, 3]
    assert got[1]["meta"] == {"k": 1} and got[3]["review"] == REVIEWS[3]["text"]
    assert list(got[0]) == [
        "id",
        "label",
        "score",
        "num_tokens",
        "truncated",
        "unknown_share",
        "warnings",
        "stars",
        "meta",
        "review",
    ]


def test_id_is_the_row_number_where_the_row_has_none(tiny_artifact, tmp_path):
    rows = [{"text": "good"}, {"id": "x", "text": "bad"}, {"id": None, "text": "fine"}]
    src = write_input(tmp_path / "in.jsonl", rows, "jsonl")
    out = tmp_path / "out.csv"
    assert run(tiny_artifact, src, "-o", out) == 0
    assert [r["id"] for r in read_output(out, "csv")] == ["1", "x", "3"]


def test_keep_fields_in_csv_and_parquet_outputs(tiny_artifact, tmp_path):
    src = write_input(tmp_path / "in.parquet", REVIEWS[:9], "parquet")
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"out.{fmt}"
        assert run(tiny_artifact, src, "-o", out, "--keep-fields", "title") == 0
        assert [r["title"] for r in read_output(out, fmt)] == [r["title"] for r in REVIEWS[:9]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("flag", [("--text-field", "review"), ("--id-field", "rid"), ("--keep-fields", "stars")])
def test_unknown_field_is_a_usage_error(tiny_artifact, tmp_path, capsys, fmt, flag):
    src = write_input(tmp_path / f"in.{fmt}", REVIEWS[:3], fmt)
    assert run(tiny_artifact, src, "-o", tmp_path / "out.jsonl", *flag) == 2
    err = capsys.readouterr().err
    assert f"no field {flag[1]!r}" in err and "text" in err  # names the field and lists the ones there are
    assert not (tmp_path / "out.jsonl").exists()


def test_keep_field_that_clashes_with_an_output_column_is_refused(tiny_artifact, tmp_path, capsys):
    src = write_input(tmp_path / "in.jsonl", [{"text": "good", "label": "pos"}], "jsonl")
    assert run(tiny_artifact, src, "--keep-fields", "label") == 2
    assert "clashes" in capsys.readouterr().err


# -- bad rows -----------------------------------------------------------------------------------------------------
BAD_JSONL = (
    "\n".join(
        [
            json.dumps({"id": 1, "text": "A wonderful, moving film. The cast is superb."}),
            "{not json",
            "",
            json.dumps({"id": 4}),
            json.dumps({"id": 5, "text": "   "}),
            json.dumps({"id": 6, "text": 42}),
            json.dumps(["a", "list"]),
            json.dumps({"id": 8, "text": "<br /><br />"}),
            json.dumps({"id": 9, "text": "Terrible and boring."}),
        ]
    )
    + "\n"
)
BAD_ERRORS = {
    2: "invalid JSON",
    3: "empty line",
    4: "missing text",
    5: "empty text",
    6: "not a string",
    7: "not an object",
    8: "no tokens",
}


def test_bad_rows_are_written_with_an_error_and_counted(tiny_artifact, expected, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(BAD_JSONL, encoding="utf-8")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    assert run(tiny_artifact, src, "-o", out, "--summary-json", summary) == 0
    rows = read_output(out, "jsonl")
    assert [r["id"] for r in rows] == list(range(1, 10))  # one output line per input line, bad ones included
    for line, message in BAD_ERRORS.items():
        assert message in rows[line - 1]["error"] and rows[line - 1]["label"] is None
    assert "error" not in rows[0] and "error" not in rows[8] and rows[8]["label"] in ("positive", "negative")
    report = json.loads(summary.read_text())
    assert (report["rows"], report["errors"], report["scored"]) == (9, 7, 2)
    assert sum(report["labels"].values()) == 2 and report["error_examples"][0]["where"] == "line 2"


def test_bad_rows_in_csv_and_parquet(tiny_artifact, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,"good, really good"\n2,\n3,"too",many\n\n4,"multi\nline fine"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out) == 0
    rows = read_output(out, "jsonl")
    assert [r["id"] for r in rows] == ["1", "2", 3, "4"]  # the row that could not be read gets its row number
    assert rows[1]["error"] == "empty text" and "3 fields" in rows[2]["error"] and "error" not in rows[3]
    table = pa.table({"text": ["fine film", None, ""], "id": [1, 2, 3]})
    pq.write_table(table, tmp_path / "in.parquet")
    assert run(tiny_artifact, tmp_path / "in.parquet", "-o", out) == 0
    assert [r.get("error") for r in read_output(out, "jsonl")] == [None, "missing text (no 'text' field or null)", "empty text"]


def test_on_error_fail_stops_at_the_first_bad_row_with_exit_1(tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(BAD_JSONL, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out, "--on-error", "fail") == 1
    assert "line 2: invalid JSON" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no partial files


def test_non_utf8_line_is_a_bad_row(tiny_artifact, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine film\ncaf\xe9 latte\ngreat\n")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out) == 0
    assert [("error" in r) for r in read_output(out, "jsonl")] == [False, True, False]


# -- usage errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "extension",
        "parquet",
        "model",
        "outdir",
        "out-is-dir",
        "resume-stdout",
        "same-file",
        "chunk",
        "csv-empty",
        "parquet-stdout",
    ],
)
def test_usage_and_input_errors_exit_2_with_a_message(tiny_artifact, tmp_path, capsys, case):
    good = write_input(tmp_path / "in.jsonl", REVIEWS[:2], "jsonl")
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_text("not parquet")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    argv, message = {
        "missing": ([tmp_path / "nope.jsonl"], "does not exist"),
        "extension": ([tmp_path / "in.xlsx"], "--input-format"),
        "parquet": ([bad_parquet], "not a readable Parquet file"),
        "model": ([good, "--model-dir", tmp_path / "no-models"], "does not exist"),
        "outdir": ([good, "-o", tmp_path / "no" / "out.jsonl"], "does not exist"),
        "resume-stdout": ([good, "--resume"], "--resume needs --output"),
        "same-file": ([good, "-o", good], "overwrite the input"),
        "chunk": ([good, "--chunk-size", "0"], "at least 1"),
        "out-is-dir": ([good, "-o", tmp_path], "is a directory"),
        "csv-empty": ([empty_csv], "no header row"),
        "parquet-stdout": ([good, "--output-format", "parquet"], "cannot be written to stdout"),
    }[case]
    rc = cli.main([*map(str, argv), *([] if case == "model" else ["--model-dir", str(tiny_artifact)]), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("sentiment-score: error:") and message in err


def test_unknown_option_value_is_a_usage_error(tiny_artifact):
    with pytest.raises(SystemExit) as exc:
        cli.main(["in.jsonl", "--on-error", "ignore"])
    assert exc.value.code == 2


# -- summary, progress, diagnostics ----------------------------------------------------------------------------------
def test_summary_on_stderr_and_quiet_silences_it(tiny_artifact, tmp_path, capsys):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:10], "jsonl")
    assert cli.main([str(src), "-o", str(tmp_path / "o.jsonl"), "--model-dir", str(tiny_artifact)]) == 0
    err = capsys.readouterr().err
    assert "10 rows" in err and "0 errors" in err and "rows/s" in err and "positive" in err
    assert run(tiny_artifact, src, "-o", tmp_path / "o.jsonl") == 0
    assert capsys.readouterr().err == ""


def test_progress_bar_only_on_a_terminal(tiny_artifact, tmp_path, capsys, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", REVIEWS, "jsonl")
    argv = [str(src), "-o", str(tmp_path / "o.jsonl"), "--model-dir", str(tiny_artifact), "--chunk-size", "10"]
    assert cli.main(argv) == 0
    assert "rows/s]" not in capsys.readouterr().err  # stderr is not a terminal here: summary only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "100%" in err and "/40.0 [" in err and "rows/s]" in err  # the total is known: a percentage and ETA
    assert cli.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_diagnostics_adds_a_compact_summary_per_row(tiny_artifact, rt, tmp_path):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:5] + [{"id": 0, "text": ""}], "jsonl")
    for fmt in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"out.{fmt}"
        assert run(tiny_artifact, src, "-o", out, "--diagnostics") == 0
        rows = read_output(out, fmt)
        for row, review in zip(rows, REVIEWS[:5]):
            enc = rt.encode([review["text"]])[0]
            summary = rt.diagnose(review["text"], enc)[1]["summary"]
            assert row["top_positive"] == [t["text"] for t in summary["top_positive"]]
            assert row["top_negative"] == [t["text"] for t in summary["top_negative"]]
            assert row["unknown_share"] == pytest.approx(summary["unknown_share"])
            assert 0 < row["mean_forget_gate"] < 1 and row["mean_forget_gate"] == pytest.approx(summary["mean_forget_gate"])
            assert all(token in review["text"] for token in row["top_positive"] + row["top_negative"])
        assert rows[5]["error"] == "empty text" and rows[5]["top_positive"] is None


# -- resume ---------------------------------------------------------------------------------------------------------
class Interrupt:
    """Makes the writer raise KeyboardInterrupt (Ctrl-C) after `after` chunks, half-way through writing one."""

    def __init__(self, monkeypatch, cls, after: int):
        original = cls.write
        self.calls = 0

        def write(writer, records):
            self.calls += 1
            if self.calls > after:
                if isinstance(writer, writers._StreamWriter):  # a torn chunk: some bytes, no checkpoint
                    writer.fh.write(writer.encode(records)[:37])
                    writer.fh.flush()
                raise KeyboardInterrupt
            return original(writer, records)

        monkeypatch.setattr(cls, "write", write)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_ctrl_c_then_resume_gives_the_uninterrupted_output(tiny_artifact, tmp_path, capsys, monkeypatch, fmt):
    reviews = make_reviews(300, seed=3)
    src = write_input(tmp_path / "in.jsonl", reviews, "jsonl")
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"out.{fmt}"
    assert run(tiny_artifact, src, "-o", whole, "--chunk-size", "32") == 0
    cls = {"jsonl": writers.JsonlWriter, "csv": writers.CsvWriter, "parquet": writers.ParquetWriter}[fmt]
    with monkeypatch.context() as m:
        Interrupt(m, cls, after=4)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32") == 130
    assert "--resume" in capsys.readouterr().err
    assert not out.exists()  # never a half-written OUTPUT
    state = json.loads((tmp_path / f"out.{fmt}.checkpoint.json").read_text())
    assert state["tally"]["rows"] == 4 * 32
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32") == 2  # a plain rerun must not lose that work
    assert "--resume" in capsys.readouterr().err
    summary = tmp_path / "summary.json"
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32", "--resume", "--summary-json", summary) == 0
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(whole))
        assert pq.ParquetFile(out).metadata.num_row_groups == pq.ParquetFile(whole).metadata.num_row_groups
    else:
        assert out.read_bytes() == whole.read_bytes()
    report = json.loads(summary.read_text())
    assert report["rows"] == 300 and report["resumed_from_row"] == 128 and report["rows_this_run"] == 172
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.jsonl", whole.name, out.name, "summary.json"])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_resumed_run_stopped_before_its_first_chunk_resumes_again(tiny_artifact, tmp_path, capsys, monkeypatch, fmt):
    """Stopped twice: once mid-file, then again before the resumed run wrote anything. The second resume must accept
    the unchanged input (the checkpoint once recorded the reader's position after the first chunk it read, with the
    older row count, and the next resume refused the input as changed)."""
    src = write_input(tmp_path / "in.jsonl", make_reviews(200, seed=5), "jsonl")
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"out.{fmt}"
    assert run(tiny_artifact, src, "-o", whole, "--chunk-size", "32") == 0
    cls = {"jsonl": writers.JsonlWriter, "parquet": writers.ParquetWriter}[fmt]
    with monkeypatch.context() as m:
        Interrupt(m, cls, after=2)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32") == 130
    with monkeypatch.context() as m:
        Interrupt(m, cls, after=0)  # the resumed run is stopped while writing its first chunk
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32", "--resume") == 130
    capsys.readouterr()
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "32", "--resume") == 0, capsys.readouterr().err
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(whole))
    else:
        assert out.read_bytes() == whole.read_bytes()


def test_resume_refuses_a_different_job_and_restart_starts_over(tiny_artifact, tmp_path, capsys, monkeypatch):
    src = write_input(tmp_path / "in.jsonl", make_reviews(100), "jsonl")
    out = tmp_path / "out.jsonl"
    with monkeypatch.context() as m:
        Interrupt(m, writers.JsonlWriter, after=1)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20") == 130
    capsys.readouterr()
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--resume", "--keep-fields", "title") == 2
    assert "different job (keep_fields" in capsys.readouterr().err
    # another call budget is another job (an int8 model's scores depend on it), whichever side has the default
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--resume", "--max-batch-tokens", "100") == 2
    assert "different job (max_batch_tokens: the default then, 100 now)" in capsys.readouterr().err
    with monkeypatch.context() as m:
        Interrupt(m, writers.JsonlWriter, after=1)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--restart", "--max-batch-tokens", "100") == 130
    capsys.readouterr()
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--resume") == 2
    assert "different job (max_batch_tokens: 100 then, the default now)" in capsys.readouterr().err
    with src.open("a") as fh:  # the input changed since the interrupted run
        fh.write(json.dumps({"text": "one more"}) + "\n")
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--resume") == 2
    assert "different job (input_size" in capsys.readouterr().err
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "20", "--restart") == 0
    assert len(read_output(out, "jsonl")) == 101


def test_resume_without_an_interrupted_run_just_runs(tiny_artifact, tmp_path):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:5], "jsonl")
    assert run(tiny_artifact, src, "-o", tmp_path / "out.jsonl", "--resume") == 0
    assert len(read_output(tmp_path / "out.jsonl", "jsonl")) == 5


def _wait_for_rows(checkpoint: Path, proc: subprocess.Popen, rows: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = json.loads(checkpoint.read_text())["tally"]["rows"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            done = 0
        if done >= rows:
            return done
        assert proc.poll() is None, f"the run ended before row {rows}: {proc.stderr.read().decode()}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past row {rows} within {timeout} s")


def _cli_process(model: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *map(str, args), "--model-dir", str(model), "--quiet", "--threads", "1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_sigkill_mid_file_then_resume_gives_the_uninterrupted_output(tiny_artifact, tmp_path, fmt):
    rows, chunk = 8_000, 500
    src = write_input(tmp_path / "in.jsonl", make_reviews(rows, seed=5), "jsonl")
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"out.{fmt}"
    assert run(tiny_artifact, src, "-o", whole, "--chunk-size", chunk) == 0
    proc = _cli_process(tiny_artifact, src, "-o", out, "--chunk-size", chunk)
    done = _wait_for_rows(Path(f"{out}.checkpoint.json"), proc, 3 * chunk)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and done < rows and not out.exists()
    proc = _cli_process(tiny_artifact, src, "-o", out, "--chunk-size", chunk, "--resume")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    if fmt == "parquet":
        assert pq.read_table(out).equals(pq.read_table(whole))
    else:
        assert out.read_bytes() == whole.read_bytes()  # no duplicates, no gaps, same bytes
    assert not Path(f"{out}.checkpoint.json").exists() and not Path(f"{out}.partial").exists()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")
def test_memory_stays_flat_while_streaming(tiny_artifact, tmp_path):
    """RSS at ~90% of the rows is within a few MiB of RSS at ~20%: nothing grows with the row count.
    (`python -m benchmarks.cli_bench --memory` runs the same check on 1,000,000 rows.)"""
    rows, chunk = 200_000, 4096
    src = tmp_path / "in.jsonl"
    with src.open("w") as fh:
        for i in range(rows):
            fh.write(f'{{"id": {i}, "text": "{NEUTRAL[i % 13]} {POSITIVE[i % 8]} film {i}"}}\n')
    out = tmp_path / "out.jsonl"
    proc = _cli_process(tiny_artifact, src, "-o", out, "--chunk-size", chunk)
    _wait_for_rows(Path(f"{out}.checkpoint.json"), proc, rows // 5)
    early = _rss_kib(proc.pid)
    _wait_for_rows(Path(f"{out}.checkpoint.json"), proc, rows * 9 // 10)
    late = _rss_kib(proc.pid)
    assert proc.wait(timeout=600) == 0
    assert sum(1 for _ in out.open()) == rows
    assert late - early < 16 * 1024, f"RSS grew from {early} KiB to {late} KiB"


# -- model lookup and agreement with the HTTP service -------------------------------------------------------------
def test_default_model_lookup(tiny_artifact, tmp_path, monkeypatch, capsys):
    root = tmp_path / "exported"
    for name in ("a-first", "imdb-lstm", "zeta"):
        shutil.copytree(tiny_artifact, root / name)
    assert cli.resolve_model(str(root), None) == root / "imdb-lstm"
    assert cli.resolve_model(str(root), "zeta") == root / "zeta"
    assert cli.resolve_model(str(root), "tiny-lstm") == root / "a-first"  # the manifest's name works too
    shutil.rmtree(root / "imdb-lstm")
    assert cli.resolve_model(str(root), None) == root / "a-first"
    with pytest.raises(InputError, match="no model named 'nope'.*a-first"):
        cli.resolve_model(str(root), "nope")
    monkeypatch.setattr(cli, "DEFAULT_MODEL_ROOT", root)  # what `sentiment-score IN -o OUT` uses with no flags
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:2], "jsonl")
    assert cli.main([str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "zeta", "--quiet"]) == 0
    monkeypatch.setattr(cli, "DEFAULT_MODEL_ROOT", tmp_path / "empty")
    assert cli.main([str(src), "--quiet"]) == 2
    assert "make train" in capsys.readouterr().err


def test_scores_match_the_http_service(make_client, serving_root, tmp_path):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:8], "jsonl")
    out = tmp_path / "out.jsonl"
    assert run(serving_root / "tiny-lstm", src, "-o", out) == 0
    rows = read_output(out, "jsonl")
    with make_client() as client:
        for row, review in zip(rows, REVIEWS[:8]):
            body = client.post("/v1/sentiment", json={"text": review["text"]}).json()
            assert (row["label"], row["num_tokens"], row["truncated"]) == (body["label"], body["num_tokens"], body["truncated"])
            assert row["score"] == pytest.approx(body["score"], abs=1e-6)


def test_broken_pipe_on_stdout_is_not_a_crash(tiny_artifact, tmp_path):
    src = write_input(tmp_path / "in.jsonl", make_reviews(3000), "jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", str(src), "--model-dir", str(tiny_artifact), "--chunk-size", "100", "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    assert proc.wait(timeout=120) == 141
    assert b"Traceback" not in proc.stderr.read()


def test_parquet_values_json_cannot_hold_are_written_as_text(tiny_artifact, tmp_path):
    table = pa.table(
        {
            "text": ["fine film", "café au lait"],
            "seen": [datetime.date(2024, 5, 1), None],
            "price": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, tmp_path / "in.parquet", "-o", out, "--keep-fields", "seen,price") == 0
    assert "café" not in out.read_text(encoding="utf-8")  # the text itself is not copied unless asked
    assert [(r["seen"], r["price"]) for r in read_output(out, "jsonl")] == [("2024-05-01", "1.50"), (None, None)]


def test_parquet_without_pyarrow_is_a_clear_error(tiny_artifact, tmp_path, monkeypatch, capsys):
    src = write_input(tmp_path / "in.jsonl", REVIEWS[:2], "jsonl")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as in the base install, which has no pyarrow
    assert run(tiny_artifact, src, "-o", tmp_path / "out.parquet") == 2
    assert "pip install 'imdb-sentiment[parquet]'" in capsys.readouterr().err
