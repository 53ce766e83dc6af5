"""Adversarial training on word embeddings (Miyato, Dai & Goodfellow 2016, "Adversarial Training Methods for
Semi-Supervised Text Classification").

Words are discrete, so the perturbation goes where the network is continuous: the embedded sequence. After the clean
loss's backward pass, the gradient g of that loss with respect to each review's embedded tokens gives the direction
that hurts the model most to first order; r = eps * g / ||g||_2 (one L2 norm over the whole review, as in the paper)
is added to the embeddings and the loss on the perturbed review is trained too. It acts as a regulariser that makes
the verdict smooth in embedding space, which the paper found worth about a point on IMDB for an LSTM.

`eps` is in units of the embedding table's per-dimension standard deviation: the paper normalises embeddings to unit
variance and uses eps = 5 there, so the same number means the same relative size here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.models import RecurrentClassifier
from training.residual import shifted


def perturbation(grad: torch.Tensor, scale: float) -> torch.Tensor:
    """r [B, T, E] with ||r_b||_2 = scale for each review b along its loss gradient (zero where the gradient is)."""
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (scale * grad / norm[:, None, None]).detach()


def adversarial_step(
    model: RecurrentClassifier,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the clean loss and of the adversarial loss (gradients accumulate in the parameters, ready for
    the optimiser's step). Returns the clean logits, the clean loss and the adversarial loss. `offset`: log-odds
    added to the network's in both losses (residual training, training/residual.py)."""
    embedded = model.embedding(ids)
    embedded.retain_grad()
    logits = shifted(model.rnn_logits(ids, lengths, embedded=embedded), offset)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    scale = eps * float(model.embedding.weight.detach().std())
    r = perturbation(embedded.grad, scale)
    # The embeddings are looked up again so the adversarial loss trains them too (r itself is a constant).
    adv_logits = model.rnn_logits(ids, lengths, embedded=model.embedding(ids) + r)
    adv_loss = F.cross_entropy(shifted(adv_logits, offset), y)
    adv_loss.backward()
    return logits.detach(), loss.detach(), adv_loss.detach()
