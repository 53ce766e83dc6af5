"""Dataset loaders (aclImdb folder / tarball, JSONL, CSV), label parsing, errors and the grouped split."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pytest

from training.data import DataError, Example, grouped_split, load_labeled, load_unlabeled, parse_label


def _expected(fixture, split="train"):
    """(text, label, film) of the labeled reviews written to the fixture, in any order."""
    return sorted((r.text, r.label, r.film) for r in fixture.of(split, "pos", "neg"))


def _got(examples):
    return sorted((e.text, e.label, e.group) for e in examples)


@pytest.mark.parametrize("which", ["parent", "aclImdb"])
def test_folder_loader_reads_every_labeled_review_with_its_film(imdb_fixture, which):
    path = imdb_fixture.root if which == "parent" else imdb_fixture.root / "aclImdb"
    examples = load_labeled(path)
    assert _got(examples) == _expected(imdb_fixture)
    # unsup reviews are not labeled examples; test/ reviews are not train examples
    assert all(e.label in (0, 1) for e in examples)
    assert len(examples) == len(imdb_fixture.of("train", "pos", "neg"))


def test_folder_loader_keeps_raw_text_cleaning_is_the_tokenizers_job(imdb_fixture):
    texts = {e.text for e in load_labeled(imdb_fixture.root)}
    assert any("<br />" in t for t in texts)
    assert any("&amp;" in t or "&quot;" in t or "&#39;" in t for t in texts)


def test_folder_loader_test_split(imdb_fixture):
    assert _got(load_labeled(imdb_fixture.root, split="test")) == _expected(imdb_fixture, "test")


def test_tarball_loader_matches_folder(imdb_fixture, imdb_tarball):
    assert _got(load_labeled(imdb_tarball)) == _expected(imdb_fixture)
    assert _got(load_labeled(imdb_tarball, split="test")) == _expected(imdb_fixture, "test")


def test_tarball_without_top_folder(imdb_fixture, tmp_path):
    """Our train-only tarball may hold train/... directly; urls_*.txt are still matched."""
    path = tmp_path / "flat.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(imdb_fixture.root / "aclImdb" / "train", arcname="train")
    assert _got(load_labeled(path)) == _expected(imdb_fixture)


def test_missing_urls_file_falls_back_to_one_group_per_review(imdb_fixture, tmp_path):
    path = tmp_path / "no_urls.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for kind in ("pos", "neg"):
            tar.add(imdb_fixture.root / "aclImdb" / "train" / kind, arcname=f"aclImdb/train/{kind}")
    examples = load_labeled(path)
    assert len(examples) == len(imdb_fixture.of("train", "pos", "neg"))
    assert len({e.group for e in examples}) == len(examples)


def test_load_unlabeled_returns_the_unsup_texts(imdb_fixture, imdb_tarball, tmp_path):
    expected = sorted(r.text for r in imdb_fixture.of("train", "unsup"))
    assert sorted(load_unlabeled(imdb_fixture.root)) == expected
    assert sorted(load_unlabeled(imdb_fixture.root / "aclImdb")) == expected
    assert sorted(load_unlabeled(imdb_tarball)) == expected
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"text": "fine", "label": 1}) + "\n")
    assert load_unlabeled(jsonl) == []  # plain files carry no unlabeled reviews


LABEL_FORMS = [
    ("neg", 0),
    ("pos", 1),
    ("0", 0),
    ("1", 1),
    ("negative", 0),
    ("positive", 1),
    (" Positive ", 1),
    ("NEG", 0),
    (0, 0),
    (1, 1),
]


@pytest.mark.parametrize(("raw", "label"), LABEL_FORMS)
def test_parse_label_aliases(raw, label):
    assert parse_label(raw, "here") == label


def test_jsonl_loader(tmp_path):
    rows = [
        {"text": f"review {i}", "label": raw, **({"group": f"film{i % 3}"} if i % 2 else {})}
        for i, (raw, _) in enumerate(LABEL_FORMS)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[5:]))
    examples = load_labeled(path)
    assert [e.text for e in examples] == [r["text"] for r in rows]
    assert [e.label for e in examples] == [label for _, label in LABEL_FORMS]
    groups = [e.group for e in examples]
    assert groups[1] == "film1" and groups[3] == "film0"
    assert len(set(groups[0::2])) == len(groups[0::2])  # rows without a group are their own group


def test_csv_loader(tmp_path):
    path = tmp_path / "data.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "label", "movie"])
    for i, (raw, _) in enumerate(LABEL_FORMS):
        writer.writerow([i, f'review, with "quotes" {i}\nand a newline', raw, f"m{i // 2}"])
    path.write_text(buf.getvalue(), encoding="utf-8")
    examples = load_labeled(path)
    assert [e.label for e in examples] == [label for _, label in LABEL_FORMS]
    assert examples[3].text == 'review, with "quotes" 3\nand a newline'
    assert [e.group for e in examples] == [f"m{i // 2}" for i in range(len(LABEL_FORMS))]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "no examples"),
        ("blank.jsonl", "\n \n", "no examples"),
        ("empty.csv", "", "'text' and 'label'"),
        ("header_only.csv", "text,label\n", "no examples"),
        (
            "bad_label.jsonl",
            '{"text": "ok", "label": "pos"}\n{"text": "meh", "label": "neutral"}\n',
            ":2: unknown label 'neutral'",
        ),
        ("bad_label.csv", "text,label\nfine,1\nbad,2\n", ":3: unknown label '2'"),
        ("bad_json.jsonl", '{"text": "ok", "label": 1}\n{"text": "oops", "label": \n', ":2: invalid JSON"),
        ("not_object.jsonl", '["text", 1]\n', ":1: each row needs a string 'text' and a 'label'"),
        ("no_label.jsonl", '{"text": "ok"}\n', "each row needs"),
        ("columns.csv", "review,sentiment\ngood,pos\n", "CSV needs a header with 'text' and 'label' columns"),
        ("data.txt", "great film\n", "unsupported format"),
        ("data.parquet", "PAR1", "unsupported format"),
    ],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_labeled(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file or directory") as info:
        load_labeled(tmp_path / "nowhere.tar.gz")
    assert "nowhere.tar.gz" in str(info.value)


def test_folder_without_reviews(tmp_path):
    (tmp_path / "aclImdb" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="aclImdb"):
        load_labeled(tmp_path)


@pytest.fixture(scope="module")
def tarball_bytes(imdb_tarball):
    return imdb_tarball.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated_header", "truncated_half", "flipped_middle"])
def test_corrupt_tarball(tmp_path, tarball_bytes, damage):
    data = {
        "garbage": b"this is not an archive " * 20,
        "empty": b"",
        "truncated_header": tarball_bytes[:40],
        "truncated_half": tarball_bytes[: len(tarball_bytes) // 2],
        "flipped_middle": tarball_bytes[: len(tarball_bytes) // 2]
        + bytes(b ^ 0xA5 for b in tarball_bytes[len(tarball_bytes) // 2 : len(tarball_bytes) // 2 + 64])
        + tarball_bytes[len(tarball_bytes) // 2 + 64 :],
    }[damage]
    path = tmp_path / "aclImdb_broken.tar.gz"
    path.write_bytes(data)
    with pytest.raises(DataError, match="cannot read archive") as info:
        load_labeled(path)
    assert str(path) in str(info.value)
    assert load_unlabeled(path) == []  # unlabeled reviews are optional: a broken source gives none


def _examples(n_films=20, per_film=(1, 2, 3, 4)):
    out = []
    for f in range(n_films):
        for k in range(per_film[f % len(per_film)]):
            out.append(Example(f"film {f} review {k}", (f + k) % 2, f"tt{f:07d}"))
    return out


@pytest.mark.parametrize("seed", [0, 1, 13])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_grouped_split_keeps_films_on_one_side(seed, fraction):
    examples = _examples()
    train, val = grouped_split(examples, fraction, seed)
    assert sorted(e.text for e in train + val) == sorted(e.text for e in examples)
    assert not {e.group for e in train} & {e.group for e in val}
    # the validation side stops at the first film that reaches the target size
    target = round(len(examples) * fraction)
    assert target <= len(val) < target + max(len([e for e in examples if e.group == g]) for g in {e.group for e in val})


def test_grouped_split_is_deterministic_per_seed():
    examples = _examples()
    first = grouped_split(examples, 0.25, seed=5)
    again = grouped_split(list(examples), 0.25, seed=5)
    assert [e.text for e in first[1]] == [e.text for e in again[1]]
    assert [e.text for e in first[0]] == [e.text for e in again[0]]
    # ...and the seed matters
    vals = {tuple(sorted(e.group for e in grouped_split(examples, 0.25, seed=s)[1])) for s in range(6)}
    assert len(vals) > 1


def test_grouped_split_on_the_fixture_keeps_films_apart(imdb_fixture):
    train, val = grouped_split(load_labeled(imdb_fixture.root), 0.25, seed=3)
    assert train and val
    assert not {e.group for e in train} & {e.group for e in val}


def test_grouped_split_too_few_examples():
    with pytest.raises(DataError, match="cannot split"):
        grouped_split([Example("only", 1, "tt1")], 0.5, seed=0)
