"""The op layer and the autograd Functions: opcheck, gradcheck, determinism, and the
module contract that is not numerics (state_dict, flatten_parameters).
"""
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import reference
from conftest import CELLS, check_close, make_modules

ops = torch.ops.fusedrnn
GATES = {"LSTM": 4, "GRU": 3}


def layer_inputs(cell, T, N, I, H, bias, dtype, requires_grad=False, noncontig=False, proj=0,
                 lengths=None):
    """One layer's inputs in torch.nn's layout, as a dict: x ([T,N,I], or packed [R,I] with
    batch_sizes when lengths are given), w_ih, w_hh, b_ih, b_hh, w_hr (LSTM), h0 (, c0)."""
    G, P = GATES[cell] * H, proj or H

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    a = {"batch_sizes": None}
    if lengths is not None:
        a["batch_sizes"] = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
        a["x"] = rand(sum(lengths), I)
    else:
        a["x"] = rand(T, N, 2 * I)[..., ::2] if noncontig else rand(T, N, I)
    # Weights of torch.nn's scale (1/sqrt(H)) keep the gates away from saturation.
    a["w_ih"], a["w_hh"] = rand(G, I, scale=H**-0.5), rand(G, P, scale=H**-0.5)
    a["b_ih"], a["b_hh"] = (rand(G), rand(G)) if bias else (None, None)
    batch = N if lengths is None else len(lengths)
    a["h0"] = rand(batch, P)
    if cell == "LSTM":
        a["w_hr"] = rand(P, H, scale=H**-0.5) if proj else None
        a["c0"] = rand(batch, H)
    return a


def forward_args(cell, a, reverse):
    if cell == "LSTM":
        keys = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "h0", "c0", "batch_sizes"]
    else:
        keys = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "batch_sizes"]
    return (*[a[k] for k in keys], reverse)


def op_samples(op, T, N, I, H, bias, reverse, noncontig, dtype, proj=0, lengths=None):
    """Sample arguments for one of the four ops; backward ops get a real forward's outputs."""
    cell = "LSTM" if op.startswith("lstm") else "GRU"
    a = layer_inputs(cell, T, N, I, H, bias, dtype, noncontig=noncontig, proj=proj,
                     lengths=lengths)
    fwd = getattr(ops, f"{cell.lower()}_forward")
    if op.endswith("forward"):
        return fwd, forward_args(cell, a, reverse)
    outs = fwd(*forward_args(cell, a, reverse))
    grads = [torch.randn_like(o) for o in outs[:-1]]  # y, h_n (, c_n); not the workspace
    y, ws = outs[0], outs[-1]
    bwd = getattr(ops, f"{cell.lower()}_backward")
    if cell == "LSTM":
        rest = [a[k] for k in ("x", "w_ih", "w_hh", "w_hr", "h0", "c0")]
    else:
        rest = [a[k] for k in ("x", "w_ih", "w_hh", "h0")]
    return bwd, (*grads, *rest, y, ws, a["batch_sizes"], reverse)


OP_NAMES = ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]
# (T, N, I, H, bias, reverse, noncontig): T=1, N=1 and H=7 each appear, bias and reverse
# in all four pairings.
OP_CONFIGS = [
    pytest.param((1, 1, 3, 7, True, False, False), id="T1-N1-bias"),
    pytest.param((1, 1, 3, 7, False, True, False), id="T1-N1-nobias-rev"),
    pytest.param((5, 3, 4, 7, True, True, True), id="T5-N3-bias-rev-noncontig"),
    pytest.param((5, 3, 4, 7, False, False, False), id="T5-N3-nobias"),
]


# float32 and float64 on every config; bfloat16 (whose workspace is float) on one.
OP_CASES = [
    pytest.param(*c.values, dt, id=f"{c.id}-{name}")
    for c in OP_CONFIGS
    for dt, name in [(torch.float32, "fp32"), (torch.float64, "fp64"), (torch.bfloat16, "bf16")]
    if dt != torch.bfloat16 or c.id == "T5-N3-bias-rev-noncontig"
]
# Packed input (lengths 5,3,3,1 -> batch_sizes 4,3,3,1,1) and LSTM projections.
EXTRA_CASES = [
    pytest.param(dict(lengths=[5, 3, 3, 1]), id="packed"),
    pytest.param(dict(lengths=[5, 3, 3, 1], proj=3), id="packed-proj"),
    pytest.param(dict(proj=3), id="proj"),
]


