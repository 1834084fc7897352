"""Double backward: gradients taken with create_graph=True are differentiable.

backward with create_graph=True recomputes the layer with differentiable torch ops
(fusedrnn/composite.py) and differentiates them; gradgradcheck checks that against
finite differences, and a Hessian-vector product is compared with torch.nn's.
"""
import pytest
import torch
from torch.autograd import gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from conftest import make_modules

D64 = torch.float64


def _layer_inputs(cell, proj, packed):
    g = torch.Generator().manual_seed(0)
    H, I, N = 3, 2, 3
    P = proj or H
    G = (4 if cell == "LSTM" else 3) * H

    def r(*s):
        return torch.randn(*s, generator=g, dtype=D64).requires_grad_()

    bs = torch.tensor([3, 3, 1, 1]) if packed else None
    x = r(8, I) if packed else r(4, N, I)
    ins = [x, r(G, I), r(G, P), r(G), r(G), r(N, P)]
    if cell == "LSTM":
        ins += [r(N, H)] + ([r(P, H)] if proj else [])
    return ins, bs


def layer_function(cell, reverse, bs):
    """LSTMFunction / GRUFunction as a function of the tensors of _layer_inputs, returning
    its differentiable outputs (y, h_n, c_n / y, h_n)."""
    if cell == "LSTM":
        def f(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *w_hr):
            return fusedrnn.LSTMFunction.apply(
                x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, w_hr[0] if w_hr else None, bs)[:3]
        return f

    def g(x, w_ih, w_hh, b_ih, b_hh, h0):
        return fusedrnn.GRUFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, reverse, bs)[:2]
    return g


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("variant", ["padded", "proj", "packed", "packed-proj"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_gradgradcheck_function(cell, variant, reverse):
    proj = 2 if "proj" in variant else 0
    if cell == "GRU" and proj:
        pytest.skip("proj_size is LSTM only")
    ins, bs = _layer_inputs(cell, proj, "packed" in variant)
    assert gradgradcheck(layer_function(cell, reverse, bs), ins)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell,kw", [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {})])
def test_hessian_vector_product_matches_torch(cell, kw, packed):
    """d/dW <grad_x L, v> through a 2-layer bidirectional module equals torch.nn's."""
    theirs, ours = make_modules(cell, 3, 4, 2, bidirectional=True, dtype=D64, **kw)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, 3, generator=g, dtype=D64)
    v = torch.randn(5, 2, 3, generator=g, dtype=D64)
    results = []
    for m in (theirs, ours):
        x = x0.clone().requires_grad_()
        inp = pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x
        y, _ = m(inp)
        y = y.data if packed else y
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        hvp = torch.autograd.grad((gx * v).sum(), list(m.parameters()))
        results.append(hvp)
    for (name, _), a, b in zip(theirs.named_parameters(), results[1], results[0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")
