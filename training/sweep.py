"""Fixed-budget comparison for MODEL_CARD.md: vanilla RNN vs LSTM vs GRU, uni vs bidirectional, word2vec vs random
embeddings, gradient clipping on/off for the vanilla RNN.

Every variant trains on the same subset of the prepared (tokenized, word2vec'd) data of a finished run, for the same
number of epochs, with `last` pooling: the classifier sees only the final state, so the gradient must travel the whole
review, which is where vanishing/exploding gradients show.

    python -m training.sweep --prepared runs/lstm/prepared.pt --out runs/sweep --examples 6000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import torch

from service.tokenization import kept_positions
from training.config import ModelConfig, TrainConfig
from training.train import train

VARIANTS = [
    # name, cell, bidirectional, embeddings, clip_norm
    ("rnn-uni-clip", "rnn", False, "word2vec", 1.0),
    ("rnn-uni-noclip", "rnn", False, "word2vec", 0.0),
    ("lstm-uni", "lstm", False, "word2vec", 1.0),
    ("gru-uni", "gru", False, "word2vec", 1.0),
    ("lstm-bi", "lstm", True, "word2vec", 1.0),
    ("gru-bi", "gru", True, "word2vec", 1.0),
    ("lstm-bi-random-emb", "lstm", True, "random", 1.0),
]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepared", required=True, help="prepared.pt of a finished run (tokenized data, word2vec)")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--max-tokens", type=int, default=200, help="re-truncate the prepared reviews (head+tail)")
    args = parser.parse_args(argv)
    prepared = torch.load(args.prepared, weights_only=False)
    ids, labels = prepared["train"]
    pick = sorted(random.Random(0).sample(range(len(ids)), min(args.examples, len(ids))))

    def cut(rows):
        return [r[kept_positions(len(r), args.max_tokens, "head_tail", args.max_tokens // 4)] for r in rows]

    val_ids, val_labels = prepared["val"]
    subset = dict(prepared, train=(cut([ids[i] for i in pick]), [labels[i] for i in pick]), val=(cut(val_ids), val_labels))
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    only = set(args.only.split(",")) if args.only else None
    for name, cell, bi, emb, clip in VARIANTS:
        if (only and name not in only) or name in results:
            continue
        run = out / name
        run.mkdir(parents=True, exist_ok=True)
        torch.save(subset, run / "prepared.pt")
        cfg = TrainConfig(
            out_dir=str(run),
            name=name,
            embeddings=emb,
            clip_norm=clip,
            epochs=args.epochs,
            patience=args.epochs,
            max_tokens=args.max_tokens,
            model=ModelConfig(cell=cell, bidirectional=bi, pooling="last", dropout=0.3, embedding_dropout=0.1),
        )
        metrics = train(cfg)
        results[name] = {
            "cell": cell,
            "bidirectional": bi,
            "embeddings": emb,
            "clip_norm": clip,
            "val_accuracy": metrics["val_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "grad_norm_max": max(r["grad_norm_max"] for r in metrics["history"]),
            "per_epoch_val_accuracy": [round(r["val_accuracy"], 4) for r in metrics["history"]],
        }
        results_path.write_text(json.dumps(results, indent=2))
        (run / "prepared.pt").unlink()
    lines = [
        "| variant | cell | directions | embeddings | clipping | val accuracy | train time (s) "
        "| max grad norm (before clipping) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['cell']} | {2 if r['bidirectional'] else 1} | {r['embeddings']} | "
            f"{'norm 1.0' if r['clip_norm'] else 'off'} | {r['val_accuracy']:.4f} | {r['train_seconds']:.0f} | "
            f"{r['grad_norm_max']:.1f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
