"""Systematic accuracy: medians over seeds, with no floor.

A single comparison at small sizes is rounding noise, which the rule's floor absorbs
(fusedrnn.testing.FLOOR). A systematic loss of accuracy (a float sum over T*N terms, a
sloppier exp) would hide under that floor at some shapes, so here the median error over
several seeds must stay within 2x torch.nn's median, output by output, gradient by
gradient, with nothing added.
"""
import statistics

import pytest
import torch

from conftest import compare_with_torch

SEEDS = range(8)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "shape,dtype",
    [
        (dict(T=100, N=64, I=16, H=7, num_layers=2, bidirectional=True), torch.float32),
        (dict(T=50, N=16, I=32, H=129), torch.float32),
        (dict(T=30, N=8, I=16, H=64), torch.bfloat16),
    ],
    ids=["fp32-T100-N64-H7-L2-bi", "fp32-T50-N16-H129", "bf16-T30-N8-H64"],
)
@pytest.mark.parametrize("cells16", ["1", "0"], ids=["vector-cells", "scalar-cells"])
def test_median_error_within_2x_torch(cell, shape, dtype, cells16, monkeypatch):
    """Both forms of the forward cells: the vector cells (16 units at a time on AVX-512,
    cells16; 8 on AVX2, cells8; the defaults there) and the scalar loops of other CPUs
    (FUSEDRNN_CPU_CELLS16=0, FUSEDRNN_CPU_CELLS8=0)."""
    monkeypatch.setenv("FUSEDRNN_CPU_CELLS16", cells16)
    monkeypatch.setenv("FUSEDRNN_CPU_CELLS8", cells16)
    runs = [compare_with_torch(cell, **shape, dtype=dtype, seed=s) for s in SEEDS]
    for name in runs[0]:
        ours = statistics.median(r[name][0] for r in runs)
        theirs = statistics.median(r[name][1] for r in runs)
        assert ours <= 2 * theirs, (
            f"{name}: median rel err {ours:.2e} > 2 x torch.nn's {theirs:.2e} over {len(runs)} seeds"
        )


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "shape",
    [dict(T=100, N=64, I=16, H=7), dict(T=50, N=16, I=32, H=129)],
    ids=["T100-N64-H7", "T50-N16-H129"],
)
def test_gemm_loop_weight_grads_median_error_within_2x_torch(cell, shape, monkeypatch):
    """The GEMM loop (FUSEDRNN_CPU_FUSED=0, the path of CPUs without AVX-512 and of steps
    too large for the fused loop) sums its weight gradients in chunks added in double
    (csrc/cpu/weight_grad.h): 6400 rows in 1024-row chunks, 800 rows in 128-row chunks
    (one MKL GEMM over the 800 rows erred 2.6x torch.nn's in GRU's dW_hh)."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    runs = [compare_with_torch(cell, **shape, dtype=torch.float32, seed=s) for s in SEEDS]
    for name in runs[0]:
        ours = statistics.median(r[name][0] for r in runs)
        theirs = statistics.median(r[name][1] for r in runs)
        assert ours <= 2 * theirs, (
            f"{name}: median rel err {ours:.2e} > 2 x torch.nn's {theirs:.2e} over {len(runs)} seeds"
        )


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("N", [3, 8], ids=["N3", "N8"])
@pytest.mark.parametrize("H", [7, 129])
def test_vector_cells_ran_and_agree_with_scalar(cell, N, H, monkeypatch):
    """On CPUs with AVX2 or AVX-512 the float32 forward cells are the vector cells (cells8
    or cells16): other bits than the scalar loops' (so they ran), and close to them, units
    past the last full vector (H=7, 129) included. On AVX2, N=3 takes the row-dot loop
    and N=8 the panels."""
    import fusedrnn

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no vector cells on this CPU")
    torch.manual_seed(H + N)
    m = getattr(fusedrnn, cell)(5, H)
    x = torch.randn(20, N, 5)
    outs = {}
    for v in ("1", "0"):
        monkeypatch.setenv("FUSEDRNN_CPU_CELLS16", v)
        monkeypatch.setenv("FUSEDRNN_CPU_CELLS8", v)
        with torch.no_grad():
            y, hn = m(x)
        outs[v] = torch.cat([y.flatten(), (hn[1] if cell == "LSTM" else hn).flatten()])
    torch.testing.assert_close(outs["1"], outs["0"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(outs["1"], outs["0"]), "vector and scalar cells gave the same bits"
