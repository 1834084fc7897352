"""torch.compile(fullgraph=True) traces the modules end to end (the ops' fake kernels give
the shapes, LSTMFunction / GRUFunction the backward) and computes what eager computes.

Each compile costs up to 10-15 s on two cores, so there are three.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from conftest import make_modules, rel_err

# The compiled graph calls the same ops on the same data; only the glue around them
# (transposes, cat, stack) may be fused differently, which moves no values.
COMPILE_RTOL = 1e-6


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "cell, unbatched",
    [("LSTM", False), ("GRU", False), ("LSTM", True)],
    ids=["LSTM-batched-hx", "GRU-batched-hx", "LSTM-unbatched-no-hx"],
)
def test_compile_fullgraph_matches_eager(cell, unbatched):
    """batch_first input [N,T,I] with random hx, or unbatched [T,I] with hx=None (the
    zero states are then built inside the compiled graph)."""
    _, m = make_modules(cell, 6, 9, 2, bidirectional=True, batch_first=True)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    n_states = 2 if cell == "LSTM" else 1
    if unbatched:
        x = torch.randn(5, 6, requires_grad=True)
        states, hx = [], None
    else:
        x = torch.randn(3, 5, 6, requires_grad=True)
        states = [torch.randn(4, 3, 9, requires_grad=True) for _ in range(n_states)]
        hx = tuple(states) if n_states == 2 else states[0]
    leaves = [x, *states, *m.parameters()]
    names = ["input", "h0", "c0"][: 1 + len(states)] + [n for n, _ in m.named_parameters()]

    def run(module):
        y, fin = module(x, hx)
        outs = [y, *fin] if n_states == 2 else [y, fin]
        return outs, torch.autograd.grad(outs, leaves, upstream)

    with torch.no_grad():
        y, fin = m(x, hx)
    upstream = [torch.randn_like(o) for o in ([y, *fin] if n_states == 2 else [y, fin])]
    eager_out, eager_grad = run(m)
    comp_out, comp_grad = run(compiled)
    assert counter.frame_count == 1, f"{counter.frame_count} frames compiled"

    out_names = ["output", "h_n", "c_n"][: 1 + n_states]
    pairs = list(zip(out_names, comp_out, eager_out, strict=True))
    pairs += list(zip([f"grad {n}" for n in names], comp_grad, eager_grad, strict=True))
    for name, a, b in pairs:
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        e = rel_err(a, b)
        assert e <= COMPILE_RTOL, f"{name}: rel err {e:.2e} > bound {COMPILE_RTOL:.2e}"
