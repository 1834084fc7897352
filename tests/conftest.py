"""Fixtures (seed, device, dtype) and the suite's use of the one tolerance rule.

The rule lives in fusedrnn.testing, shared with the demo (python -m fusedrnn):

    err(fusedrnn vs float64 reference) <= 2 * err(torch.nn vs float64 reference) + FLOOR[dtype]

with err(a, b) = ||a - b|| / ||b|| in float64, for every output and every gradient. The
float64 reference is fusedrnn.reference on float64 copies of the very weights, inputs and
upstream gradients that torch.nn and fusedrnn see, differentiated by autograd.

FLOOR (in fusedrnn.testing) says how it was calibrated.
"""
import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.testing import bound, compare, rel_err

CELLS = {"LSTM": (nn.LSTM, fusedrnn.LSTM), "GRU": (nn.GRU, fusedrnn.GRU)}


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)
    return 0


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ]
)
def device(request):
    if request.param == "cuda":
        # The fp32 runs are compared with torch.nn in true fp32, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param


def check_close(name, ours, theirs, ref, dtype):
    """The tolerance rule. Returns (err_ours, err_torch, bound) for callers that log them."""
    __tracebackhide__ = True  # report the caller's frame, not three tensors' reprs
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != {theirs.dtype}"
    e_ours, e_torch = rel_err(ours, ref), rel_err(theirs, ref)
    b = bound(e_torch, dtype)
    assert e_ours <= b, (
        f"{name}: rel err {e_ours:.2e} > bound {b:.2e} (torch.nn rel err {e_torch:.2e})"
    )
    return e_ours, e_torch, b


def make_modules(cell, *args, dtype=torch.float32, device="cpu", seed=0, **kwargs):
    """torch.nn and fusedrnn modules of one cell holding the same parameter values."""
    torch_cls, ours_cls = CELLS[cell]
    torch.manual_seed(seed)
    theirs = torch_cls(*args, dtype=dtype, device=device, **kwargs)
    ours = ours_cls(*args, dtype=dtype, device=device, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _randn(gen, shape, dtype, device, noncontig=None, scale=1.0):
    """Random values drawn in float64 (the same numbers for every dtype), then cast.

    noncontig: None, "step" (every other column of a wider tensor), "narrow" (the first
    columns of a wider tensor) or "transpose" (dims 0 and 1 of a contiguous tensor swapped).
    """
    shape = list(shape)

    def draw(size):
        values = torch.randn(size, generator=gen, dtype=torch.float64) * scale
        return values.to(device=device, dtype=dtype)

    if noncontig == "transpose" and len(shape) >= 2:
        out = draw([shape[1], shape[0], *shape[2:]]).transpose(0, 1)
    elif noncontig in ("step", "narrow"):
        wide = shape[:-1] + [2 * shape[-1]]
        out = draw(wide)[..., ::2] if noncontig == "step" else draw(wide)[..., : shape[-1]]
    else:
        out = draw(shape)
    # Size-1 dims do not count for contiguity: [1,1,I] cut from [1,1,2I] is contiguous.
    if (noncontig == "step" and shape[-1] > 1) or (noncontig == "narrow" and shape[0] > 1):
        assert not out.is_contiguous()
    return out


def compare_with_torch(
    cell, T, N, I, H, num_layers=1, bidirectional=False, batch_first=False, bias=True,
    hx=True, noncontig=None, unbatched=False, scale=1.0, dtype=torch.float32, device="cpu",
    seed=0,
):
    """Builds torch.nn and fusedrnn modules with equal weights and random inputs, runs
    fusedrnn.testing.compare (torch.nn, fusedrnn and the float64 reference, the same
    random upstream gradients into output, h_n and c_n) and asserts the tolerance rule on
    every output and gradient (input, h0, c0, each parameter by name). Output shapes and
    dtypes must equal torch.nn's.

    hx=True passes random h0 (and c0), never zeros; hx=False passes None. scale multiplies
    the input and the states (large values saturate the gates).
    noncontig: see _randn; h0/c0 are then sliced too. Returns {name: (err_ours, err_torch)}.
    """
    gen = torch.Generator().manual_seed(seed)
    theirs, ours = make_modules(
        cell, I, H, num_layers, bias=bias, batch_first=batch_first,
        bidirectional=bidirectional, dtype=dtype, device=device, seed=seed,
    )
    D = 2 if bidirectional else 1
    n_states = 2 if cell == "LSTM" else 1
    if unbatched:
        x_shape, s_shape = [T, I], [num_layers * D, H]
    else:
        x_shape = [N, T, I] if batch_first else [T, N, I]
        s_shape = [num_layers * D, N, H]
    x = _randn(gen, x_shape, dtype, device, noncontig, scale)
    state = None
    if hx:
        s_nc = "step" if noncontig else None
        states = [_randn(gen, s_shape, dtype, device, s_nc, scale) for _ in range(n_states)]
        state = tuple(states) if n_states == 2 else states[0]

    # cuDNN refuses a non-contiguous hx ("rnn: hx is not contiguous"); fusedrnn takes it.
    theirs_state = state
    if state is not None and x.is_cuda:
        theirs_state = tuple(s.contiguous() for s in state) if n_states == 2 else state.contiguous()
    with torch.no_grad():
        for a, b in zip(_flat(ours(x, state)), _flat(theirs(x, theirs_state)), strict=True):
            assert a.shape == b.shape, f"shape {tuple(a.shape)} != torch.nn {tuple(b.shape)}"
            assert a.dtype == b.dtype, f"dtype {a.dtype} != torch.nn {b.dtype}"

    rows = compare(theirs, ours, x, state, generator=gen)
    expected = 1 + n_states + 1 + (n_states if hx else 0) + len(theirs._flat_weights_names)
    assert len(rows) == expected, [r[0] for r in rows]
    errors = {}
    for name, e_ours, e_torch, _, b in rows:
        assert e_ours <= b, (
            f"{name}: rel err {e_ours:.2e} > bound {b:.2e} (torch.nn rel err {e_torch:.2e})"
        )
        errors[name] = (e_ours, e_torch)
    return errors


def _flat(out):
    y, states = out
    return [y, *states] if isinstance(states, tuple) else [y, states]


def cpu_flags():
    """The CPU's flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def outputs_and_grads(cell, m, x):
    """The outputs of m(x) and the gradients of x and every parameter (seeded cotangents)."""
    y, fin = m(x)
    outs = [y, *(fin if cell == "LSTM" else [fin])]
    torch.manual_seed(0)
    grads = torch.autograd.grad(outs, [x, *m.parameters()], [torch.randn_like(o) for o in outs])
    return [*outs, *grads]


def assert_loop_bit_identical_and_not_gemm(cell, m, x, switch, monkeypatch, output_differs=True,
                                           dx_differs=True):
    """With the fused loop off and the loop behind `switch` forced on: outputs and every
    gradient the same bits on 1 and 2 threads; with it off (the GEMM loop), the output and
    dx (the backward's recurrence) differ, so the loop did run (each check only where the
    two loops' sums differ in order: output_differs, dx_differs)."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    x = x.requires_grad_()
    threads = torch.get_num_threads()
    runs = []
    try:
        for n, on in ((1, "1"), (2, "1"), (2, "0")):
            torch.set_num_threads(n)
            monkeypatch.setenv(switch, on)
            runs.append(outputs_and_grads(cell, m, x))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)
    if output_differs:
        assert not torch.equal(runs[1][0], runs[2][0])
    dx = 3 if cell == "LSTM" else 2  # after y, h_n (and c_n)
    if dx_differs:
        assert not torch.equal(runs[1][dx], runs[2][dx])
