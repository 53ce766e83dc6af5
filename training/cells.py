"""LSTM, GRU and vanilla RNN cells written out from their equations.

They load the weights of one direction of an `nn.LSTM` / `nn.GRU` / `nn.RNN` layer and reproduce its outputs; they
also return the gate activations, which is what makes them the reference for the service's gate diagnostics.

LSTM (torch gate order i, f, g, o):
    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)      input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)      forget gate
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)         candidate cell
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)      output gate
    c' = f * c + i * g;   h' = o * tanh(c')
GRU (torch gate order r, z, n):
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      reset gate
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)      update gate
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   candidate state
    h' = (1 - z) * n + z * h
RNN:
    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
"""

from __future__ import annotations

import torch
from torch import nn

GATE_NAMES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ()}


class _Cell(nn.Module):
    kind = ""
    chunks = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        k = self.chunks * hidden_size
        self.w_ih = nn.Parameter(torch.empty(k, input_size))
        self.w_hh = nn.Parameter(torch.empty(k, hidden_size))
        self.b_ih = nn.Parameter(torch.zeros(k))
        self.b_hh = nn.Parameter(torch.zeros(k))
        bound = hidden_size**-0.5
        for p in (self.w_ih, self.w_hh):
            nn.init.uniform_(p, -bound, bound)

    @classmethod
    def from_torch(cls, layer: nn.RNNBase, direction: int = 0) -> _Cell:
        """Copy the weights of one direction of a single-layer torch recurrent module."""
        suffix = "_l0_reverse" if direction else "_l0"
        cell = cls(layer.input_size, layer.hidden_size)
        with torch.no_grad():
            for mine, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                getattr(cell, mine).copy_(getattr(layer, theirs + suffix))
        return cell

    def run(self, x: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run over one sequence x [T, in]; returns hidden states [T, H] and gates [T, G, H] in position order."""
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        state = self.initial_state(x)
        hs, gates = [None] * x.shape[0], [None] * x.shape[0]
        for t in steps:
            state, g = self(x[t], state)
            hs[t] = state[0] if isinstance(state, tuple) else state
            gates[t] = g
        return torch.stack(hs), torch.stack(gates)

    def initial_state(self, x: torch.Tensor):
        return x.new_zeros(self.hidden_size)


class LSTMCell(_Cell):
    kind, chunks = "lstm", 4

    def initial_state(self, x):
        return (x.new_zeros(self.hidden_size), x.new_zeros(self.hidden_size))

    def forward(self, x, state):
        h, c = state
        a = x @ self.w_ih.T + self.b_ih + h @ self.w_hh.T + self.b_hh
        ai, af, ag, ao = a.chunk(4, -1)
        i, f, g, o = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag), torch.sigmoid(ao)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return (h, c), torch.stack([i, f, g, o], -2)


class GRUCell(_Cell):
    kind, chunks = "gru", 3

    def forward(self, x, h):
        xr, xz, xn = (x @ self.w_ih.T + self.b_ih).chunk(3, -1)
        hr, hz, hn = (h @ self.w_hh.T + self.b_hh).chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h, torch.stack([r, z, n], -2)


class RNNCell(_Cell):
    kind, chunks = "rnn", 1

    def forward(self, x, h):
        h = torch.tanh(x @ self.w_ih.T + self.b_ih + h @ self.w_hh.T + self.b_hh)
        return h, h.new_zeros(0, h.shape[-1])


CELLS = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}


def reference_layer(directions, kind: str, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run each direction module of a model layer (`RecurrentLayer.directions`: forward, then backward) through
    the reference cells on one unpadded sequence x [T, in]; returns per-direction states [T, H], gates [T, G, H]."""
    hs, gates = [], []
    for d, module in enumerate(directions):
        h, g = CELLS[kind].from_torch(module).run(x, reverse=bool(d))
        hs.append(h)
        gates.append(g)
    return hs, gates
