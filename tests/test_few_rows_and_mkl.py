"""fusedrnn against torch.nn on the CPU paths of few rows and of large backward GEMMs
(csrc/cpu/few_rows.h, few_rows_kernels*.h; mkl_gemm_wanted in common.h): products of at
most 4 rows with the weight read in place (AVX-512 for float64 and bfloat16, AVX2 for
float32 and float64 and bfloat16's x W^T on CPUs without AVX-512), and the backward's dx and weight-gradient
chunks on MKL or oneDNN. Each case asserts the tolerance rule on every output and gradient
(conftest.compare_with_torch)."""

import pytest
import torch

import fusedrnn

from conftest import CELLS, compare_with_torch, cpu_flags, outputs_and_grads
from test_equivalence import case


# Products of at most 4 rows (csrc/cpu/few_rows.h): T=1 and the GEMM loop's steps at
# N <= 4. I and H around the 32-value loads and 8-row passes: 7, 31, 33, 97, 129.
FEW_ROWS_CASES = [
    case(1, 1, 1024, 1024),
    case(1, 1, 7, 7),
    case(1, 4, 33, 129),
    case(2, 2, 31, 97, bidir=True),
    case(3, 3, 65, 40, L=2, hx=False),
    case(17, 1, 129, 33, bf=True, nc="step"),
]


def _avx2_no_avx512():
    flags = cpu_flags()
    return "avx512f" not in flags and "avx2" in flags and "fma" in flags


@pytest.mark.parametrize("fused", ["1", "0"], ids=["default", "gemm-loop"])
@pytest.mark.parametrize("dt", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", FEW_ROWS_CASES)
def test_matches_torch_few_rows(cell, kw, dt, fused, monkeypatch):
    """float64 and bfloat16 products of at most 4 rows with a weight read in place
    (few_rows.h): x W^T (the forward's input projection and, per step, h W_hh^T), dG W
    (the backward's dx and dh) and dG^T x (the weight gradients, non-temporal stores from
    1 MB), with the fused loop (where it runs) or the GEMM loop everywhere. AVX-512BW
    kernels, or on CPUs with AVX2 and no AVX-512 the ymm ones: float64, and bfloat16's x W^T
    (its backward there runs on float copies)."""
    if "avx512bw" not in cpu_flags() and not _avx2_no_avx512():
        pytest.skip("the few-row loops need AVX-512BW, or AVX2 without AVX-512")
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", fused)
    compare_with_torch(cell, **kw, dtype=dt, device="cpu")


@pytest.mark.parametrize("mkl", ["1", "0"], ids=["mkl", "onednn"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_mkl_gemms(cell, mkl, monkeypatch):
    """The backward's dx and weight-gradient chunks on MKL or on oneDNN
    (FUSEDRNN_CPU_MKL; mkl_gemm_wanted, common.h): 1088 rows, results of 256K values and
    more, within the tolerance rule either way, bidirectional."""
    monkeypatch.setenv("FUSEDRNN_CPU_MKL", mkl)
    compare_with_torch(cell, T=17, N=64, I=320, H=320, bidirectional=True)


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="float32's few-row loops are AVX2's, on CPUs without AVX-512")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", FEW_ROWS_CASES)
def test_matches_torch_few_rows_fp32_avx2(cell, kw):
    """float32 products of at most 4 rows in AVX2 (few_rows_kernels_ymm.h's *_ymm), on CPUs
    without AVX-512: x W^T, dG W (dx, and dh in the GEMM loop's steps) and dG^T x."""
    compare_with_torch(cell, **kw, dtype=torch.float32, device="cpu")


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="the ymm few-row loops run on CPUs with AVX2 and no AVX-512")
@pytest.mark.parametrize("dt", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_avx2_runs(cell, dt, monkeypatch):
    """The step's dx = dG W_ih (T=1, N=1: one row, summed over G = 3H or 4H) comes from the
    AVX2 loop, whose order of sums differs from the library GEMM's: with the loops off
    (FUSEDRNN_CPU_FEW_ROWS=0) dx has other bits; both within the tolerance rule."""
    torch.manual_seed(0)
    fmod = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(1024, 1024).to(dt)
    x = torch.randn(1, 1, 1024, dtype=dt)

    def dx():
        xi = x.clone().requires_grad_()
        y, _ = fmod(xi)
        (y * torch.linspace(-1, 1, 1024, dtype=dt)).sum().backward()
        return xi.grad

    on = dx()
    monkeypatch.setenv("FUSEDRNN_CPU_FEW_ROWS", "0")
    off = dx()
    assert not torch.equal(on, off)
    tol = dict(rtol=1e-4, atol=1e-5) if dt == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(on, off, **tol)


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="the ymm few-row loops run on CPUs with AVX2 and no AVX-512")
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_avx2_bf16_forward_runs(cell, monkeypatch):
    """bfloat16's x W_ih^T and h W_hh^T of up to 4 rows (T=1, N=4) come from the AVX2 dot
    loop on widened loads (Ymm<BFloat16>, few_rows_kernels_ymm.h), float sums rounded once.
    With the loops off (FUSEDRNN_CPU_FEW_ROWS=0, aten::mm) the sums run in another order:
    rounded to bfloat16, about one output in 10^4 differs, so the test draws up to 16
    inputs and needs one that differs; every draw within bfloat16's tolerance."""
    torch.manual_seed(0)
    fmod = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(1024, 1024).bfloat16()
    differs = False
    for _ in range(16):
        x = torch.randn(1, 4, 1024).bfloat16()
        h0 = torch.randn(1, 4, 1024).bfloat16()
        hx = (h0, torch.randn(1, 4, 1024).bfloat16()) if cell == "LSTM" else h0
        with torch.no_grad():
            monkeypatch.delenv("FUSEDRNN_CPU_FEW_ROWS", raising=False)
            on = fmod(x, hx)[0]
            monkeypatch.setenv("FUSEDRNN_CPU_FEW_ROWS", "0")
            off = fmod(x, hx)[0]
        torch.testing.assert_close(on.float(), off.float(), rtol=2e-2, atol=2e-2)
        differs = differs or not torch.equal(on, off)
    assert differs


# Weight gradients of 5-12 rows on the ymm loop (kFewRowsTnYmm, few_rows.h), and 13 rows
# past it; I and H off the 8-lane vectors.
TN_CASES = [
    case(5, 1, 1024, 1024),
    case(3, 4, 33, 129),
    case(2, 6, 7, 97, bidir=True),
    case(13, 1, 65, 40, hx=False),
    case(8, 1, 129, 33),
    case(2, 7, 31, 97),
]


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="the ymm weight-gradient loop takes 5-12 rows on CPUs with AVX2 "
                           "and no AVX-512")
