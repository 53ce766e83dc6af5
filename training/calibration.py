"""Temperature scaling (fitted on validation logits) and expected calibration error."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises validation NLL of softmax(logits / T): a coarse log-grid, then a finer one."""

    def nll(t: float) -> float:
        return F.cross_entropy(logits / t, labels).item()

    grid = torch.logspace(-1.5, 1.5, 61).tolist()
    best = min(grid, key=nll)
    fine = torch.linspace(best / 1.15, best * 1.15, 61).tolist()
    return float(min(fine, key=nll))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    ece = torch.zeros(())
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return float(ece)
