"""Bad calls raise what torch.nn raises: the same exception type and the same message text.

Each row builds both modules with the same arguments and makes the same call; either
step may be the one that raises.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

I, H, L = 5, 7, 2  # input size, hidden size, layers (unidirectional)


def _state(cell, *shape, dtype=torch.float32):
    """hx for a cell: (h0, c0) for LSTM, h0 for GRU, random values."""
    if cell == "LSTM":
        return (torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype))
    return torch.randn(*shape, dtype=dtype)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _packed():
    return pack_padded_sequence(_x(5, 3, I), torch.tensor([5, 3, 2]))


def _packed_states(c, hb, cb):
    """Packed input (batch 3) with hx of batch hb and cx of batch cb (LSTM)."""
    return (_x(L, hb, H), _x(L, cb, H)) if c == "LSTM" else _x(L, hb, H)


# id: (cell or None for both, constructor kwargs, call(module, cell) or None for no call)
BAD_CALLS = {
    "input-size": (None, {}, lambda m, c: m(_x(4, 3, I + 1))),
    "input-size-unbatched": (None, {}, lambda m, c: m(_x(4, I + 2))),
    "input-4d": (None, {}, lambda m, c: m(_x(4, 3, I, 1))),
    "input-1d": (None, {}, lambda m, c: m(_x(I))),
    "input-empty-sequence": (None, {}, lambda m, c: m(_x(0, 3, I))),
    "input-int": (None, {}, lambda m, c: m(torch.ones(4, 3, I, dtype=torch.int64))),
    "input-dtype": (None, {}, lambda m, c: m(_x(4, 3, I, dtype=torch.float64))),
    "input-dtype-unbatched": (None, {}, lambda m, c: m(_x(4, I, dtype=torch.float64))),
    "hx-batch": (None, {}, lambda m, c: m(_x(4, 3, I), _state(c, L, 4, H))),
    "hx-hidden": (None, {}, lambda m, c: m(_x(4, 3, I), _state(c, L, 3, H + 1))),
    "hx-layers": (None, {}, lambda m, c: m(_x(4, 3, I), _state(c, L + 1, 3, H))),
    "hx-batch-first": (
        None, {"batch_first": True}, lambda m, c: m(_x(3, 4, I), _state(c, L, 4, H))
    ),
    "hx-bidirectional": (
        None, {"bidirectional": True}, lambda m, c: m(_x(4, 3, I), _state(c, L, 3, H))
    ),
    "hx-unbatched-shape": (None, {}, lambda m, c: m(_x(4, I), _state(c, L, H + 1))),
    "hx-rank-batched": (None, {}, lambda m, c: m(_x(4, 3, I), _state(c, L, H))),
    "hx-rank-unbatched": (None, {}, lambda m, c: m(_x(4, I), _state(c, L, 3, H))),
    "cx-shape": (
        "LSTM", {}, lambda m, c: m(_x(4, 3, I), (_x(L, 3, H), _x(L, 3, H + 1)))
    ),
    "cx-rank": ("LSTM", {}, lambda m, c: m(_x(4, 3, I), (_x(L, 3, H), _x(3, H)))),
    "hx-not-tuple": ("LSTM", {}, lambda m, c: m(_x(4, 3, I), _x(L, 3, H))),
    "packed-hx-batch-small": (None, {}, lambda m, c: m(_packed(), _packed_states(c, 2, 2))),
    "packed-hx-batch-large": (None, {}, lambda m, c: m(_packed(), _packed_states(c, 4, 4))),
    "packed-hx-batch-1": (None, {}, lambda m, c: m(_packed(), _packed_states(c, 1, 1))),
    "packed-cx-batch": ("LSTM", {}, lambda m, c: m(_packed(), _packed_states(c, 3, 2))),
    "packed-input-size": (None, {}, lambda m, c: m(
        pack_padded_sequence(_x(5, 3, I + 1), torch.tensor([5, 3, 2])))),
    "packed-dtype": (None, {}, lambda m, c: m(
        pack_padded_sequence(_x(5, 3, I, dtype=torch.float64), torch.tensor([5, 3, 2])))),
    # The meta device stands in for a second device on a machine without a GPU.
    "input-device": (None, {}, lambda m, c: m(_x(4, 3, I).to("meta"))),
    "hx-device": (None, {}, lambda m, c: m(
        _x(4, 3, I), tuple(s.to("meta") for s in _state("LSTM", L, 3, H))
        if c == "LSTM" else _state(c, L, 3, H).to("meta"))),
    "dropout-above-1": (None, {"dropout": 1.5}, None),
    "dropout-negative": (None, {"dropout": -0.1}, None),
    "dropout-bool": (None, {"dropout": True}, None),
    "dropout-string": (None, {"dropout": "a"}, None),
    "num-layers-0": (None, {"num_layers": 0}, None),
    "hidden-size-float": (None, {"hidden_size": 7.0}, None),
    "hidden-size-0": (None, {"hidden_size": 0}, None),
    "proj-size-negative": ("LSTM", {"proj_size": -1}, None),
    "proj-size-too-big": ("LSTM", {"proj_size": H}, None),
    "gru-proj-size": ("GRU", {"proj_size": 3}, None),
    "gru-proj-size-0": ("GRU", {"proj_size": 0}, None),
}

CASES = [
    pytest.param(cell, name, id=f"{cell}-{name}")
    for name, (only, _, _) in BAD_CALLS.items()
    for cell in ("LSTM", "GRU")
    if only in (None, cell)
]


def _outcome(cls, cell, kwargs, call):
    """'Type: message' of what building the module and making the call raised."""
    args = {"input_size": I, "hidden_size": H, "num_layers": L, **kwargs}
    torch.manual_seed(0)
    try:
        m = cls(**args)
        if call is not None:
            call(m, cell)
    except Exception as e:  # noqa: BLE001  (any type: the test compares it with torch.nn's)
        return f"{type(e).__name__}: {e}"
    return "no exception"


@pytest.mark.filterwarnings("ignore:dropout option adds dropout")
@pytest.mark.parametrize("cell, name", CASES)
def test_same_error_as_torch(cell, name):
    _, kwargs, call = BAD_CALLS[name]
    theirs = _outcome(getattr(nn, cell), cell, kwargs, call)
    ours = _outcome(getattr(fusedrnn, cell), cell, kwargs, call)
    assert theirs != "no exception"
    assert ours == theirs, f"fusedrnn raised {ours!r}, torch.nn raised {theirs!r}"
