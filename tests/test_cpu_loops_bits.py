"""Bit-identity of the CPU loops of CPUs without AVX-512: the row-dot loop at small
batches (rowdot_loop.h) and the AVX2 panel loops above them (avx2_panels.h, row_tiles.h).
Each runs on 1 and 2 threads with the same bits, and its reorderings (packed tile rows, row
blocks) keep them. Split from test_determinism.py.
"""
import platform

import pytest
import torch

from conftest import CELLS, assert_loop_bit_identical_and_not_gemm, make_modules, outputs_and_grads


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the row-dot loop is built for x86-64")
@pytest.mark.parametrize("T,H", [(30, 256), (30, 129), (5, 129)])
@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_rowdot_loop_bit_identical_across_thread_counts(cell, N, T, H, monkeypatch):
    """The small-batch forward and backward recurrences of CPUs without AVX-512
    (rowdot_loop.h), forced: each dot product sums its terms in one order whatever the
    number of workers, so 1 and 2 threads give the same bits, outputs and gradients; and
    they are not the GEMM loop's (the loops did run). The backward's dG W_hh from column
    panels from kPanelBackSteps (8) steps on, each worker packing its own (H=129: a
    partial last panel), and from W_hh in place below."""
    _, m = make_modules(cell, 40, H, 1, bidirectional=True)
    assert_loop_bit_identical_and_not_gemm(cell, m, torch.randn(T, N, 40), "FUSEDRNN_CPU_ROWDOT",
                                            monkeypatch)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the AVX2 panel loop needs AVX2 and FMA")
@pytest.mark.parametrize("fold", ["0", "1"], ids=["x-apart", "x-folded"])
@pytest.mark.parametrize("H", [129, 400])
@pytest.mark.parametrize("cell", CELLS)
def test_avx2_panel_loop_bit_identical_across_thread_counts(cell, H, fold, monkeypatch):
    """The AVX2 panel forward and backward recurrences (avx2_panels.h), forced, x's
    products apart or folded into the tiles: every product sums its terms in one order
    whatever the number of workers, so 1 and 2 threads give the same bits, outputs and
    every gradient; and they are not the GEMM loop's (the loops did run). With x apart the
    panels sum each output's k in order, as oneDNN's GEMMs do up to K = 1024 here, so the
    loops' bits agree there: the forward's output (K = H) and at H=129 dx too (K = 4H or
    3H = 516 or 387); at H=400 dx (K = 1600 or 1200) tells the backward's loops apart.
    Folded, the output and dx differ. H=129: 9 panels a gate, split 4/5, the last one unit
    wide; N=13: tiles of 6, 4 and 3 rows (row_tiles.h)."""
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_FOLD", fold)
    _, m = make_modules(cell, 40, H, 1, bidirectional=True)
    assert_loop_bit_identical_and_not_gemm(cell, m, torch.randn(30, 13, 40), "FUSEDRNN_CPU_PANELS",
                                            monkeypatch, output_differs=fold == "1",
                                            dx_differs=fold == "1" or H == 400)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX2",
                    reason="the AVX2 panel loop runs by default only on CPUs without AVX-512")
@pytest.mark.parametrize("cell", CELLS)
def test_avx2_panel_fold_runs_by_default(cell, monkeypatch):
    """From 32 rows (kPanelFoldBatch) the panel forward folds x into its tiles by default:
    the output at N=40 has the bits of FUSEDRNN_CPU_PANEL_FOLD=1, not of =0, and at N=31
    those of =0. (Guards the default: a fold that never ran would pass the tests that
    force it.)"""
    _, m = make_modules(cell, 48, 40, 1)
    for N, same in ((40, "1"), (31, "0")):
        x = torch.randn(12, N, 48)
        outs = {}
        for fold in ("", "0", "1"):
            monkeypatch.setenv("FUSEDRNN_CPU_PANEL_FOLD", fold)
            with torch.no_grad():
                outs[fold] = m(x)[0]
        assert torch.equal(outs[""], outs[same])
        assert not torch.equal(outs["0"], outs["1"])


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the AVX2 panel loop needs AVX2 and FMA")
@pytest.mark.parametrize("shape", [(5, 13, 40, 129, "0"), (5, 13, 40, 129, "1"),
                                   (2, 33, 1024, 1024, "")],
                         ids=["x-apart", "x-folded", "default-depth"])
@pytest.mark.parametrize("cell", CELLS)
def test_avx2_panel_packed_rows_same_bits(cell, shape, monkeypatch):
    """The panel forward's packed tile rows (FUSEDRNN_CPU_PANEL_PACK, panel_pack in
    panel_gemm.h: each worker copies the step's h and x rows by k, 6 rows a tile) feed the
    same sums in the same order as the rows in place: outputs and every gradient have the
    same bits packed and in place. N=13: tiles of 6, 4 and 3 rows; H=129: a one-unit last
    panel; x in its own products or folded; and at I=H=1024, N=33 the default (packed
    from a depth of 2048)."""
    T, N, I, H, fold = shape
    monkeypatch.setenv("FUSEDRNN_CPU_PANELS", "1")
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_FOLD", fold)
    _, m = make_modules(cell, I, H, 1, bidirectional=True)
    x = torch.randn(T, N, I).requires_grad_()
    runs = []
    for pack in ("1" if fold else "", "0"):
        monkeypatch.setenv("FUSEDRNN_CPU_PANEL_PACK", pack)
        runs.append(outputs_and_grads(cell, m, x))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the AVX2 panel loop needs AVX2 and FMA")
@pytest.mark.parametrize("fold", ["0", "1"], ids=["x-apart", "x-folded"])
@pytest.mark.parametrize("cell", CELLS)
def test_avx2_panel_row_blocks_same_bits(cell, fold, monkeypatch):
    """The panel forward runs a step's rows block by block (FUSEDRNN_CPU_PANEL_BLOCK,
    panel_block_rows in avx2_panels.h), each block's tiles over all the worker's panels: a
    row's sums are the same in any block, so blocks of 6, 7 and 12 rows, the default and
    the whole step give the same bits, outputs and every gradient; packed rows (cut for
    the whole step) ignore a block size. N=40: blocks with 4 or 5 rows left over, 7-row
    blocks cut 4 + 3; H=129: a one-unit last panel."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    monkeypatch.setenv("FUSEDRNN_CPU_PANELS", "1")
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_FOLD", fold)
    _, m = make_modules(cell, 40, 129, 1, bidirectional=True)
    x = torch.randn(6, 40, 40).requires_grad_()
    runs = []
    for rows, pack in (("0", "0"), ("6", "0"), ("7", "0"), ("12", "0"), ("", "0"), ("7", "1")):
        monkeypatch.setenv("FUSEDRNN_CPU_PANEL_BLOCK", rows)
        monkeypatch.setenv("FUSEDRNN_CPU_PANEL_PACK", pack)
        runs.append(outputs_and_grads(cell, m, x))
    for run in runs[1:]:
        for a, b in zip(run, runs[0], strict=True):
            assert torch.equal(a, b)
