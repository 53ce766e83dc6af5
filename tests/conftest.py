"""Shared session fixtures: a tiny aclImdb-shaped dataset, a tiny trained + exported model and untrained exports.

Training modules (torch) are imported inside the fixtures, so collecting the service tests needs no torch; the
fixtures that train or export skip when torch is not installed.

Fixtures for other test packages:
    imdb_fixture_dir   folder holding `aclImdb/` (train/pos, train/neg, train/unsup, test/pos, test/neg, urls_*.txt)
    imdb_fixture       the same plus the list of reviews written (text, label, film, ...) to check loaders against
    imdb_tarball       `aclImdb_fixture.tar.gz` made from that tree
    tiny_run_dir       a finished `train()` run on the fixture (model.pt, checkpoint.pt, metrics.json, ...)
    tiny_artifact      that run exported with `sentiment-export`: model.onnx, diagnostics.onnx, weights.bin,
                       tokenizer.json, manifest.json, MODEL_CARD.md (shared by the session: copy it before tampering)
    random_artifacts   {(cell, bidirectional): RandomExport} untrained exports for lstm/gru/rnn, uni and bi
    export_random      factory for more untrained exports: export_random(cell, bidirectional, pooling, num_layers)
"""

from __future__ import annotations

import os
import random
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# sentiment-serve runs one process per core by default; tests start it as one process (slow_serve.py patches the
# model in that process) unless they ask for more (tests/service/test_workers.py).
os.environ.setdefault("SENTIMENT_WORKERS", "1")

POSITIVE_WORDS = ["great", "wonderful", "loved", "excellent", "brilliant", "superb", "enjoyable", "beautiful"]
NEGATIVE_WORDS = ["awful", "boring", "hated", "terrible", "dull", "waste", "worst", "stupid"]
NEUTRAL_WORDS = [
    "the",
    "film",
    "movie",
    "plot",
    "acting",
    "story",
    "cast",
    "director",
    "scenes",
    "ending",
    "was",
    "and",
    "it",
    "this",
    "a",
    "of",
    "music",
    "characters",
]
# Bits of scraped-HTML noise that the tokenizer's normalizer must clean.
HTML_NOISE = ["<br /><br />", "<br />", " &amp; ", " &quot;really&quot; ", " didn&#39;t ", "<i>", "</i>"]

# Small settings shared by every tiny training run (tests build their own runs from these).
TINY_SETTINGS = {
    "seed": 8,
    "val_fraction": 0.25,
    "max_vocab": 500,
    "min_frequency": 1,
    "max_tokens": 64,
    "truncation": "head_tail",
    "head_tokens": 16,
    "embeddings": "random",
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.01,
    "patience": 5,
}
TINY_MODEL = {
    "embedding_dim": 16,
    "hidden_size": 16,
    "cell": "lstm",
    "bidirectional": True,
    "pooling": "meanmax",
    "num_layers": 1,
}


@dataclass
class Review:
    split: str  # train | test
    kind: str  # pos | neg | unsup
    idx: int
    rating: int
    text: str
    film: str  # ttNNNNNNN

    @property
    def label(self) -> int:
        return {"pos": 1, "neg": 0}.get(self.kind, -1)


@dataclass
class ImdbFixture:
    root: Path  # the folder that contains aclImdb/
    reviews: list[Review] = field(default_factory=list)

    def of(self, split: str, *kinds: str) -> list[Review]:
        return [r for r in self.reviews if r.split == split and r.kind in kinds]


def _review_text(rng: random.Random, kind: str, n: int) -> str:
    if kind == "unsup":
        pool = NEUTRAL_WORDS + POSITIVE_WORDS[:3] + NEGATIVE_WORDS[:3]
        return " ".join(rng.choice(pool) for _ in range(rng.randint(8, 20))).capitalize() + "."
    cue = POSITIVE_WORDS if kind == "pos" else NEGATIVE_WORDS
    words = []
    for _ in range(rng.randint(10, 24)):
        words.append(rng.choice(cue) if rng.random() < 0.35 else rng.choice(NEUTRAL_WORDS))
    if n % 7 == 3:  # a few long reviews, longer than the tiny max_tokens, so truncation happens in training
        words += [rng.choice(NEUTRAL_WORDS) for _ in range(60)] + [rng.choice(cue) for _ in range(4)]
    text = " ".join(words)
    if n % 3 == 0:  # HTML line breaks and entities in some reviews
        cut = len(words) // 2
        text = " ".join(words[:cut]) + rng.choice(HTML_NOISE) + " ".join(words[cut:])
    if n % 4 == 1:
        text += " " + ("I loved it!" if kind == "pos" else "I hated it!") + "<br />"
    return text[0].upper() + text[1:] + "."


