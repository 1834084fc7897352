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


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_compile_packed_proj_matches_eager(enforce_sorted):
    """Packed input (batch_sizes stays a CPU tensor argument of the ops) with proj_size,
    2 layers, both directions: one graph, and the same outputs and gradients as eager."""
    _, m = make_modules("LSTM", 4, 6, 2, bidirectional=True, proj_size=3)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    lengths = torch.tensor([5, 3, 2]) if enforce_sorted else torch.tensor([3, 5, 2])
    x = torch.randn(5, 3, 4, requires_grad=True)
    results = []
    for module in (m, compiled):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        y, (h, c) = module(packed)
        loss = (y.data * torch.linspace(-1, 1, y.data.numel()).view_as(y.data)).sum()
        loss = loss + (h * h).sum() + c.sum()
        results.append([y.data, h, c, *torch.autograd.grad(loss, [x, *m.parameters()])])
    assert counter.frame_count == 1
    for a, b in zip(results[1], results[0]):
        e = rel_err(a, b)
        assert e <= COMPILE_RTOL, f"compiled vs eager rel err {e:.2e}"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_export_inference_module(cell):
    """torch.export of an eval-mode module: the ops appear as single nodes and the
    exported program computes what the module computes."""
    _, m = make_modules(cell, 4, 6, 2, bidirectional=True, batch_first=True)
    m.eval()
    x = torch.randn(3, 5, 4)
    program = torch.export.export(m, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"fusedrnn.{cell.lower()}_forward.default" in targets, targets
    y, _ = program.module()(x)
    assert torch.equal(y, m(x)[0])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_compile_training_dropout_no_bias(cell, monkeypatch):
    """Training mode with inter-layer dropout, bias=False, 3 layers: one graph, and with
    inductor drawing random numbers as eager does, the same outputs and gradients."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    _, m = make_modules(cell, 4, 6, 3, bias=False, dropout=0.3, batch_first=True)
    m.train()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    x = torch.randn(2, 5, 4, requires_grad=True)
    results = []
    for module in (m, compiled):
        torch.manual_seed(7)
        y, _ = module(x)
        results.append([y, *torch.autograd.grad((y * y).sum(), [x, *m.parameters()])])
    assert counter.frame_count == 1
    assert not torch.equal(results[0][0], m.eval()(x)[0])  # dropout did act
    for a, b in zip(results[1], results[0]):
        e = rel_err(a, b)
        assert e <= COMPILE_RTOL, f"compiled vs eager rel err {e:.2e}"