@pytest.mark.parametrize("dt", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", TN_CASES)
def test_matches_torch_few_rows_tn_avx2(cell, kw, dt):
    """dW = dG^T x and dG^T h of 5-12 rows in the ymm loop (rows in ascending order), 13
    rows on the library GEMM; dx = dG W_ih of 5-8 rows (and the GEMM loop's per-step dh
    of 5-8 rows) in passes of up to 4 rows (kFewRowsInPasses), 12 and 14 on the library
    GEMM: every output and gradient within the tolerance rule. (No
    test of which loop ran: at 8 rows MKL's float32 sums came out with the same bits,
    one product and then an FMA a row in ascending order as here.)"""
    compare_with_torch(cell, **kw, dtype=dt, device="cpu")


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="dG W of 5-8 rows runs in passes of 4 rows on CPUs with AVX2 and "
                           "no AVX-512")
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_in_passes_runs(cell, monkeypatch):
    """At T=6, N=1 the backward's dx = dG W_ih (6 rows, summed over G = 3H or 4H) comes
    from the few-row loop in two passes by default: with FUSEDRNN_CPU_FEW_ROWS_PASSES=4
    (MKL past 4 rows) dx has other bits; both within float32's tolerance."""
    torch.manual_seed(0)
    fmod = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(512, 512)
    x = torch.randn(6, 1, 512)

    def dx():
        xi = x.clone().requires_grad_()
        y, _ = fmod(xi)
        (y * torch.linspace(-1, 1, 512)).sum().backward()
        return xi.grad

    on = dx()
    monkeypatch.setenv("FUSEDRNN_CPU_FEW_ROWS_PASSES", "4")
    off = dx()
    assert not torch.equal(on, off)
    torch.testing.assert_close(on, off, rtol=1e-4, atol=1e-5)