@pytest.mark.parametrize("config, dt", OP_CASES)
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck(op, config, dt):
    """Schema, fake (meta) kernel and AOT dispatch, on no-grad inputs: the ops carry no
    autograd kernel by design (autograd lives in LSTMFunction / GRUFunction)."""
    fn, args = op_samples(op, *config, dt)
    torch.library.opcheck(fn, args)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("extra", EXTRA_CASES)
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_packed_proj(op, extra, reverse):
    if "proj" in extra and op.startswith("gru"):
        pytest.skip("projections are LSTM only")
    fn, args = op_samples(op, 5, 3, 4, 7, True, reverse, False, torch.float32, **extra)
    torch.library.opcheck(fn, args)


FUNCTIONS = {"LSTM": fusedrnn.LSTMFunction, "GRU": fusedrnn.GRUFunction}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_function(cell, bias, reverse):
    a = layer_inputs(cell, 3, 2, 3, 4, bias, torch.float64, requires_grad=True)
    args = [v for k, v in a.items() if k not in ("batch_sizes", "w_hr")]
    fn = FUNCTIONS[cell]
    assert torch.autograd.gradcheck(lambda *t: fn.apply(*t, reverse), args)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("extra", EXTRA_CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_function_packed_proj(cell, extra, reverse):
    """Packed input starts the reverse direction at each sequence's own last step."""
    if "proj" in extra and cell == "GRU":
        pytest.skip("projections are LSTM only")
    a = layer_inputs(cell, 3, 2, 3, 4, True, torch.float64, requires_grad=True, **extra)
    assert torch.autograd.gradcheck(*function_of_tensors(cell, a, reverse))


def function_of_tensors(cell, a, reverse):
    """(f, tensors): the layer's autograd Function as a function of the given inputs'
    tensors (batch_sizes and absent ones held fixed), for gradcheck."""
    keys = [k for k, v in a.items() if v is not None and k != "batch_sizes"]

    def f(*tensors):
        b = dict(a, **dict(zip(keys, tensors)))
        if cell == "LSTM":
            return fusedrnn.LSTMFunction.apply(
                b["x"], b["w_ih"], b["w_hh"], b["b_ih"], b["b_hh"], b["h0"], b["c0"], reverse,
                b["w_hr"], b["batch_sizes"])
        return fusedrnn.GRUFunction.apply(
            b["x"], b["w_ih"], b["w_hh"], b["b_ih"], b["b_hh"], b["h0"], reverse, b["batch_sizes"])

    return f, [a[k] for k in keys]


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_module(cell):
    """The whole stack (2 layers, both directions, batch_first) by finite differences,
    through every parameter, the input and the initial states."""
    _, m = make_modules(
        cell, 3, 4, 2, bidirectional=True, batch_first=True, dtype=torch.float64
    )
    names = list(m._flat_weights_names)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    states = [
        torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
        for _ in range(2 if cell == "LSTM" else 1)
    ]
    params = [getattr(m, n).detach().clone().requires_grad_() for n in names]
    n_states = len(states)

    def f(x, *rest):
        hx, ws = rest[:n_states], rest[n_states:]
        hx = tuple(hx) if n_states == 2 else hx[0]
        y, fin = functional_call(m, dict(zip(names, ws, strict=True)), (x, hx))
        return (y, *fin) if n_states == 2 else (y, fin)

    assert torch.autograd.gradcheck(f, (x, *states, *params))


@pytest.mark.parametrize("cell", CELLS)
def test_deterministic(cell):
    """Same inputs twice: bit-identical outputs and gradients. 64 rows of 128 units are
    above the pointwise grain (2048 units a task), so the steps run on the thread pool."""
    _, m = make_modules(cell, 32, 128, 2, bidirectional=True)
    x = torch.randn(20, 64, 32, requires_grad=True)
    n_states = 2 if cell == "LSTM" else 1
    states = [torch.randn(4, 64, 128, requires_grad=True) for _ in range(n_states)]
    leaves = [x, *states, *m.parameters()]
    upstream = None
    runs = []
    for _ in range(2):
        y, fin = m(x, tuple(states) if cell == "LSTM" else states[0])
        outs = [y, *fin] if cell == "LSTM" else [y, fin]
        if upstream is None:
            upstream = [torch.randn_like(o) for o in outs]
        runs.append((outs, torch.autograd.grad(outs, leaves, upstream)))
    (o1, g1), (o2, g2) = runs
    for a, b in zip([*o1, *g1], [*o2, *g2], strict=True):
        assert torch.equal(a, b)



STATE_CONFIGS = [
    pytest.param(dict(num_layers=1), id="L1"),
    pytest.param(dict(num_layers=3, bidirectional=True), id="L3-bi"),
    pytest.param(dict(num_layers=2, bias=False, batch_first=True, dropout=0.2), id="L2-nobias"),
]


@pytest.mark.parametrize("kw", STATE_CONFIGS)
@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_matches_torch(cell, kw):
    """Names, shapes and seeded initial values equal torch.nn's; state_dicts load both ways
    under strict=True."""
    torch_cls, ours_cls = (getattr(nn, cell), getattr(fusedrnn, cell))
    torch.manual_seed(3)
    theirs = torch_cls(5, 7, **kw)
    torch.manual_seed(3)
    ours = ours_cls(5, 7, **kw)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours._flat_weights_names) == list(theirs._flat_weights_names)
    for name in sd_t:
        assert sd_o[name].shape == sd_t[name].shape, name
        assert torch.equal(sd_o[name], sd_t[name]), name
    other_t, other_o = torch_cls(5, 7, **kw), ours_cls(5, 7, **kw)
    other_t.load_state_dict(sd_o, strict=True)
    other_o.load_state_dict(sd_t, strict=True)
    for name in sd_t:
        assert torch.equal(other_t.state_dict()[name], sd_t[name]), name
        assert torch.equal(other_o.state_dict()[name], sd_t[name]), name


