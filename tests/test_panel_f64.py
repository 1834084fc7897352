"""The float64 step products on AVX2 panels (csrc/cpu/panel_f64.h): the GEMM loop's
h W_hh^T in the forward and dG W_hh in the backward, forced on with
FUSEDRNN_CPU_PANEL_F64=1 wherever the CPU has AVX2 and FMA (by default only on CPUs
without AVX-512). Past the few-row loops' rows (12 on AVX2, 4 on AVX-512), so N >= 13.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import (CELLS, assert_loop_bit_identical_and_not_gemm, compare_with_torch,
                      make_modules, outputs_and_grads)

pytestmark = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="the float64 panels need AVX2 and FMA")


@pytest.mark.parametrize("T,N,H,layers,bidirectional", [
    (17, 13, 129, 1, False),  # tiles of 6, 4 and 3 rows; 4H = 516: a half last panel
    (1, 64, 7, 1, False),     # T=1; 4H = 28, 3H = 21: panels of 4 or 5 columns past G
    (5, 40, 128, 2, True),
])
@pytest.mark.parametrize("cell", CELLS)
def test_f64_panels_match_torch(cell, T, N, H, layers, bidirectional, monkeypatch):
    """Every output and gradient (input, h0, c0, each weight and bias) within the
    tolerance rule against the float64 reference."""
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", "1")
    compare_with_torch(cell, T, N, 33, H, num_layers=layers, bidirectional=bidirectional,
                       dtype=torch.float64)


@pytest.mark.parametrize("H", [7, 129])
@pytest.mark.parametrize("cell", CELLS)
def test_f64_panels_bit_identical_across_thread_counts(cell, H, monkeypatch):
    """Split by panels, never by k: outputs and every gradient the same bits on 1 and 2
    threads; and not aten::mm's (the panels did run: their sums differ in order)."""
    _, m = make_modules(cell, 40, H, 1, bidirectional=True, dtype=torch.float64)
    x = torch.randn(30, 13, 40, dtype=torch.float64)
    assert_loop_bit_identical_and_not_gemm(cell, m, x, "FUSEDRNN_CPU_PANEL_F64", monkeypatch)


@pytest.mark.parametrize("cell", CELLS)
def test_f64_panels_packed(cell, monkeypatch):
    """A packed batch of 20 sequences (lengths 1..30): steps from 20 rows down to 1 mix
    panel products and the few-row loops' products. Output and gradients against
    torch.nn's, and against the products off (close, not equal: other sums)."""
    theirs, ours = make_modules(cell, 24, 65, 1, dtype=torch.float64)
    lengths = torch.randint(1, 31, (20,), generator=torch.Generator().manual_seed(3))
    lengths[0] = 30
    x = torch.randn(30, 20, 24, dtype=torch.float64)

    def run(m):
        xp = x.clone().requires_grad_()
        packed = pack_padded_sequence(xp, lengths, enforce_sorted=False)
        y, _ = m(packed)
        torch.manual_seed(1)
        grads = torch.autograd.grad(y.data, [xp, *m.parameters()], torch.randn_like(y.data))
        return [y.data, *grads]

    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", "1")
    on = run(ours)
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", "0")
    off = run(ours)
    for name, a, b, c in zip(["y", "dx", *(n for n, _ in ours.named_parameters())], on,
                             run(theirs), off, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX2",
                    reason="the float64 panels run by default only on CPUs without AVX-512")
@pytest.mark.parametrize("cell", CELLS)
def test_f64_panels_run_by_default(cell, monkeypatch):
    """On CPUs without AVX-512 the default takes the panels: the bits of
    FUSEDRNN_CPU_PANEL_F64=1, not of =0 (at K = H = 129 their sums differ in order; at 96
    aten::mm's had the panels' bits). (A default that never ran them would pass the tests
    that force them.)"""
    _, m = make_modules(cell, 40, 129, 1, dtype=torch.float64)
    x = torch.randn(30, 13, 40, dtype=torch.float64, requires_grad=True)
    runs = {}
    for on in ("1", "0", ""):
        monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", on)
        runs[on] = outputs_and_grads(cell, m, x)
    assert all(torch.equal(a, b) for a, b in zip(runs[""], runs["1"], strict=True))
    assert not torch.equal(runs[""][0], runs["0"][0])


@pytest.mark.parametrize("cell", CELLS)
def test_f64_panels_gradcheck(cell, monkeypatch):
    """gradcheck (float64, finite differences) through the panels: 13 rows, so every
    step's products take them; x, h0 (and c0) and every weight and bias."""
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", "1")
    _, m = make_modules(cell, 5, 7, 1, dtype=torch.float64)
    x = torch.randn(3, 13, 5, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(1, 13, 7, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if cell == "LSTM" else 1)]
    names = [n for n, _ in m.named_parameters()]

    def f(x, *args):
        hx = tuple(args[:len(states)]) if cell == "LSTM" else args[0]
        params = dict(zip(names, args[len(states):], strict=True))
        y, fin = torch.func.functional_call(m, params, (x, hx))
        return (y, *fin) if cell == "LSTM" else (y, fin)

    assert torch.autograd.gradcheck(f, (x, *states, *(p.detach().requires_grad_()
                                                      for p in m.parameters())))


def test_f64_panels_proj_size(monkeypatch):
    """LSTM with proj_size (W_hh [4H, P], h of P columns) through the panels, 2 layers,
    bidirectional, N=16: output, h_n, c_n and every gradient against torch.nn's."""
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_F64", "1")
    theirs, ours = make_modules("LSTM", 9, 21, 2, proj_size=11, bidirectional=True,
                                dtype=torch.float64)
    x = torch.randn(7, 16, 9, dtype=torch.float64, requires_grad=True)
    for name, a, b in zip(["y", "h_n", "c_n", "dx", *(n for n, _ in ours.named_parameters())],
                          outputs_and_grads("LSTM", ours, x), outputs_and_grads("LSTM", theirs, x),
                          strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
