"""The networks: Embedding -> stacked RNN | LSTM | GRU layers -> pooling -> linear head.

Each layer is its own module and each direction its own single-direction torch module, so every layer's outputs are
available (the ONNX export reproduces them for the service's per-layer diagnostics).

Padding never changes a result, but we do not use `pack_padded_sequence`: on CPU, packed LSTMs fall off torch's
fused kernel and measured 8-15x slower per review than padded ones (see MODEL_CARD.md). Instead, inputs are
right-padded, the forward direction is causal (padding after a review cannot reach it), and the backward direction
reads each review reversed *within its own length* (a per-row gather), so it also starts at the review's last real
token. Outputs past each length are zeroed and pooling masks them. Tests check alone-vs-padded-batch equality.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import ModelConfig
from training.ngrams import ngram_rows

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """idx[b, t] = L_b - 1 - t inside the review, t past it: gathering with it reverses each review in place
    (and applying it twice is the identity)."""
    t = torch.arange(steps, device=lengths.device)[None, :]
    return torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


class RecurrentLayer(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__()
        cls = _CELLS[cell]
        self.directions = nn.ModuleList(cls(input_size, hidden_size, batch_first=True) for _ in range(2 if bidirectional else 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rev: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, in] -> [B, T, D*H], zero past each length."""
        outs = [self.directions[0](x)[0]]
        if len(self.directions) == 2:
            idx = rev[..., None]
            xr = x.gather(1, idx.expand(-1, -1, x.shape[2]))
            yr = self.directions[1](xr)[0]
            outs.append(yr.gather(1, idx.expand(-1, -1, yr.shape[2])))
        return torch.cat(outs, dim=2) * mask


class RecurrentClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=0)
        sizes = [cfg.embedding_dim] + [cfg.hidden_size * cfg.directions] * (cfg.num_layers - 1)
        self.layers = nn.ModuleList(RecurrentLayer(cfg.cell, size, cfg.hidden_size, cfg.bidirectional) for size in sizes)
        self.embedding_dropout = nn.Dropout1d(cfg.embedding_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_size, cfg.num_labels)
        if cfg.ngram_buckets:
            # Fitted by NBSVM after the network trains (training/ngrams.py), never by gradient descent here.
            self.ngram = nn.Embedding(cfg.ngram_table_size, 1)
            nn.init.zeros_(self.ngram.weight)
            self.ngram.weight.requires_grad_(False)
            # log-odds = mix[0] * recurrent log-odds + mix[1] * n-gram score + mix[2], fitted on validation; the
            # identity until then, so training the network alone sees its own logits.
            self.register_buffer("mix", torch.tensor([1.0, 0.0, 0.0]))

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor, embedded: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-layer outputs [B, T, D*H], zero past each length. `embedded` replaces the embedding lookup of `ids`
        (adversarial training perturbs it: training/adversarial.py)."""
        steps = ids.shape[1]
        mask = (torch.arange(steps, device=ids.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        rev = reverse_index(lengths, steps) if self.cfg.bidirectional else None
        x = self.embedding(ids) if embedded is None else embedded
        # Dropout1d drops whole embedding channels: [B, T, E] -> treat E as channels.
        x = self.embedding_dropout(x.transpose(1, 2)).transpose(1, 2)
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(self.dropout(x) if i else x, mask, rev)
            outputs.append(x)
        return outputs

    def pool(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooling, hidden = self.cfg.pooling, self.cfg.hidden_size
        if pooling == "last":
            # Forward direction: state after the last real token; backward: state after reading back to token 0.
            rows = torch.arange(x.shape[0], device=x.device)
            parts = [x[rows, lengths - 1, :hidden]]
            if self.cfg.bidirectional:
                parts.append(x[:, 0, hidden:])
            return torch.cat(parts, dim=1)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        mean = x.sum(1) / lengths[:, None].to(x.dtype)
        if pooling == "mean":
            return mean
        mx = x.masked_fill(~mask, float("-inf")).amax(1)
        return mx if pooling == "max" else torch.cat([mean, mx], dim=1)

    def rnn_logits(self, ids: torch.Tensor, lengths: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrent part's logits [B, num_labels]."""
        return self.head(self.dropout(self.pool(self.encode(ids, lengths, embedded)[-1], lengths)))

    def ngram_score(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The n-gram branch's positive log-odds contribution [B]: the sum of every position's n-gram weights."""
        cfg = self.cfg
        per_position = self.ngram(ngram_rows(ids, cfg)).sum((2, 3))
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return (per_position * mask).sum(1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits [B, num_labels]; with an n-gram branch, [-z/2, z/2] for the combined log-odds z."""
        logits = self.rnn_logits(ids, lengths)
        if not self.cfg.ngram_buckets:
            return logits
        a, b, c = self.mix
        z = a * (logits[:, 1] - logits[:, 0]) + b * self.ngram_score(ids, lengths) + c
        return torch.stack([-z / 2, z / 2], dim=1)

    def load_embeddings(self, vectors: torch.Tensor) -> None:
        with torch.no_grad():
            self.embedding.weight.copy_(vectors)
            self.embedding.weight[0].zero_()