@pytest.mark.parametrize("cell", CELLS)
def test_subclasses_rnnbase_not_torch_cell(cell):
    """torch.compile refuses nn.LSTM / nn.GRU instances, subclasses included."""
    _, m = make_modules(cell, 5, 7)
    assert isinstance(m, nn.RNNBase)
    assert not isinstance(m, (nn.LSTM, nn.GRU))


@pytest.mark.parametrize("cell", CELLS)
def test_flatten_parameters_keeps_parameters(cell):
    _, m = make_modules(cell, 5, 7, 2, bidirectional=True)
    before = [(n, p, p.data_ptr()) for n, p in m.named_parameters()]
    m.flatten_parameters()
    after = list(m.named_parameters())
    assert [n for n, _ in after] == [n for n, _, _ in before]
    for (_, p0, ptr), (_, p1) in zip(before, after, strict=True):
        assert p1 is p0
        assert p1.data_ptr() == ptr
    x = torch.randn(4, 3, 5)
    m2 = make_modules(cell, 5, 7, 2, bidirectional=True)[1]
    assert torch.equal(m(x)[0], m2(x)[0])


@pytest.mark.parametrize("cell", CELLS)
def test_module_to_dtype_uses_new_parameters(cell):
    """.double() replaces the parameters; forward must read the new ones."""
    theirs, m = make_modules(cell, 5, 7, 2)
    theirs.double()
    m.double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    y_t, y_o = theirs(x)[0], m(x)[0]
    assert y_o.dtype == torch.float64
    for n in m._flat_weights_names:
        assert getattr(m, n).dtype == torch.float64, n
    h0 = torch.zeros(2, 3, 7, dtype=torch.float64)
    weights = [getattr(m, n) for n in m._flat_weights_names]
    if cell == "LSTM":
        y_r = reference.lstm_ref(x, h0, h0, weights, True, 2, False)[0]
    else:
        y_r = reference.gru_ref(x, h0, weights, True, 2, False)[0]
    check_close("output", y_o, y_t, y_r, torch.float64)