# (T, N, proj_size): products of 5-12 rows, where oneDNN's and MKL's float32 GEMMs on this
# class of CPU sum differently on 1 and 2 threads (at 5-7 and 9-11 rows): T*N rows in the
# input projection and dx, N rows in the step's products and W_hr's.
FEW_ROWS_THREAD_CASES = [(1, 9, 0), (3, 3, 0), (5, 2, 0), (1, 6, 16), (5, 5, 16), (30, 10, 16)]


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="float32's few-row loops run on CPUs with AVX2 and no AVX-512")
@pytest.mark.parametrize("H", [33, 129])
@pytest.mark.parametrize("T,N,proj", FEW_ROWS_THREAD_CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_bit_identical_across_thread_counts(cell, T, N, proj, H):
    """float32 products of up to 12 rows (kFewRowsInPasses: linear, few_rows_into and
    times_right in common.h) run on the few-row loops, split by outputs: every output and
    gradient has the same bits on 1 and 2 threads. Before, oneDNN's linear (the input
    projection) and MKL's mm (dx, W_hr's products) gave other bits on 2 threads: in 72 of
    176 cases of a sweep (T 1, 3, 5, 30; N 1-16; H 33, 129; with and without W_hr), and
    in 18 of these 18."""
    if proj and cell == "GRU":
        pytest.skip("proj_size is LSTM's")
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            kw = dict(proj_size=proj) if proj else {}
            m = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(24, H, **kw)
            x = torch.randn(T, N, 24, requires_grad=True)
            y, fin = m(x)
            outs = [y, *(fin if cell == "LSTM" else [fin])]
            torch.manual_seed(1)
            grads = torch.autograd.grad(outs, [x, *m.parameters()],
                                        [torch.randn_like(o) for o in outs])
            runs.append([*(o.detach() for o in outs), *grads])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


# The panel GEMMs (csrc/cpu/panel_gemm.h) around the recurrences of CPUs with AVX2 and no
# AVX-512: the input projection x W_ih^T, dx = dG W_ih and the weight gradients' chunks.
# Odd sizes: G = 4 * 129 (a 4-column last panel), K = I = 7 and 1100 (past oneDNN's
# 1024-deep blocks), 13 rows (one past the few-row loops), rows not a multiple of the
# 6-row tiles or of a row block; two layers (the second's K = 2H), bidirectional,
# batch_first.
PANEL_GEMM_CASES = [
    case(50, 1, 7, 129),
    case(13, 1, 1100, 33, bidir=True),
    case(1, 13, 65, 40, L=2, hx=False),
    case(7, 5, 129, 129, bf=True, nc="step"),
    case(200, 1, 256, 256),
]


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="the panel kernel runs on CPUs with AVX2 and FMA")
@pytest.mark.parametrize("panel", ["1", "0"], ids=["panel", "library"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", PANEL_GEMM_CASES)
def test_matches_torch_panel_gemms(cell, kw, panel, monkeypatch):
    """The float32 GEMMs around the loops on the panel kernel (panel_gemm.h) or on oneDNN
    and MKL (FUSEDRNN_CPU_PANEL_GEMM): within the tolerance rule either way, every output
    and gradient."""
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_GEMM", panel)
    compare_with_torch(cell, **kw)


@pytest.mark.skipif(not _avx2_no_avx512(),
                    reason="the panel kernel runs on CPUs with AVX2 and FMA")
@pytest.mark.parametrize("cell", CELLS)
def test_panel_gemms_run_and_bit_identical_across_thread_counts(cell, monkeypatch):
    """The panel GEMMs split by output columns, each output one sum over k in order:
    every output and gradient has the same bits on 1 and 2 threads. K past 1024 (I = 1100
    for x W_ih^T; G = 1600 or 1200 for dx = dG W_ih), where oneDNN's sums run in another
    order: with the panel GEMMs off, y and dx differ, so they did run."""
    torch.manual_seed(0)
    m = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(1100, 400)
    x = torch.randn(20, 1, 1100, requires_grad=True)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n, on in ((1, "1"), (2, "1"), (2, "0")):
            torch.set_num_threads(n)
            monkeypatch.setenv("FUSEDRNN_CPU_PANEL_GEMM", on)
            runs.append(outputs_and_grads(cell, m, x))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)
    dx = 3 if cell == "LSTM" else 2
    assert not torch.equal(runs[1][0], runs[2][0])
    assert not torch.equal(runs[1][dx], runs[2][dx])
