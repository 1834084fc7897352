"""Autocast: the layers run in the autocast dtype, as torch.nn's do; outside autocast a
dtype mismatch raises torch.nn's error (tests/test_errors.py)."""
import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import make_modules
from fusedrnn.testing import FLOOR, rel_err


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cpu_bf16_autocast_returns_bf16_and_matches_bf16_module(cell):
    """Under CPU autocast the float32 module computes what a bfloat16 copy of it computes,
    and gradients reach the float32 parameters in float32. (torch.nn.GRU's own autocast
    output is float32 at some shapes and its h_n float32; ours is bfloat16 throughout.)"""
    theirs, ours = make_modules(cell, 5, 8, 2, bidirectional=True)
    x = torch.randn(7, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, states = ours(x)
        try:
            y_nn, _ = theirs(x)
        except RuntimeError as e:
            # torch.nn.LSTM's bfloat16 path is oneDNN's, which has none on CPUs without
            # AVX-512 (a Zen 3: "could not create a primitive descriptor"); ours runs there.
            if cell != "LSTM" or "primitive descriptor" not in str(e):
                raise
            y_nn = None
    assert y.dtype == torch.bfloat16
    if y_nn is not None and cell == "LSTM":
        assert y_nn.dtype == torch.bfloat16
    for s in states if cell == "LSTM" else (states,):
        assert s.dtype == torch.bfloat16
    y16, _ = copy.deepcopy(ours).bfloat16()(x.bfloat16())
    assert torch.equal(y, y16)
    e_ours = rel_err(y, theirs.double()(x.double())[0])
    assert e_ours <= FLOOR[torch.bfloat16], f"rel err {e_ours:.2e} vs float64"
    y.float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32
    assert ours.weight_hh_l0.grad.abs().sum() > 0


def test_cpu_autocast_packed_and_proj():
    _, ours = make_modules("LSTM", 5, 8, 2, proj_size=3)
    packed = pack_padded_sequence(torch.randn(6, 3, 5), torch.tensor([6, 4, 2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = ours(packed)
    assert y.data.dtype == h.dtype == c.dtype == torch.bfloat16


def test_cpu_float16_autocast_runs():
    """torch.nn.LSTM fails here (oneDNN has no float16 LSTM on this CPU); we run in float16."""
    _, ours = make_modules("LSTM", 5, 8)
    x = torch.randn(4, 2, 5)
    with torch.autocast("cpu", dtype=torch.float16):
        y, _ = ours(x)
    assert y.dtype == torch.float16
    y32, _ = make_modules("LSTM", 5, 8)[1](x)
    assert rel_err(y, y32) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cuda_autocast_float16_like_cudnn(cell):
    theirs, ours = make_modules(cell, 5, 8, 2, device="cuda")
    x = torch.randn(7, 3, 5, device="cuda")
    with torch.autocast("cuda"):
        y, _ = ours(x)
        y_nn, _ = theirs(x)
    assert y.dtype == y_nn.dtype == torch.float16
