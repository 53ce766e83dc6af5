"""The reference cells (training/cells.py) reproduce torch's LSTM / GRU / RNN, and their gates mean what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.cells import CELLS, GATE_NAMES, reference_layer
from training.models import RecurrentLayer, reverse_index

KINDS = ["lstm", "gru", "rnn"]
TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
IN, H, T = 5, 4, 9
ATOL = 1e-6


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 1.6 - 0.8)  # larger than torch's init: saturating gates too
    return module.eval()


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.2e} > {atol:.0e}"


@pytest.mark.parametrize("kind", KINDS)
def test_reference_cells_match_torch_bidirectional_module(kind):
    module = _randomize(TORCH[kind](IN, H, batch_first=True, bidirectional=True), seed=1)
    x = torch.randn(1, T, IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = module(x)[0][0]  # [T, 2H]
        for d in (0, 1):
            cell = CELLS[kind].from_torch(module, direction=d)
            assert cell.kind == kind
            hs, gates = cell.run(x[0], reverse=bool(d))
            _close(hs, out[:, d * H : (d + 1) * H])
            assert gates.shape == (T, len(GATE_NAMES[kind]), H)


@pytest.mark.parametrize("kind", KINDS)
def test_from_torch_copies_weights_not_references(kind):
    module = _randomize(TORCH[kind](IN, H), seed=3)
    cell = CELLS[kind].from_torch(module)
    with torch.no_grad():
        module.weight_ih_l0.add_(1.0)
    assert not torch.allclose(cell.w_ih, module.weight_ih_l0)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_layer_matches_model_layer_on_padded_batch(kind, bidirectional):
    torch.manual_seed(4)
    layer = _randomize(RecurrentLayer(kind, IN, H, bidirectional), seed=5)
    lengths = torch.tensor([T, 1, 5, T - 1])
    x = torch.randn(len(lengths), T, IN, generator=torch.Generator().manual_seed(6))
    mask = (torch.arange(T)[None, :] < lengths[:, None]).unsqueeze(-1)
    rev = reverse_index(lengths, T) if bidirectional else None
    with torch.no_grad():
        out = layer(x, mask, rev)
        assert out.shape == (len(lengths), T, H * (2 if bidirectional else 1))
        for b, n in enumerate(lengths.tolist()):
            hs, gates = reference_layer(layer.directions, kind, x[b, :n])
            assert len(hs) == len(gates) == len(layer.directions)
            for d, h in enumerate(hs):
                _close(h, out[b, :n, d * H : (d + 1) * H])
            assert (out[b, n:] == 0).all()


def _gates_from_equations(kind: str, module: nn.RNNBase, d: int, x: torch.Tensor, h: torch.Tensor):
    """Gates recomputed from torch's own weights and torch's hidden states (h [T, H] in position order)."""
    sfx = "_l0_reverse" if d else "_l0"
    w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
    b_ih, b_hh = getattr(module, "bias_ih" + sfx), getattr(module, "bias_hh" + sfx)
    zero = torch.zeros(1, H)
    prev = torch.cat([zero, h[:-1]]) if d == 0 else torch.cat([h[1:], zero])  # state before each step
    ax, ah = x @ w_ih.T + b_ih, prev @ w_hh.T + b_hh
    if kind == "lstm":
        i, f, g, o = (ax + ah).chunk(4, -1)
        return {"input": i.sigmoid(), "forget": f.sigmoid(), "cell": g.tanh(), "output": o.sigmoid()}, prev
    xr, xz, xn = ax.chunk(3, -1)
    hr, hz, hn = ah.chunk(3, -1)
    r = (xr + hr).sigmoid()
    return {"reset": r, "update": (xz + hz).sigmoid(), "new": (xn + r * hn).tanh()}, prev


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gates_follow_the_documented_equations(kind):
    """Each named gate equals its equation on torch's weights, and the states rebuilt from the gates are torch's."""
    module = _randomize(TORCH[kind](IN, H, batch_first=True, bidirectional=True), seed=7)
    x = torch.randn(T, IN, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = module(x[None])[0][0]
        for d in (0, 1):
            h = out[:, d * H : (d + 1) * H]
            _, gates = CELLS[kind].from_torch(module, direction=d).run(x, reverse=bool(d))
            expected, prev = _gates_from_equations(kind, module, d, x, h)
            named = {name: gates[:, k] for k, name in enumerate(GATE_NAMES[kind])}
            assert named.keys() == expected.keys()
            for name in named:
                _close(named[name], expected[name], atol=1e-5)
            if kind == "gru":  # h' = (1 - z) * n + z * h
                _close((1 - named["update"]) * named["new"] + named["update"] * prev, h, atol=1e-5)
            else:  # c' = f * c + i * g; h' = o * tanh(c')
                c = torch.zeros(H)
                steps = range(T) if d == 0 else range(T - 1, -1, -1)
                for t in steps:
                    c = named["forget"][t] * c + named["input"][t] * named["cell"][t]
                    _close(named["output"][t] * c.tanh(), h[t], atol=1e-5)


def test_rnn_has_no_gates():
    module = _randomize(nn.RNN(IN, H), seed=9)
    _, gates = CELLS["rnn"].from_torch(module).run(torch.randn(T, IN))
    assert gates.shape == (T, 0, H)
    assert GATE_NAMES["rnn"] == ()


def test_reverse_index_reverses_each_row_within_its_length():
    lengths = torch.tensor([5, 1, 3])
    idx = reverse_index(lengths, 5)
    assert idx.tolist() == [[4, 3, 2, 1, 0], [0, 1, 2, 3, 4], [2, 1, 0, 3, 4]]
    assert idx.gather(1, idx).tolist() == [list(range(5))] * 3  # an involution
