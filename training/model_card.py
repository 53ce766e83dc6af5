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
        f"{r['val_accuracy']:.4f} | {r['seconds']:.0f} | {r['grad_norm_max']:.2f} |"
        for r in hist
    )
    parts = [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        "Binary sentiment (negative / positive) of English movie reviews.",
        "",
        "## Architecture",
        f"- Embedding {m['vocab_size']} x {m['embedding_dim']} (initialised from {tr['config']['embeddings']}), "
        f"{m['num_layers']} x {'bidirectional ' if m['bidirectional'] else ''}{m['cell'].upper()} "
        f"(hidden {m['hidden_size']}), {m['pooling']} pooling over time, linear head.",
        *_ngram_lines(m, met, tr["config"]),
        f"- Dropout {m['dropout']} (embedding channel dropout {m['embedding_dropout']}).",
        f"- Input: whole texts up to a safety cap of {manifest['max_tokens']} tokens (past it, truncation "
        f"`{manifest['truncation']['strategy']}` keeps the first {manifest['truncation']['head_tokens']} tokens and the end).",
        _calibration_line(manifest, met),
        f"- Diagnostics: running score {manifest.get('diagnostics', {}).get('running_score') or 'not available'}, "
        f"contributions by {manifest.get('diagnostics', {}).get('contribution', 'occlusion')} (log-odds).",
        "",
        "## Data",
        f"- IMDB train split (aclImdb): {counts.get('train', '?')} training reviews, {counts.get('val', '?')} validation "
        f"reviews from {counts.get('val_films', '?')} films held out *by film* (no film on both sides).",
        f"- Embeddings pretrained with word2vec on the training reviews plus {counts.get('unlabeled', 0)} unlabeled "
        "reviews (train/unsup) when `word2vec` is named above.",
        *(
            [
                "- Embedding and recurrent layer then pretrained as a language model (next word, sampled softmax) on the "
                "same reviews before the first epoch (`python -m training.pretrain`, Dai & Le 2015)."
            ]
            if tr["config"].get("init_from")
            else []
        ),
        "",
        "## Validation metrics",
        f"- Accuracy: **{met['val_accuracy']:.4f}**{_interval(met, counts)} (best epoch {met.get('best_epoch')} of "
        f"{met.get('epochs_run')}).",
        *(
            [f"- Parts alone: recurrent network {met['val_accuracy_rnn']:.4f}, n-gram branch {met['val_accuracy_ngram']:.4f}."]
            if "val_accuracy_rnn" in met
            else []
        ),
        f"- Expected calibration error (15 bins): {met['ece_before']:.4f} before, {met['ece_after']:.4f} after "
        f"calibration; NLL {met['val_nll_before']:.4f} -> {met['val_nll_after']:.4f}."
        + (
            f" On sentence crops of the validation reviews (1-3 sentences, the review's label): accuracy "
            f"{met['crop_accuracy']:.4f}, ECE {met['ece_crops']:.4f}."
            if "ece_crops" in met
            else ""
        ),
        f"- Training time: {met['train_seconds'] / 60:.1f} min on a 2-core CPU (excluding tokenizer and word2vec).",
        "",
        "| epoch | train loss | train acc | val loss | val acc | seconds | max grad norm |",
        "|---|---|---|---|---|---|---|",
        rows,
        "",
        "## Reproduce",
        "The shipped models come from `make train`, a staged recipe (each stage resumes the run with new settings; "
        "see the Makefile). The settings of the run's last stage:",
        f"```\n{tr['command']}\nsentiment-export --run <out-dir> --out exported/{manifest['name']}\n```",
        f"Source commit: `{tr['source_commit']}`.",
    ]
    if comparison_md:
        parts += ["", "## Architecture comparison at a fixed budget", "", comparison_md.strip()]
    if notes:
        parts += ["", notes.strip()]
    parts += [
        "",
        "## Limits",
        "- Trained on movie reviews: other domains (products, tweets) will score less reliably.",
        "- English only; words outside the vocabulary map to [UNK] (the diagnostics report their share).",
        f"- Texts over {manifest['max_tokens']} tokens are truncated (the response says so).",
    ]
    return "\n".join(parts) + "\n"


def _fitted_on(config: dict) -> str:
    return "validation reviews and one sentence crop of each" if config.get("mix_on_crops") else "validation"


def _ngram_lines(m: dict, met: dict, config: dict) -> list[str]:
    if not m.get("ngram_buckets"):
        return []
    a, b, c = met.get("mix", [1.0, 0.0, 0.0])
    return [
        f"- Plus a hashed n-gram branch (orders 1-{m['ngram_order']}, {m['ngram_buckets']:,} buckets per order >= 2) "
        "whose weights are fitted by NB-weighted logistic regression (NBSVM, Wang & Manning 2012) on the training "
        f"split; final log-odds = {a:.3f} x network + {b:.3f} x n-gram + {c:.3f}, fitted on {_fitted_on(config)}."
    ]


def _calibration_line(manifest: dict, met: dict) -> str:
    if "mix" in met:
        fitted_on = _fitted_on(manifest["training"]["config"])
        return f"- Calibration: the mix above is a logistic regression on {fitted_on} (temperature 1)."
    return f"- Calibration: temperature {manifest['temperature']:.3f} fitted on validation."


def _interval(met: dict, counts: dict) -> str:
    from training.baselines import wilson_interval

    n = counts.get("val") or 0
    if not n:
        return ""
    low, high = wilson_interval(round(met["val_accuracy"] * n), n)
    return f" (95% interval {low:.4f}-{high:.4f}, {n} reviews)"


def write(out: Path, manifest: dict, comparison: str | Path | None = None, notes: str | Path | None = None) -> None:
    read = lambda p: Path(p).read_text(encoding="utf-8") if p and Path(p).exists() else None  # noqa: E731
    (out / "MODEL_CARD.md").write_text(render(manifest, read(comparison), read(notes)), encoding="utf-8")
