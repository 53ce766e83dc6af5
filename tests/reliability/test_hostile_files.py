"""`sentiment-score` against hostile input files (RELIABILITY.md, "Hostile files"; issue 18, items 7-12).

A file is hostile when one of its rows could stop the job, blow up memory, silently merge rows, destroy the input
or poison a resume: parse bombs (a 5,001-digit integer, 200,000 nested `[`), a giant text or line, a stray CSV
quote, an output path that is the input under another name, an input edited in place between a kill and `--resume`,
and NaN/Infinity values that would make the output invalid JSON. Every per-row problem must follow `--on-error`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.batch import cli, writers

REPO = Path(__file__).resolve().parents[2]
GOOD_1 = {"id": 1, "text": "A wonderful film, the cast is superb."}
GOOD_3 = {"id": 3, "text": "Awful and boring, a waste of time."}


def run(model: Path, *args) -> int:
    return cli.main([*map(str, args), "--model-dir", str(model), "--quiet", "--threads", "1"])


def three_rows(path: Path, middle: str) -> Path:
    """A JSONL file whose row 2 is `middle` (raw text of the line), between two good rows."""
    path.write_text(json.dumps(GOOD_1) + "\n" + middle + "\n" + json.dumps(GOOD_3) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    def strict(name):
        raise ValueError(f"bare {name} in the output: not JSON")

    return [json.loads(line, parse_constant=strict) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_row_2_is_bad(out: Path, message: str) -> None:
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert message in rows[1]["error"] and rows[1]["label"] is None
    assert rows[0]["label"] == "positive" or rows[0]["label"] == "negative"
    assert "error" not in rows[0] and "error" not in rows[2]


# -- item 7: one bad row must not kill the job ------------------------------------------------------------------
PARSE_BOMBS = {
    "5001-digit integer": ('{"id": 2, "text": "fine", "n": ' + "9" * 5001 + "}", "invalid JSON"),
    "200000 nested [": ("[" * 200_000, "invalid JSON"),
    "200000 nested [ closed": ("[" * 200_000 + "]" * 200_000, "invalid JSON"),
    # parsed and written before (the limit is ours, so that how deep the parser and encoder reach no longer
    # depends on the stack they run on)
    "id nested 150 deep": ('{"id": ' + "[" * 150 + "]" * 150 + ', "text": "fine"}', "invalid JSON (nested deeper"),
    "lone surrogate in the text": ('{"id": 2, "text": "bad \\ud800 text"}', "not valid Unicode"),
    "lone surrogate in the id": ('{"id": "\\udfff", "text": "fine film"}', "not valid Unicode"),
}


@pytest.mark.parametrize("case", list(PARSE_BOMBS))
def test_a_row_that_cannot_be_parsed_follows_on_error(tiny_artifact, tmp_path, capsys, case):
    line, message = PARSE_BOMBS[case]
    src, out = three_rows(tmp_path / "in.jsonl", line), tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out) == 0
    assert_row_2_is_bad(out, message)
    assert run(tiny_artifact, src, "-o", out, "--on-error", "fail") == 1
    assert f"line 2: {message}" in capsys.readouterr().err


def test_resume_goes_past_a_parse_bomb(tiny_artifact, tmp_path, monkeypatch):
    src = three_rows(tmp_path / "in.jsonl", '{"id": 2, "n": ' + "9" * 5001 + "}")
    out = tmp_path / "out.jsonl"
    original, calls = writers.JsonlWriter.write, []

    def write_then_interrupt(writer, records):  # Ctrl-C after the first chunk (row 1) is durable
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(writer, records)

    with monkeypatch.context() as m:
        m.setattr(writers.JsonlWriter, "write", write_then_interrupt)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "1") == 130
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "1", "--resume") == 0
    assert_row_2_is_bad(out, "invalid JSON")


def test_a_row_the_tokenizer_rejects_fails_alone(tiny_artifact, tmp_path, monkeypatch):
    """Whatever the tokenizer raises on for one text costs that row only, not the chunk around it."""
    from service.runtime import ModelRuntime

    encode = ModelRuntime.encode

    def picky_encode(rt, texts, *args, **kwargs):
        if any("poison" in t for t in texts):
            raise RuntimeError("tokenizer exploded")
        return encode(rt, texts, *args, **kwargs)

    monkeypatch.setattr(ModelRuntime, "encode", picky_encode)
    src, out = three_rows(tmp_path / "in.jsonl", json.dumps({"id": 2, "text": "poison pill"})), tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out) == 0
    assert_row_2_is_bad(out, "could not be tokenized")


# -- item 8: text and line limits ----------------------------------------------------------------------------------
def test_text_over_the_limit_is_a_bad_row_and_the_flag_moves_the_limit(tiny_artifact, tmp_path, capsys):
    at_limit = ("great film " * 2000)[:20_000]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate([at_limit, at_limit + "x", "fine"], 1)),
        encoding="utf-8",
    )
    assert run(tiny_artifact, src, "-o", out) == 0
    rows = read_jsonl(out)
    assert "error" not in rows[0] and "error" not in rows[2]
    assert "20,001 characters" in rows[1]["error"] and "--max-text-chars" in rows[1]["error"]
    assert run(tiny_artifact, src, "-o", out, "--max-text-chars", "20001") == 0
    assert all("error" not in r for r in read_jsonl(out))
    assert run(tiny_artifact, src, "-o", out, "--on-error", "fail") == 1
    assert "line 2: text too long" in capsys.readouterr().err
    assert run(tiny_artifact, src, "-o", out, "--max-text-chars", "0") == 2


CHILD = """
import resource, sys
from service.batch import cli
rc = cli.main(sys.argv[1:])
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def peak_rss_kib(model: Path, *args) -> tuple[int, int, str]:
    """Runs the CLI in a fresh process; returns (exit status, its peak RSS in KiB, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args), "--model-dir", str(model), "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KIB")]
    assert peak, proc.stderr
    return proc.returncode, peak[0], proc.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "text", "csv"])
def test_a_giant_line_is_never_held_whole(tiny_artifact, tmp_path, fmt):
    """A 64 MB line in the middle of the file: an error row, and the process grows by less than 32 MB for it
    (it used to hold the line, its decoded copy, the parsed text and its tokens: ~110x the line)."""
    giant = "great film " * (64 * 1024 * 1024 // 11)
    small, big = tmp_path / f"small.{fmt}", tmp_path / f"big.{fmt}"
    for path, middle in ((small, "fine film"), (big, giant)):
        if fmt == "jsonl":
            three_rows(path, json.dumps({"id": 2, "text": middle}))
        elif fmt == "csv":
            path.write_text(f'id,text\n1,"{GOOD_1["text"]}"\n2,{middle}\n3,good film\n', encoding="utf-8")
        else:
            path.write_text(f"{GOOD_1['text']}\n{middle}\n{GOOD_3['text']}\n", encoding="utf-8")
    rc, base, _ = peak_rss_kib(tiny_artifact, small, "-o", tmp_path / "small.out.jsonl")
    assert rc == 0
    rc, peak, err = peak_rss_kib(tiny_artifact, big, "-o", tmp_path / "big.out.jsonl")
    assert rc == 0, err
    rows = read_jsonl(tmp_path / "big.out.jsonl")
    assert len(rows) == 3 and "error" not in rows[0] and "error" not in rows[2]
    assert "over the line limit" in rows[1]["error"]
    assert peak - base < 32 * 1024, f"peak RSS {peak} KiB with the giant line, {base} KiB without"


def test_line_limit_flag(tiny_artifact, tmp_path):
    src = three_rows(tmp_path / "in.jsonl", json.dumps({"id": 2, "text": "x" * 5000}))
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out, "--max-line-bytes", "4096") == 0
    assert_row_2_is_bad(out, "over the line limit (4,096 bytes")
    assert run(tiny_artifact, src, "-o", out, "--max-line-bytes", "0") == 2


# -- item 9: a stray CSV quote -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tail", ["3,loved it\n4,boring\n", '3,loved it\n4,"boring"\n'], ids=["never closed", "closed by a later quote"]
)
def test_a_stray_csv_quote_is_a_bad_row_not_a_merge(tiny_artifact, tmp_path, capsys, tail):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_text('id,text\n1,a fine film\n2,"an awful film\n' + tail, encoding="utf-8")
    summary = tmp_path / "summary.json"
    assert run(tiny_artifact, src, "-o", out, "--summary-json", summary) == 0
    rows = read_jsonl(out)
    assert "error" not in rows[0] and rows[0]["id"] == "1"
    assert rows[1]["label"] is None and "quote" in rows[1]["error"] and "lines 3-5" in rows[1]["error"]
    assert json.loads(summary.read_text())["errors"] >= 1
    assert run(tiny_artifact, src, "-o", out, "--on-error", "fail") == 1
    assert "quote" in capsys.readouterr().err


def test_a_csv_field_over_the_limit_is_a_bad_row(tiny_artifact, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_text('id,text\n1,a fine film\n2,"' + "word\n" * 5000 + '"\n3,awful film\n', encoding="utf-8")
    assert run(tiny_artifact, src, "-o", out, "--max-text-chars", "1000") == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert "error" in rows[1] and "error" not in rows[0] and "error" not in rows[2]


# -- item 10: never write over the input ---------------------------------------------------------------------------
def _same_file_cases(tmp_path: Path) -> dict:
    src = three_rows(tmp_path / "in.jsonl", json.dumps({"id": 2, "text": "fine film"}))
    os.link(src, tmp_path / "hard.jsonl")
    (tmp_path / "sym.jsonl").symlink_to(src)
    partial = three_rows(tmp_path / "scored.jsonl.partial", json.dumps({"id": 2, "text": "fine"}))
    ckpt = three_rows(tmp_path / "x.jsonl.checkpoint.json", json.dumps({"id": 2, "text": "fine"}))
    return {
        "hard link": ([src, "-o", tmp_path / "hard.jsonl"], src),
        "symlink": ([src, "-o", tmp_path / "sym.jsonl"], src),
        "input is OUTPUT.partial": ([partial, "--input-format", "jsonl", "-o", tmp_path / "scored.jsonl"], partial),
        "input is the checkpoint": ([ckpt, "--input-format", "jsonl", "-o", tmp_path / "x.jsonl"], ckpt),
        "summary is the input": ([src, "-o", tmp_path / "o.jsonl", "--summary-json", src], src),
        "summary via a hard link": ([src, "--summary-json", tmp_path / "hard.jsonl"], src),
    }


@pytest.mark.parametrize(
    "case",
    [
        "hard link",
        "symlink",
        "input is OUTPUT.partial",
        "input is the checkpoint",
        "summary is the input",
        "summary via a hard link",
    ],
)
def test_no_output_path_may_be_the_input(tiny_artifact, tmp_path, capsys, case):
    argv, victim = _same_file_cases(tmp_path)[case]
    before = victim.read_bytes()
    assert run(tiny_artifact, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sentiment-score: error:") and "is the input" in err
    assert victim.read_bytes() == before


# -- item 11: resume checks the input's content --------------------------------------------------------------------
def _interrupted_run(model: Path, tmp_path: Path, monkeypatch, fmt: str = "jsonl") -> tuple[Path, Path]:
    src = tmp_path / f"in.{fmt}"
    texts = [f"{'great' if i % 2 else 'awful'} film number {i:04d}" for i in range(60)]
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    else:
        src.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    original, calls = writers.JsonlWriter.write, []

    def write_then_interrupt(writer, records):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(writer, records)

    with monkeypatch.context() as m:
        m.setattr(writers.JsonlWriter, "write", write_then_interrupt)
        assert run(model, src, "-o", out, "--chunk-size", "10") == 130
    return src, out


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_refuses_an_input_edited_in_place(tiny_artifact, tmp_path, capsys, monkeypatch, fmt):
    src, out = _interrupted_run(tiny_artifact, tmp_path, monkeypatch, fmt)
    stat = src.stat()
    data = src.read_bytes()
    src.write_bytes(data.replace(b"great film number 0003", b"awful film number 0003"))  # same size, in rows done
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert src.stat().st_size == stat.st_size
    capsys.readouterr()
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "10", "--resume") == 2
    err = capsys.readouterr().err
    assert "changed since the interrupted run" in err and "--restart" in err
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "10", "--restart") == 0
    assert len(read_jsonl(out)) == 60


def test_resume_accepts_a_touched_but_unchanged_input(tiny_artifact, tmp_path, monkeypatch):
    src, out = _interrupted_run(tiny_artifact, tmp_path, monkeypatch)
    whole = tmp_path / "whole.jsonl"
    assert run(tiny_artifact, src, "-o", whole, "--chunk-size", "10") == 0
    os.utime(src, ns=(1, 1))  # e.g. a copy that did not keep the mtime
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "10", "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()


def test_resume_refuses_a_parquet_input_that_changed(tiny_artifact, tmp_path, capsys, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src, out = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    texts = [f"{'great' if i % 2 else 'awful'} film {i:04d}" for i in range(40)]
    # uncompressed and without a dictionary, so that the texts are in the file as they are and can be edited there
    pq.write_table(
        pa.table({"id": list(range(40)), "text": texts}), src, row_group_size=10, compression="none", use_dictionary=False
    )
    original, calls = writers.JsonlWriter.write, []

    def write_then_interrupt(writer, records):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(writer, records)

    with monkeypatch.context() as m:
        m.setattr(writers.JsonlWriter, "write", write_then_interrupt)
        assert run(tiny_artifact, src, "-o", out, "--chunk-size", "10") == 130
    stat = src.stat()
    data = src.read_bytes()
    assert data.count(b"great film 0003") == 1
    src.write_bytes(data.replace(b"great film 0003", b"awful film 0003"))  # a row already scored; same size
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert pq.read_table(src).column("text")[3].as_py() == "awful film 0003"
    capsys.readouterr()
    assert run(tiny_artifact, src, "-o", out, "--chunk-size", "10", "--resume") == 2
    assert "changed since the interrupted run" in capsys.readouterr().err


# -- item 12: strict JSON out, and a summary that says what happened -----------------------------------------------
def test_nan_and_infinity_in_kept_fields_are_written_as_null(tiny_artifact, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "fine film", "x": NaN, "y": [Infinity, -Infinity, 1.5], "z": 2.5}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run(tiny_artifact, src, "-o", out, "--keep-fields", "x,y,z") == 0
    row = read_jsonl(out)[0]
    assert (row["x"], row["y"], row["z"]) == (None, [None, None, 1.5], 2.5) and row["label"] is not None
    csv_out = tmp_path / "out.csv"
    assert run(tiny_artifact, src, "-o", csv_out, "--keep-fields", "x,y") == 0
    header, line = csv_out.read_text(encoding="utf-8").splitlines()
    assert "NaN" not in line and "Infinity" not in line and "nan" not in line and "[null, null, 1.5]" in line


def _summary(**over) -> dict:
    s = {
        "status": "done",
        "engine": "local",
        "input": "in.jsonl",
        "output": "out.jsonl",
        "rows": 3,
        "scored": 3,
        "errors": 0,
        "labels": {"negative": 1, "positive": 2},
        "error_examples": [],
        "resumed_from_row": 0,
        "rows_this_run": 3,
        "elapsed_s": 90.0,
        "rows_per_s": 0.0,
    }
    return {**s, **over}


def test_summary_wording(capsys):
    cli.print_summary(_summary())  # 3 rows in 90 s: 0.03 rows/s, which rounds to 0.0
    err = capsys.readouterr().err
    assert "no rows scored" not in err and "3 rows" in err and "0 errors" in err and "rows/s" in err
    cli.print_summary(_summary(rows_this_run=0, rows_per_s=None, elapsed_s=0.0, resumed_from_row=3))
    assert "no rows left to score" in capsys.readouterr().err
    example = {"row": 2, "where": "line 2", "error": "empty text"}
    cli.print_summary(_summary(errors=1, scored=2, error_examples=[example]))
    err = capsys.readouterr().err
    assert "1 error;" in err and "1 errors" not in err and "more" not in err
    cli.print_summary(_summary(rows=50, errors=12, scored=38, error_examples=[example] * 10))
    err = capsys.readouterr().err
    assert "12 errors" in err and err.count("line 2: empty text") == 3 and "+9 more" in err


def test_a_csv_header_over_the_line_limit_is_an_input_error(tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("id,text," + ",".join(f"c{i}" for i in range(100)) + "\n1,fine\n", encoding="utf-8")
    assert run(tiny_artifact, src, "--max-line-bytes", "64") == 2
    assert "unreadable CSV header (line 1 is over the line limit (64 bytes" in capsys.readouterr().err