@pytest.mark.parametrize("op", OP_NAMES)
def test_op_called_directly_on_tensors_that_require_grad(op):
    """An exported program calls the ops directly on parameters; the results must equal a
    no-grad call (the ops have no autograd kernel, so outputs carry no graph)."""
    fn, args = op_samples(op, 4, 3, 5, 7, True, False, False, torch.float32)
    with_grad = [a.detach().requires_grad_() if isinstance(a, torch.Tensor)
                 and a.is_floating_point() else a for a in args]
    for a, b in zip(fn(*with_grad), fn(*args)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_without_save(cell, packed):
    """save=False (inference: no input requires grad) returns an empty workspace and the
    very same outputs as save=True."""
    a = layer_inputs(cell, 5, 3, 4, 7, True, torch.float32,
                     lengths=[5, 3, 3, 1] if packed else None)
    fwd = getattr(ops, f"{cell.lower()}_forward")
    for reverse in (False, True):
        full = fwd(*forward_args(cell, a, reverse))
        lean = fwd(*forward_args(cell, a, reverse), False)
        assert lean[-1].numel() == 0 and full[-1].numel() > 0
        for u, v in zip(full[:-1], lean[:-1], strict=True):
            assert torch.equal(u, v)
        torch.library.opcheck(fwd, (*forward_args(cell, a, reverse), False))


@pytest.mark.parametrize("cell", CELLS)
def test_function_saves_only_when_grad_is_needed(cell):
    a = layer_inputs(cell, 4, 2, 3, 5, True, torch.float32)
    fn = FUNCTIONS[cell]
    args = [v for k, v in a.items() if k not in ("batch_sizes", "w_hr")]
    assert fn.apply(*args, False)[-1].numel() == 0
    args[0] = args[0].clone().requires_grad_()
    assert fn.apply(*args, False)[-1].numel() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_layer_under_no_grad_saves_nothing(cell, monkeypatch):
    """Parameters require grad but grad mode is off: autograd still reports
    needs_input_grad=True, so the layer must itself call the op with save=False."""
    import fusedrnn.functional as functional

    name = f"{cell.lower()}_forward"
    real = getattr(ops, name)
    saves = []

    class Spy:
        def __getattr__(self, attr):
            if attr != name:
                return getattr(ops, attr)

            def call(*args):
                saves.append(args[-1])
                return real(*args)
            return call

    monkeypatch.setattr(functional, "ops", Spy())
    layer = getattr(fusedrnn, cell)(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        layer(x)
    assert saves == [False] * 4, saves
    layer(x)
    assert len(saves) == 4, "with grad enabled the layer goes through the autograd Function"


@pytest.mark.parametrize("loop", ["fused", "gemm"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 16, 33, 64])
@pytest.mark.parametrize("cell", CELLS)
def test_bit_identical_across_thread_counts(cell, N, dt, loop, monkeypatch):
    """The fused CPU loops split units across workers but sum every output and gradient
    in a fixed order: one thread and two give the same bits (H=256: blocks to share).
    The GEMM loop too: its weight gradients sum chunks of rows in double, each chunk one
    oneDNN GEMM (weight_grad.h): 128-row chunks up to 1024 rows (N=33: 990 rows, where
    MKL's one GEMM split K across threads), 1024-row chunks above (N=64: 1920 rows)."""
    if loop == "gemm":
        monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    _, m = make_modules(cell, 40, 256, 1, bidirectional=True)
    m = m.to(dt)
    x = torch.randn(30, N, 40, dtype=dt, requires_grad=True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y, fin = m(x)
            outs = [y, *(fin if cell == "LSTM" else [fin])]
            torch.manual_seed(0)
            grads = torch.autograd.grad(outs, [x, *m.parameters()],
                                        [torch.randn_like(o) for o in outs])
            runs.append([*outs, *grads])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 16, 64, 130])
@pytest.mark.parametrize("cell", CELLS)
def test_bit_identical_when_blocks_move(cell, N, dt, monkeypatch):
    """The fused CPU loops move unit blocks between workers from step to step (Balancer,
    workers.h). FUSEDRNN_CPU_BALANCE=test moves every boundary each step; the outputs and
    every gradient must match the even split's bits: folded x products of a block that
    changes hands (N=64, 130), consecutive weight-gradient chunks of a block added by two
    workers in order (N=130: every step closes a chunk), AMX and bf16 forwards, packed
    rows and reverse directions. H=192: 12 forward blocks, 3 backward blocks. (A mutation
    that skips the moved blocks' x products fails 4 of these; one that drops the wait
    ordering a block's chunks passes here and failed 1 of 18 comparisons of a stress run
    at T=10, N=128, I=1024, H=256: a race, seen only by chance.)"""
    _, m = make_modules(cell, 24, 192, 1, bidirectional=True)
    m = m.to(dt)
    torch.manual_seed(1)
    lengths = torch.randint(1, 13, (N,))
    lengths[0] = 12
    x = torch.randn(12, N, 24, dtype=dt, requires_grad=True)
    threads = torch.get_num_threads()
    runs = []
    try:
        torch.set_num_threads(2)
        for mode in ("0", "test", "1"):
            monkeypatch.setenv("FUSEDRNN_CPU_BALANCE", mode)
            res = []
            for packed in (False, True):
                inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
                y, fin = m(inp)
                outs = [y.data if packed else y, *(fin if cell == "LSTM" else [fin])]
                torch.manual_seed(0)
                grads = torch.autograd.grad(outs, [x, *m.parameters()],
                                            [torch.randn_like(o) for o in outs])
                res += [*outs, *grads]
            runs.append(res)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(*runs, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


@pytest.mark.parametrize("cell", CELLS)
def test_workspace_gets_no_gradient(cell):
    """Autograd must not fill a zero gradient for the non-differentiable workspace (it
    did, [R, 5H] floats on every backward: 210 MB at T=50, N=256, H=1024)."""
    seen = []
    base = getattr(fusedrnn, f"{cell}Function")

    class Spy(base):
        @staticmethod
        def backward(ctx, *grads):
            seen.append(grads[-1])
            return base.backward(ctx, *grads)

    a = layer_inputs(cell, 5, 3, 4, 6, True, torch.float32, requires_grad=True)
    args = [v for k, v in a.items() if k not in ("batch_sizes", "w_hr")]
    outs = Spy.apply(*args, False)
    outs[0].sum().backward()
    assert seen == [None]
    assert a["x"].grad is not None


@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
@pytest.mark.parametrize("cell", CELLS)
def test_grads_when_outputs_unused(cell, used):
    """A loss of one output only: the Functions supply the zero gradients of the others
    themselves (set_materialize_grads(False)); every gradient matches torch.nn's."""
    if used == "c_n" and cell == "GRU":
        pytest.skip("GRU has no cell state")
    theirs, ours = make_modules(cell, 4, 7, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    grads = []
    for m in (theirs, ours):
        xi = x.clone().requires_grad_()
        y, fin = m(xi)
        out = {"y": y, "h_n": fin[0] if cell == "LSTM" else fin,
               "c_n": fin[1] if cell == "LSTM" else None}[used]
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([xi.grad, *(p.grad for p in m.parameters())])
    for g_t, g_o in zip(*grads, strict=True):
        torch.testing.assert_close(g_o, g_t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loop", ["fused", "gemm"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_reused_scratch_gives_same_bits(cell, dt, loop, monkeypatch):
    """Scratch blocks of 4 MB and more go back to a cache that later calls draw from
    (block_cache.h), so a call may start on another's leftovers: three calls must give
    the same bits. T*N = 2048 rows of 4H = 1024 make dG 8 MB (float32)."""
    if loop == "gemm":
        monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    _, m = make_modules(cell, 64, 256, 1)
    m = m.to(dt)
    torch.manual_seed(1)
    x = torch.randn(32, 64, 64, dtype=dt, requires_grad=True)
    runs = []
    for _ in range(3):
        y, fin = m(x)
        outs = [y, *(fin if cell == "LSTM" else [fin])]
        torch.manual_seed(2)
        grads = torch.autograd.grad(outs, [x, *m.parameters()], [torch.randn_like(o) for o in outs])
        runs.append([*outs, *grads])
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_scratch_cache_shared_by_threads(cell, monkeypatch):
    """Two Python threads run GEMM-loop training steps at once, drawing 8 MB scratch
    blocks from the one process-wide cache: each gets the bits a lone run gets."""
    import threading

    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    _, m = make_modules(cell, 64, 256, 1)
    torch.manual_seed(3)
    xs = [torch.randn(32, 64, 64, requires_grad=True) for _ in range(2)]
    gs = [torch.randn(32, 64, 256) for _ in range(2)]

    def step(i):
        y, _ = m(xs[i])
        return [y, *torch.autograd.grad(y, [xs[i], *m.parameters()], gs[i])]

    want = [step(i) for i in range(2)]
    got, errors = [None, None], []

    def worker(i):
        try:
            for _ in range(3):
                got[i] = step(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        for a, b in zip(want[i], got[i], strict=True):
            assert torch.equal(a, b)
