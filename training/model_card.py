"""MODEL_CARD.md for an artifact: what the model is, how it was trained, how well it does, and the fixed-budget
architecture comparison (from `training.sweep`) when one is given."""

from __future__ import annotations

from pathlib import Path


def render(manifest: dict, comparison_md: str | None = None, notes: str | None = None) -> str:
    m, met, tr = manifest["model"], manifest["metrics"], manifest["training"]
    counts = met.get("counts", {})
    hist = manifest.get("history", [])
    rows = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_accuracy']:.4f} | {r['val_loss']:.4f} | "
        f"{r['val_accuracy']:.4f} | {r['seconds']:.0f} | {r['grad_norm_max']:.2f} |" for r in hist)
    parts = [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        "Binary sentiment (negative / positive) of English movie reviews.",
        "",
        "## Architecture",
        f"- Embedding {m['vocab_size']} x {m['embedding_dim']} (initialised from {tr['config']['embeddings']}), "
        f"{m['num_layers']} x {'bidirectional ' if m['bidirectional'] else ''}{m['cell'].upper()} "
        f"(hidden {m['hidden_size']}), {m['pooling']} pooling over time, linear head.",
        f"- Dropout {m['dropout']} (embedding channel dropout {m['embedding_dropout']}).",
        f"- Input: at most {manifest['max_tokens']} tokens, truncation `{manifest['truncation']['strategy']}` "
        f"(first {manifest['truncation']['head_tokens']} + last {manifest['max_tokens'] - manifest['truncation']['head_tokens']}"
        " tokens of longer reviews).",
        f"- Calibration: temperature {manifest['temperature']:.3f} fitted on validation.",
        "",
        "## Data",
        f"- IMDB train split (aclImdb): {counts.get('train', '?')} training reviews, {counts.get('val', '?')} validation "
        f"reviews from {counts.get('val_films', '?')} films held out *by film* (no film on both sides).",
        f"- Embeddings pretrained with word2vec on the training reviews plus {counts.get('unlabeled', 0)} unlabeled "
        "reviews (train/unsup) when `word2vec` is named above.",
        "",
        "## Validation metrics",
        f"- Accuracy: **{met['val_accuracy']:.4f}** (best epoch {met.get('best_epoch')} of {met.get('epochs_run')}).",
        f"- Expected calibration error (15 bins): {met['ece_before']:.4f} before, {met['ece_after']:.4f} after "
        f"temperature scaling; NLL {met['val_nll_before']:.4f} -> {met['val_nll_after']:.4f}.",
        f"- Training time: {met['train_seconds'] / 60:.1f} min on a 2-core CPU (excluding tokenizer and word2vec).",
        "",
        "| epoch | train loss | train acc | val loss | val acc | seconds | max grad norm |",
        "|---|---|---|---|---|---|---|",
        rows,
        "",
        "## Reproduce",
        f"```\n{tr['command']}\nsentiment-export --run <out-dir> --out exported/{manifest['name']}\n```",
        f"Source commit: `{tr['source_commit']}`.",
    ]
    if comparison_md:
        parts += ["", "## Architecture comparison at a fixed budget", "", comparison_md.strip()]
    if notes:
        parts += ["", notes.strip()]
    parts += ["", "## Limits",
              "- Trained on movie reviews: other domains (products, tweets) will score less reliably.",
              "- English only; words outside the vocabulary map to [UNK] (the diagnostics report their share).",
              "- Very long reviews are truncated (the response says so)."]
    return "\n".join(parts) + "\n"


def write(out: Path, manifest: dict, comparison: str | Path | None = None, notes: str | Path | None = None) -> None:
    read = lambda p: Path(p).read_text(encoding="utf-8") if p and Path(p).exists() else None  # noqa: E731
    (out / "MODEL_CARD.md").write_text(render(manifest, read(comparison), read(notes)), encoding="utf-8")
