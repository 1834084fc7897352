"""The CUDA kernels (csrc/cuda/): what only a GPU can show. Skipped without one.

Padded equivalence with torch.nn (cuDNN) at every dtype runs in test_equivalence.py through
the `device` fixture; this module adds packed input and proj_size on CUDA, opcheck and
float64 gradcheck of the CUDA ops, CUDA-graph capture, torch.compile(mode="reduce-overhead"),
a non-default stream, bit-identical repeats, TF32 flag handling and memory stability.
"""
import copy
import gc

import pytest
import torch
from conftest import CELLS, compare_with_torch, make_modules
from fusedrnn.testing import compare
from test_ops import (
    EXTRA_CASES,
    OP_CASES,
    OP_NAMES,
    function_of_tensors,
    layer_inputs,
    op_samples,
)
from test_packed_proj import LAYERS, PACKINGS, packed_case
from torch.autograd import gradgradcheck
from torch.nn.utils.rnn import PackedSequence

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def true_fp32():
    """torch.nn (cuDNN) and our GEMMs in true float32 unless a test says otherwise."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda(v):
    """Tensors, PackedSequences (batch_sizes stays on the CPU) and tuples of them to the GPU."""
    if v is None or isinstance(v, PackedSequence):
        return None if v is None else v.cuda()
    if isinstance(v, (list, tuple)):
        return type(v)(cuda(a) for a in v)
    return v.cuda()


def cuda_args(args):
    """Op arguments to the GPU: batch_sizes stays on the CPU, and a non-contiguous tensor
    stays non-contiguous (every other column of a wider CUDA tensor)."""
    out = []
    for a in args:
        if not isinstance(a, torch.Tensor) or (a.dtype == torch.int64 and a.dim() == 1):
            out.append(a)
        elif a.is_contiguous():
            out.append(a.cuda())
        else:
            wide = torch.zeros(*a.shape[:-1], 2 * a.shape[-1], dtype=a.dtype, device="cuda")
            wide[..., ::2] = a
            out.append(wide[..., ::2])
            assert not out[-1].is_contiguous()
    return tuple(out)


# --- the ops -------------------------------------------------------------------------

@pytest.mark.parametrize("config, dt", OP_CASES)
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_cuda(op, config, dt):
    fn, args = op_samples(op, *config, dt)
    torch.library.opcheck(fn, cuda_args(args))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("extra", EXTRA_CASES)
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_cuda_packed_proj(op, extra, reverse):
    if "proj" in extra and op.startswith("gru"):
        pytest.skip("projections are LSTM only")
    fn, args = op_samples(op, 5, 3, 4, 7, True, reverse, False, torch.float32, **extra)
    torch.library.opcheck(fn, cuda_args(args))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("H", [7, 64], ids=["H7-scalar", "H64-vector"])
@pytest.mark.parametrize("dt", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["fp64", "fp32", "bf16"])
def test_ops_match_cpu(op, H, dt, reverse):
    """The CUDA ops against the CPU ops (same cells.h math), every output: the scalar
    kernels (H=7) and the 16-byte vector kernels (H=64: 2, 4 or 8 units a thread), padded
    and packed. float64 agrees to rounding; float32 and bfloat16 differ by the GEMMs'
    summation order and the exp/tanh implementations."""
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dt]
    for kw in [dict(), dict(lengths=[6, 4, 4, 1])]:
        fn, args = op_samples(op, 6, 4, 5, H, True, reverse, False, dt, **kw)
        ref = fn(*args)
        got = fn(*cuda_args(args))
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            a, b = a.cpu().double(), b.double()
            err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
            assert err <= tol, f"output {i}: rel err {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("cell", CELLS)
def test_misaligned_bias_takes_scalar_path(cell):
    """Biases that are views at an odd offset cannot take the 16-byte path: the launcher
    must fall back to the scalar kernel and give the same numbers."""
    a = layer_inputs(cell, 5, 3, 8, 64, True, torch.float64)
    a = {k: (v if k == "batch_sizes" or v is None else v.cuda()) for k, v in a.items()}
    G = a["b_ih"].numel()
    odd = {}
    for k in ("b_ih", "b_hh"):
        buf = torch.zeros(G + 1, dtype=a[k].dtype, device="cuda")
        buf[1:] = a[k]
        odd[k] = buf[1:]
        assert odd[k].data_ptr() % 16 != 0
    fwd = getattr(torch.ops.fusedrnn, f"{cell.lower()}_forward")
    from test_ops import forward_args
    want = fwd(*forward_args(cell, a, False))
    got = fwd(*forward_args(cell, dict(a, **odd), False))
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("extra", [pytest.param({}, id="padded"), *EXTRA_CASES])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_cuda(cell, extra, reverse):
    if "proj" in extra and cell == "GRU":
        pytest.skip("projections are LSTM only")
    a = layer_inputs(cell, 3, 2, 3, 4, True, torch.float64, **extra)
    a = {k: (v if k == "batch_sizes" or v is None else v.cuda().requires_grad_())
         for k, v in a.items()}
    assert torch.autograd.gradcheck(*function_of_tensors(cell, a, reverse))


# --- modules against torch.nn (cuDNN) --------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_matches_torch_cuda(cell, packing, layers, dtype):
    if cell == "GRU" and layers[3]:
        pytest.skip("proj_size is LSTM only")
    theirs, ours, x, state, g = packed_case(cell, packing, layers, dtype)
    theirs, ours, x, state = theirs.cuda(), ours.cuda(), cuda(x), cuda(state)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_16bit_cuda(cell, dt):
    theirs, ours, x, state, g = packed_case(cell, PACKINGS[1].values[0], LAYERS[1].values[0], dt)
    theirs, ours, x, state = theirs.cuda(), ours.cuda(), cuda(x), cuda(state)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("proj", [0, 16])
def test_proj_cuda(proj, dt):
    """LSTM proj_size on CUDA, 2 layers both directions (GRU has no projections)."""
    if proj:
        theirs, ours = make_modules("LSTM", 24, 40, 2, bidirectional=True, proj_size=proj,
                                    dtype=dt, device="cuda")
    else:
        theirs, ours = make_modules("LSTM", 24, 40, 2, bidirectional=True, dtype=dt,
                                    device="cuda")
    x = torch.randn(9, 5, 24, device="cuda", dtype=dt)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("cell", CELLS)
def test_large_fastrnns_shape_cuda(cell):
    """The fastrnns benchmark shape, fp32: long accumulations, vector kernels."""
    compare_with_torch(cell, 100, 64, 512, 512, dtype=torch.float32, device="cuda")


# --- CUDA-specific behaviour -------------------------------------------------------------

def _train_step(m, x, states):
    y, fin = m(x, states)
    fin = fin if isinstance(fin, tuple) else (fin,)
    loss = y.square().sum() + sum(f.square().sum() for f in fin)
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [y, *fin, *grads]


def _inputs(cell, T=12, N=5, I=24, H=32, layers=2, bidirectional=True):
    _, m = make_modules(cell, I, H, layers, bidirectional=bidirectional, device="cuda")
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, I, device="cuda", requires_grad=True)
    s = [torch.randn(layers * D, N, H, device="cuda") for _ in range(2 if cell == "LSTM" else 1)]
    return m, x, (tuple(s) if cell == "LSTM" else s[0])


@pytest.mark.parametrize("cell", CELLS)
def test_bit_identical_repeats(cell):
    m, x, s = _inputs(cell)
    a, b = _train_step(m, x, s), _train_step(m, x, s)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_graph_capture_replay(cell):
    """Forward and backward captured in one graph: any launch off the capturing stream or
    any host synchronization inside the ops fails the capture. Replays equal eager."""
    m, x, s = _inputs(cell)
    static_x = x.detach().clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as the CUDA-graph docs ask
        for _ in range(3):
            _train_step(m, static_x, s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _train_step(m, static_x, s)
    for seed in range(3):
        torch.manual_seed(seed)
        new_x = torch.randn_like(x)
        static_x.data.copy_(new_x)
        graph.replay()
        eager = _train_step(m, new_x.requires_grad_(), s)
        for u, v in zip(static_out, eager, strict=True):
            assert torch.equal(u, v)


@pytest.mark.parametrize("cell", CELLS)
def test_compile_reduce_overhead(cell):
    m, x, s = _inputs(cell)
    compiled = torch.compile(m, mode="reduce-overhead", fullgraph=True)

    def step(fn, xi):
        for p in m.parameters():  # no grad accumulating into CUDA-graph-owned buffers
            p.grad = None
        if fn is compiled:
            torch.compiler.cudagraph_mark_step_begin()
        y, fin = fn(xi, s)
        fin = fin if isinstance(fin, tuple) else (fin,)
        (y.sum() + sum(f.sum() for f in fin)).backward()
        return [y.detach().clone(), *[f.detach().clone() for f in fin], xi.grad.clone()]

    for seed in range(3):  # the first calls record the graph, later ones replay it
        torch.manual_seed(seed)
        xi = torch.randn_like(x)
        got = step(compiled, xi.clone().requires_grad_())
        want = step(m, xi.clone().requires_grad_())
        for u, v in zip(got, want, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_non_default_stream(cell):
    """On a side stream whose input is written right before the call, behind a long sleep:
    kernels launched on any other stream would read the input before it is written."""
    m, x, s = _inputs(cell)
    want = _train_step(m, x, s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        xs = torch.zeros_like(x)
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time on this stream
        xs.copy_(x.detach())
        got = _train_step(m, xs.requires_grad_(), s)
    torch.cuda.current_stream().wait_stream(side)
    for u, v in zip(got, want, strict=True):
        assert torch.equal(u, v)


def test_other_device_index_guarded():
    """Tensors on cuda:1 while cuda:0 is current (only with two GPUs)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU")
    theirs, ours = make_modules("LSTM", 8, 16, device="cuda:1")
    x = torch.randn(5, 3, 8, device="cuda:1")
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)