def write_imdb_tree(root: Path, seed: int = 0) -> ImdbFixture:
    """Write `root/aclImdb/` with `{id}_{rating}.txt` reviews and urls_{kind}.txt (line i = film of review i)."""
    rng = random.Random(seed)
    fixture = ImdbFixture(root)
    counts = {("train", "pos"): 30, ("train", "neg"): 30, ("train", "unsup"): 10, ("test", "pos"): 5, ("test", "neg"): 5}
    # 24 films shared by several reviews, and by both labels (as on IMDB), so grouping matters for the split.
    films = [f"tt{1000000 + 37 * k:07d}" for k in range(24)]
    for (split, kind), count in counts.items():
        folder = root / "aclImdb" / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        urls = []
        for idx in range(count):
            rating = 0 if kind == "unsup" else (rng.randint(7, 10) if kind == "pos" else rng.randint(1, 4))
            film = films[(idx // 3 + (5 if kind == "neg" else 0) + (11 if split == "test" else 0)) % len(films)]
            text = _review_text(rng, kind, idx)
            (folder / f"{idx}_{rating}.txt").write_text(text, encoding="utf-8")
            urls.append(f"http://www.imdb.com/title/{film}/usercomments")
            fixture.reviews.append(Review(split, kind, idx, rating, text, film))
        (root / "aclImdb" / split / f"urls_{kind}.txt").write_text("\n".join(urls) + "\n", encoding="utf-8")
    return fixture


def _one_torch_thread() -> None:
    """The suite's models are tiny: extra intra-op threads only fight over a small shared machine's cores."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _limit_threads():
    _one_torch_thread()  # only when a test module already imported torch: service-only runs never import it


@pytest.fixture(scope="session")
def imdb_fixture(tmp_path_factory) -> ImdbFixture:
    return write_imdb_tree(tmp_path_factory.mktemp("imdb"))


@pytest.fixture(scope="session")
def imdb_fixture_dir(imdb_fixture) -> Path:
    """The folder that contains `aclImdb/`."""
    return imdb_fixture.root


@pytest.fixture(scope="session")
def imdb_tarball(imdb_fixture_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imdb_tar") / "aclImdb_fixture.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(imdb_fixture_dir / "aclImdb", arcname="aclImdb")
    return path


def tiny_train_config(data, out_dir, model: dict | None = None, **settings):
    """TrainConfig of a tiny run (TINY_SETTINGS / TINY_MODEL, overridable)."""
    from training.config import ModelConfig, TrainConfig

    return TrainConfig(
        data=str(data),
        out_dir=str(out_dir),
        name="tiny-lstm",
        **{**TINY_SETTINGS, **settings},
        model=ModelConfig(**{**TINY_MODEL, **(model or {})}),
    )


def tiny_train_argv(data, out_dir, **settings) -> list[str]:
    """`sentiment-train` arguments for the same tiny run as `tiny_train_config(data, out_dir, **settings)`."""
    argv = ["--data", str(data), "--out-dir", str(out_dir), "--name", "tiny-lstm"]
    for key, value in {**TINY_SETTINGS, **TINY_MODEL, **settings}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


@pytest.fixture(scope="session")
def tiny_config_factory():
    """`tiny_train_config` / `tiny_train_argv` for tests that start their own tiny runs."""
    return tiny_train_config, tiny_train_argv


@pytest.fixture(scope="session")
def tiny_run_dir(imdb_fixture_dir, tmp_path_factory) -> Path:
    """A finished tiny training run (2 epochs, LSTM, bidirectional, hidden 16) on the fixture dataset."""
    pytest.importorskip("torch")
    from training.train import train

    _one_torch_thread()
    out = tmp_path_factory.mktemp("tiny_run")
    train(tiny_train_config(imdb_fixture_dir, out))
    return out


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run_dir, tmp_path_factory) -> Path:
    """The tiny run exported through the `sentiment-export` CLI: a complete artifact directory."""
    from training.export import main

    out = tmp_path_factory.mktemp("tiny_artifact") / "tiny-lstm"
    assert main(["--run", str(tiny_run_dir), "--out", str(out), "--version", "0.0.1"]) == 0
    return out


@pytest.fixture(scope="session")
def fixture_tokenizer(imdb_fixture):
    """A word-level tokenizer (training.tokenizer.build_tokenizer) over the fixture's train reviews."""
    from training.tokenizer import build_tokenizer

    return build_tokenizer([r.text for r in imdb_fixture.reviews if r.split == "train"], max_vocab=500, min_frequency=1)


@dataclass
class RandomExport:
    model: object  # RecurrentClassifier, eval mode
    artifact: Path
    temperature: float
    max_tokens: int


RANDOM_TEMPERATURE = 1.7  # not 1, so exported probabilities must divide by it


def placeholder_metrics(temperature: float = 1.0) -> dict:
    """Metrics in the shape `training.train.finish` writes, for exports of untrained models."""
    return {
        "val_accuracy": 0.5,
        "val_nll_before": 0.7,
        "val_nll_after": 0.69,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "temperature": temperature,
        "best_epoch": 1,
        "epochs_run": 1,
        "train_seconds": 0.0,
        "embedding_coverage": 0.0,
        "counts": {"train": 0, "val": 0, "unlabeled": 0, "val_films": 0},
        "history": [],
    }


RANDOM_MAX_TOKENS = 24


@pytest.fixture(scope="session")
def export_random(fixture_tokenizer, tmp_path_factory):
    """Factory: export_random(cell, bidirectional, pooling="meanmax", num_layers=1) -> RandomExport (cached).

    Untrained models with embedding_dim 10 != hidden_size 6, so transposed weights cannot go unnoticed."""
    torch = pytest.importorskip("torch")
    from training.config import ModelConfig
    from training.export import export_model
    from training.models import RecurrentClassifier

    cache: dict[tuple, RandomExport] = {}
    root = tmp_path_factory.mktemp("random_exports")

    def make(
        cell: str, bidirectional: bool, pooling: str = "meanmax", num_layers: int = 1, ngram_buckets: int = 0
    ) -> RandomExport:
        key = (cell, bidirectional, pooling, num_layers) + ((ngram_buckets,) if ngram_buckets else ())
        if key not in cache:
            torch.manual_seed(zlib.crc32(repr(key).encode()))  # stable across processes, unlike hash()
            cfg = ModelConfig(
                vocab_size=fixture_tokenizer.get_vocab_size(),
                embedding_dim=10,
                hidden_size=6,
                cell=cell,
                bidirectional=bidirectional,
                pooling=pooling,
                num_layers=num_layers,
                ngram_buckets=ngram_buckets,
                # negation scope with common ids, so random test batches hit it often
                **({"negation_window": 3, "negation_ids": (2, 3, 4, 5), "scope_break_ids": (6, 7)} if ngram_buckets else {}),
            )
            model = RecurrentClassifier(cfg).eval()
            with torch.no_grad():  # torch's init leaves biases small; make them matter
                for name, p in model.named_parameters():
                    if "bias" in name:
                        p.uniform_(-0.5, 0.5)
                if ngram_buckets:  # an n-gram branch with weights and a mix that is not the identity
                    model.ngram.weight.normal_(0, 0.5)
                    model.mix.copy_(torch.tensor([1.3, 0.7, -0.2]))
            train_cfg = tiny_train_config(
                "unused",
                "unused",
                max_tokens=RANDOM_MAX_TOKENS,
                model={
                    "cell": cell,
                    "bidirectional": bidirectional,
                    "pooling": pooling,
                    "num_layers": num_layers,
                    "embedding_dim": 10,
                    "hidden_size": 6,
                    "ngram_buckets": ngram_buckets,
                },
            )
            out = root / (
                f"{cell}-{'bi' if bidirectional else 'uni'}-{pooling}-{num_layers}"
                + (f"-ngram{ngram_buckets}" if ngram_buckets else "")
            )
            export_model(
                model,
                fixture_tokenizer.to_str(),
                out,
                name=out.name,
                version="0.0.0",
                train_cfg=train_cfg,
                metrics=placeholder_metrics(RANDOM_TEMPERATURE),
                temperature=RANDOM_TEMPERATURE,
            )
            cache[key] = RandomExport(model, out, RANDOM_TEMPERATURE, RANDOM_MAX_TOKENS)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def random_artifacts(export_random) -> dict[tuple[str, bool], RandomExport]:
    """Untrained exports for every cell kind, unidirectional and bidirectional (meanmax pooling)."""
    return {(cell, bi): export_random(cell, bi) for cell in ("lstm", "gru", "rnn") for bi in (False, True)}


@pytest.fixture(name="placeholder_metrics", scope="session")
def placeholder_metrics_fixture():
    """`placeholder_metrics(temperature=1.0)`: a metrics dict for exporting untrained models."""
    return placeholder_metrics


@pytest.fixture(scope="session")
def ort_session():
    """ort_session(path) -> an onnxruntime CPU session (one thread: the machine is shared)."""
    import onnxruntime as ort

    def make(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    return make
