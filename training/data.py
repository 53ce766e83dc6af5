"""Dataset loading and the grouped validation split.

Reads IMDB in any of its shapes (an extracted `aclImdb/` folder, the official `aclImdb_v1.tar.gz`, our train-only
tarball, read straight from the archive) and plain JSONL / CSV files with `text` and `label` columns. Text cleaning
(`<br />`, HTML entities) is *not* done here: it lives in the tokenizer's normalizer inside `tokenizer.json`, so the
service applies exactly the same cleaning by loading the same file.
"""

from __future__ import annotations

import csv
import json
import random
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LABELS = ("negative", "positive")
_LABEL_ALIASES = {
    "negative": 0,
    "neg": 0,
    "0": 0,
    "positive": 1,
    "pos": 1,
    "1": 1,
}
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
_URLS = re.compile(r"(?:^|/)(train|test)/urls_(pos|neg|unsup)\.txt$")


class DataError(ValueError):
    """A dataset that cannot be used, with a message that says why and where."""


@dataclass
class Example:
    text: str
    label: int  # index into LABELS; -1 for unlabeled reviews
    group: str  # the film a review belongs to (keeps one film on one side of the split)


def parse_label(value: object, where: str) -> int:
    key = str(value).strip().lower()
    if key not in _LABEL_ALIASES:
        raise DataError(f"{where}: unknown label {value!r} (expected one of negative/positive, neg/pos, 0/1)")
    return _LABEL_ALIASES[key]


def _film_id(url: str) -> str:
    match = re.search(r"tt\d+", url)
    return match.group(0) if match else url.strip()


def _collect_imdb(files: Iterator[tuple[str, bytes]], split: str, unsup: bool) -> list[Example]:
    """Turn (member path, bytes) pairs of an aclImdb tree into examples; urls_*.txt give each review's film."""
    reviews: dict[tuple[str, int], tuple[str, int]] = {}
    urls: dict[str, list[str]] = {}
    wanted = ("unsup",) if unsup else ("pos", "neg")
    for name, read in files:
        if m := _MEMBER.search(name):
            part, kind, idx, _rating = m.groups()
            if part == split and kind in wanted:
                label = -1 if kind == "unsup" else (1 if kind == "pos" else 0)
                reviews[(kind, int(idx))] = (read().decode("utf-8", errors="replace"), label)
        elif m := _URLS.search(name):
            part, kind = m.groups()
            if part == split and kind in wanted:
                urls[kind] = read().decode("utf-8").splitlines()
    if not reviews:
        raise DataError(f"no {split}/{'/'.join(wanted)} reviews found (is this an aclImdb dataset?)")
    out = []
    for (kind, idx), (text, label) in sorted(reviews.items()):
        lines = urls.get(kind, [])
        group = _film_id(lines[idx]) if idx < len(lines) else f"{kind}-{idx}"
        out.append(Example(text, label, group))
    return out


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _tar_files(path: Path) -> Iterator[tuple[str, object]]:
    def guarded(read):
        # Members are read by the caller, outside the try below: a truncated archive fails there.
        def call():
            try:
                return read()
            except _ARCHIVE_ERRORS as exc:
                raise DataError(f"{path}: cannot read archive ({exc})") from exc

        return call

    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, guarded(tar.extractfile(member).read)
            # tarfile stops quietly at a corrupted header; reading to the end runs the gzip CRC check.
            while tar.fileobj.read(1 << 20):
                pass
    except _ARCHIVE_ERRORS as exc:
        raise DataError(f"{path}: cannot read archive ({exc})") from exc


def _dir_files(root: Path) -> Iterator[tuple[str, object]]:
    for p in sorted(root.rglob("*.txt")):
        yield p.relative_to(root).as_posix(), p.read_bytes


def load_jsonl(path: Path) -> list[Example]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc
            out.append(_row_example(row, f"{path}:{n}", n))
    return out


def load_csv(path: Path) -> list[Example]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: CSV needs a header with 'text' and 'label' columns")
        return [_row_example(row, f"{path}:{n}", n) for n, row in enumerate(reader, 2)]


def _row_example(row: object, where: str, n: int) -> Example:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
        raise DataError(f"{where}: each row needs a string 'text' and a 'label'")
    group = str(row.get("group") or row.get("movie") or f"row-{n}")
    return Example(row["text"], parse_label(row["label"], where), group)


def load_labeled(path: str | Path, split: str = "train") -> list[Example]:
    """Labeled examples from any supported source. `split` picks train/test inside IMDB trees."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    name = p.name.lower()
    if p.is_dir():
        root = p / "aclImdb" if (p / "aclImdb").is_dir() else p
        examples = _collect_imdb(_dir_files(root), split, unsup=False)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        examples = _collect_imdb(_tar_files(p), split, unsup=False)
    elif name.endswith((".jsonl", ".json")):
        examples = load_jsonl(p)
    elif name.endswith(".csv"):
        examples = load_csv(p)
    else:
        raise DataError(f"{p}: unsupported format (use an aclImdb folder or tarball, .jsonl or .csv)")
    if not examples:
        raise DataError(f"{p}: no examples")
    return examples


def load_unlabeled(path: str | Path) -> list[str]:
    """The 50k unlabeled reviews of train/unsup (for word2vec); empty when the source has none."""
    p = Path(path)
    try:
        if p.is_dir():
            root = p / "aclImdb" if (p / "aclImdb").is_dir() else p
            return [e.text for e in _collect_imdb(_dir_files(root), "train", unsup=True)]
        if p.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            return [e.text for e in _collect_imdb(_tar_files(p), "train", unsup=True)]
    except DataError:
        pass
    return []


def grouped_split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split by film: every review of one film lands on the same side, so validation measures unseen films."""
    groups = sorted({e.group for e in examples})
    random.Random(seed).shuffle(groups)
    target = int(round(len(examples) * val_fraction))
    val_groups: set[str] = set()
    size_by_group: dict[str, int] = {}
    for e in examples:
        size_by_group[e.group] = size_by_group.get(e.group, 0) + 1
    count = 0
    for g in groups:
        if count >= target:
            break
        val_groups.add(g)
        count += size_by_group[g]
    train = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    if not train or not val:
        raise DataError(f"cannot split {len(examples)} examples into train and validation")
    return train, val