def test_tf32_follows_torch_matmul_flag():
    """fp32 GEMMs are true fp32 by default and TF32 only when torch's matmul flag says so."""
    _, m = make_modules("GRU", 512, 512, device="cuda")
    ref_m = copy.deepcopy(m).double()
    x = torch.randn(20, 32, 512, device="cuda")
    with torch.no_grad():
        ref = ref_m(x.double())[0]
        exact = m(x)[0]
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = m(x)[0]
    err = lambda a: ((a.double() - ref).norm() / ref.norm()).item()
    assert err(exact) < 1e-5 < err(tf32), (err(exact), err(tf32))


@pytest.mark.parametrize("cell", CELLS)
def test_no_memory_growth(cell):
    m, x, s = _inputs(cell, T=5, N=3, I=8, H=16, layers=1, bidirectional=False)
    for _ in range(10):
        _train_step(m, x, s)
    # Earlier tests in this process may leave garbage in reference cycles (dynamo, double
    # backward graphs) that a GC pass during the loop would free: collect it on both sides.
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(1000):
        _train_step(m, x, s)
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


# --- double backward, torch.compile (inductor) and torch.export on the GPU --------------

@pytest.mark.parametrize("variant", ["padded", "proj", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradgradcheck_cuda(cell, variant):
    """create_graph=True on CUDA tensors: the backward recomputes with differentiable torch
    ops on the GPU; float64 gradgradcheck against finite differences."""
    from test_double_backward import _layer_inputs, layer_function

    proj = 2 if variant == "proj" else 0
    if cell == "GRU" and proj:
        pytest.skip("proj_size is LSTM only")
    ins, bs = _layer_inputs(cell, proj, variant == "packed")
    ins = [a.detach().cuda().requires_grad_() for a in ins]
    assert gradgradcheck(layer_function(cell, False, bs), ins)


@pytest.mark.parametrize("cell", CELLS)
def test_hessian_vector_product_matches_cpu(cell):
    """d/dW <grad_x L, v> of a 2-layer bidirectional module on the GPU equals the same
    module's on the CPU (cuDNN has no double backward to compare with), float64."""
    _, m = make_modules(cell, 3, 4, 2, bidirectional=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    results = []
    for dev in ("cpu", "cuda"):
        md = copy.deepcopy(m).to(dev)
        x = x0.to(dev).requires_grad_()
        y, _ = md(x)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        results.append([h.cpu() for h in torch.autograd.grad((gx * v.to(dev)).sum(), list(md.parameters()))])
    for (name, _), a, b in zip(m.named_parameters(), results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("cell", CELLS)
def test_compile_fullgraph_inductor_cuda(cell):
    """torch.compile(fullgraph=True), default mode: one frame, and the outputs and every
    gradient equal eager's (the same ops run; only the glue may be fused differently)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    m, x, s = _inputs(cell)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    got = _train_step(compiled, x, s)
    want = _train_step(m, x, s)
    assert counter.frame_count == 1
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("cell", CELLS)
def test_export_inference_cuda(cell):
    _, m = make_modules(cell, 4, 6, 2, bidirectional=True, batch_first=True, device="cuda")
    m.eval()
    x = torch.randn(3, 5, 4, device="cuda")
    program = torch.export.export(m, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"fusedrnn.{cell.lower()}_forward.default" in targets, targets
    assert torch.equal(program.module()(x)[0], m(x)[0])
