"""Language-model pretraining of the recurrent layer (Dai & Le 2015, the start Miyato et al. 2016 build on): before
the classifier sees a label, its embedding and LSTM learn to predict the next word of the training and unlabeled
reviews, so the first classification epoch starts from a network that already reads English review text instead of
from word2vec vectors feeding a random recurrence. Validation reviews are left out, so validation stays unseen.

The output layer is a sampled softmax (Jean et al. 2015): each batch scores the true next word against `negatives`
words drawn from the unigram distribution to the power 0.75, with the log-probability correction, so a step costs
about as much as a classification step instead of 30,000 dot products per token. Only the network's embedding and
recurrent layers are kept (`lm.pt`); the projection and output embeddings are thrown away.

    python -m training.pretrain --run runs/lstm --epochs 1      # writes runs/lstm/lm.pt
    sentiment-train --out-dir runs/lstm --init-from runs/lstm/lm.pt ...
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from training.batches import batches
from training.config import TrainConfig
from training.data import load_unlabeled
from training.models import RecurrentClassifier
from training.pseudo import encode_unlabeled
from training.train import initial_network, prepare

log = logging.getLogger("sentiment.pretrain")


def chunks(rows: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Each review cut into pieces of at most `size` tokens (truncated backpropagation through time, each piece
    starting from a zero state); pieces under two tokens predict nothing and are dropped."""
    out = []
    for row in rows:
        for start in range(0, len(row), size):
            piece = row[start : start + size]
            if len(piece) >= 2:
                out.append(piece)
    return out


class SampledSoftmaxLM(nn.Module):
    """Next-word head over the network's last layer: a projection to the embedding size, then output embeddings."""

    def __init__(self, network: RecurrentClassifier, counts: np.ndarray, negatives: int):
        super().__init__()
        cfg = network.cfg
        self.network = network
        self.proj = nn.Linear(cfg.hidden_size * cfg.directions, cfg.embedding_dim)
        self.out = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        with torch.no_grad():
            self.out.weight.copy_(network.embedding.weight)
        q = np.power(counts.astype(np.float64) + 1.0, 0.75)
        q[0] = 0.0  # never sample [PAD]
        self.register_buffer("q", torch.tensor(q / q.sum(), dtype=torch.float32))
        self.negatives = negatives

    def loss(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.network.encode(x, lengths)[-1][:, :-1]  # position t predicts token t + 1
        mask = (torch.arange(1, x.shape[1], device=x.device)[None, :] < lengths[:, None]).reshape(-1)
        q = self.proj(self.network.dropout(h)).reshape(-1, self.proj.out_features)[mask]
        target = x[:, 1:].reshape(-1)[mask]
        neg = torch.multinomial(self.q, self.negatives, replacement=True)
        log_k_q = math.log(self.negatives) + torch.log(self.q)  # sampled-softmax correction: logit - log(k q(w))
        true = (q * self.out(target)).sum(1) + self.bias[target] - log_k_q[target]
        sampled = q @ self.out(neg).T + self.bias[neg] - log_k_q[neg]
        sampled = sampled.masked_fill(neg[None, :] == target[:, None], -1e9)  # a sampled true word is not a negative
        logits = torch.cat([true[:, None], sampled], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))


def pretrain(
    cfg: TrainConfig,
    prepared: dict,
    unlabeled: list[np.ndarray],
    epochs: float,
    chunk: int = 128,
    negatives: int = 1024,
    lr: float = 2e-3,
) -> tuple[dict, list[dict]]:
    """The network's state after `epochs` passes (a fraction stops early) over the training reviews and
    `unlabeled`; and a log row per epoch."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    network = initial_network(cfg, prepared)
    rows = chunks([np.asarray(r, np.int64) for r in prepared["train"][0]] + list(unlabeled), chunk)
    counts = np.bincount(np.concatenate(rows), minlength=cfg.model.vocab_size)
    lm = SampledSoftmaxLM(network, counts, negatives)
    params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    history = []
    total_steps = math.ceil(len(rows) / cfg.batch_size)
    for epoch in range(math.ceil(epochs)):
        lm.train()
        stop = round(total_steps * min(1.0, epochs - epoch))
        start, loss_sum, steps = time.time(), 0.0, 0
        bar = tqdm(
            batches(rows, [0] * len(rows), cfg.batch_size, cfg.seed + 100 + epoch),
            total=stop,
            desc=f"lm epoch {epoch + 1}",
            file=sys.stderr,
            mininterval=5 if sys.stderr.isatty() else 30,
        )
        for x, lengths, _ in bar:
            if steps >= stop:
                break
            opt.zero_grad(set_to_none=True)
            loss = lm.loss(x, lengths)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm if cfg.clip_norm > 0 else 1e12)
            opt.step()
            loss_sum, steps = loss_sum + loss.item(), steps + 1
            bar.set_postfix(loss=f"{loss_sum / steps:.3f}", refresh=False)
        history.append(
            {
                "epoch": epoch + 1,
                "steps": steps,
                "sampled_loss": loss_sum / max(1, steps),
                "seconds": round(time.time() - start, 1),
            }
        )
        log.info("lm epoch %d: %s", epoch + 1, history[-1])
    keep = {k: v.detach().clone() for k, v in network.state_dict().items() if k.startswith(("embedding.", "layers."))}
    return keep, history


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run",
        required=True,
        help="run folder: its prepared.pt (split, tokenizer, word2vec) is used, or made with the default settings",
    )
    parser.add_argument("--data", default=TrainConfig.data)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--embedding-dim", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--force", action="store_true", help="pretrain again even if the run has an lm.pt")
    args = parser.parse_args(argv)
    out = Path(args.run)
    if (out / "lm.pt").exists() and not args.force:
        # `make train` after a stop: the pretraining is done (and deterministic), so it is not redone.
        log.info("%s exists: kept (--force pretrains again)", out / "lm.pt")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(data=args.data, out_dir=str(out))
    cfg.model.hidden_size, cfg.model.embedding_dim, cfg.model.bidirectional = args.hidden_size, args.embedding_dim, False
    try:
        prepared = prepare(cfg, out)
        cfg.model.vocab_size = Tokenizer.from_str(prepared["tokenizer_json"]).get_vocab_size()
        unlabeled = encode_unlabeled(load_unlabeled(cfg.data), prepared["tokenizer_json"], cfg)
    except (OSError, ValueError) as exc:
        print(f"training.pretrain: error: {exc}", file=sys.stderr)
        return 2
    state, history = pretrain(cfg, prepared, unlabeled, args.epochs, args.chunk, args.negatives, args.lr)
    tmp = out / "lm.pt.tmp"
    torch.save({"network": state, "model_config": cfg.model, "history": history, "settings": vars(args)}, tmp)
    tmp.replace(out / "lm.pt")  # atomic: a stop mid-save leaves no half-written lm.pt to be kept
    log.info("wrote %s", out / "lm.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
