"""PackedSequence input and LSTM proj_size, against torch.nn and the float64 reference.

Packed input: work follows batch_sizes, the reverse direction starts at each sequence's
own last step, h_n / c_n hold each sequence's state at its last valid step, hx is permuted
by sorted_indices and the states restored by unsorted_indices. The reference runs each
sequence alone over its own length, so it shares none of that bookkeeping.
"""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from conftest import make_modules
from fusedrnn.testing import compare

# (lengths, batch_first, enforce_sorted)
PACKINGS = [
    pytest.param(([6, 4, 4, 1], False, True), id="sorted"),
    pytest.param(([3, 7, 1, 7, 5], True, False), id="unsorted-bf"),
    pytest.param(([1, 1], False, False), id="T1"),
    pytest.param(([9], False, True), id="N1"),
]
# (num_layers, bidirectional, bias, proj_size, hx)
LAYERS = [
    pytest.param((1, False, True, 0, True), id="L1"),
    pytest.param((2, True, True, 0, False), id="L2-bi-nohx"),
    pytest.param((3, True, False, 0, True), id="L3-bi-nobias"),
    pytest.param((2, True, True, 3, True), id="L2-bi-proj"),
    pytest.param((1, False, True, 5, False), id="L1-proj-nohx"),
]


def packed_case(cell, packing, layers, dtype, I=5, H=7, seed=0):
    lengths, batch_first, enforce_sorted = packing
    num_layers, bidir, bias, proj, hx = layers
    kw = dict(proj_size=proj) if proj else {}
    theirs, ours = make_modules(cell, I, H, num_layers, bias=bias, batch_first=batch_first,
                                bidirectional=bidir, dtype=dtype, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed)
    T, N, D = max(lengths), len(lengths), 2 if bidir else 1
    padded = torch.randn(T, N, I, generator=g, dtype=torch.float64).to(dtype)
    if batch_first:
        padded = padded.transpose(0, 1)
    x = pack_padded_sequence(padded, torch.tensor(lengths), batch_first=batch_first,
                             enforce_sorted=enforce_sorted)
    state = None
    if hx:
        sizes = [proj or H, H] if cell == "LSTM" else [H]
        s = [torch.randn(num_layers * D, N, n, generator=g, dtype=torch.float64).to(dtype)
             for n in sizes]
        state = tuple(s) if cell == "LSTM" else s[0]
    return theirs, ours, x, state, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_matches_torch(cell, packing, layers, dtype):
    if cell == "GRU" and layers[3]:
        pytest.skip("proj_size is LSTM only")
    theirs, ours, x, state, g = packed_case(cell, packing, layers, dtype)
    y, _ = ours(x, state)
    y_ref, _ = theirs(x, state)
    assert isinstance(y, PackedSequence)
    assert torch.equal(y.batch_sizes, y_ref.batch_sizes)
    for a, b in [(y.sorted_indices, y_ref.sorted_indices), (y.unsorted_indices, y_ref.unsorted_indices)]:
        assert (a is None and b is None) or torch.equal(a, b)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("layers", LAYERS[:4])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_padded_proj_matches_torch(cell, layers):
    """proj_size on padded input, with batch_first and unbatched input."""
    num_layers, bidir, bias, proj, hx = layers
    if cell == "GRU" and proj:
        pytest.skip("proj_size is LSTM only")
    kw = dict(proj_size=proj) if proj else {}
    D, P = 2 if bidir else 1, proj or 7
    for batch_first, shape in [(True, (3, 6, 5)), (False, (6, 5))]:
        theirs, ours = make_modules(cell, 5, 7, num_layers, bias=bias, bidirectional=bidir,
                                    batch_first=batch_first, **kw)
        x = torch.randn(*shape)
        state_shape = (num_layers * D, 3) if len(shape) == 3 else (num_layers * D,)
        state = None
        if hx:
            s = [torch.randn(*state_shape, n) for n in ([P, 7] if cell == "LSTM" else [7])]
            state = tuple(s) if cell == "LSTM" else s[0]
        for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state):
            assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e}"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_bf16(cell):
    theirs, ours, x, state, g = packed_case(cell, PACKINGS[1].values[0], LAYERS[1].values[0],
                                            torch.bfloat16)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e}"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_equals_padded_per_sequence(cell):
    """A packed batch gives each sequence exactly what it gets run alone (same kernel):
    padded steps cost nothing and change nothing."""
    _, ours = make_modules(cell, 4, 6, 2, bidirectional=True, dtype=torch.float64)
    lengths = [5, 2, 4]
    padded = torch.randn(5, 3, 4, dtype=torch.float64)
    y, state = ours(pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False))
    y_pad, _ = pad_packed_sequence(y)
    states = state if cell == "LSTM" else (state,)
    for i, n in enumerate(lengths):
        y_i, s_i = ours(padded[:n, i : i + 1])
        s_i = s_i if cell == "LSTM" else (s_i,)
        torch.testing.assert_close(y_pad[:n, i : i + 1], y_i, rtol=1e-12, atol=1e-12)
        assert torch.all(y_pad[n:, i] == 0)
        for a, b in zip(states, s_i):
            torch.testing.assert_close(a[:, i : i + 1], b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_input_projection_in_blocks(cell, packed):
    """More rows than one block of the CPU's input projection (1024 rows): the blocks
    must tile the steps in both directions, padded and packed, forward and backward."""
    theirs, ours = make_modules(cell, 3, 6, 1, bidirectional=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 60, (50,), generator=g)
    T = int(lengths.max())
    padded = torch.randn(T, 50, 3, generator=g, dtype=torch.float64)
    x = pack_padded_sequence(padded, lengths, enforce_sorted=False) if packed else padded
    rows = int(lengths.sum()) if packed else T * 50
    assert rows > 1024
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, None, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_input_projection_block_grows(cell, dtype):
    """The input projection's blocks share one buffer, grown when a block has more rows
    than any before: here the reverse direction's first block is the three 1-row steps
    of the one long sequence, and the next is a single step of 1030 rows (more than
    kBlockRows, so a block of its own)."""
    lengths = [5] + [2] * 1029
    theirs, ours, x, state, g = packed_case(cell, (lengths, False, True), LAYERS[1].values[0],
                                            dtype, I=3, H=6)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize(
    "N,lengths_hi,H",
    [(50, 60, 20), (1, 400, 7), (200, 6, 33)],
    ids=["N50-several-steps-per-chunk", "N1-128-steps-per-chunk", "N200-one-step-per-chunk"],
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_backward_chunks(cell, packed, N, lengths_hi, H):
    """float32: the CPU backward adds the weight and bias gradients chunk by chunk (whole
    steps, at least 128 rows) from a ring of a few steps' gate gradients. Many chunks,
    ring wrap-around, batches that shrink and grow between chunks (packed, both
    directions), and rows whose first step ends mid-chunk (dh0 of reverse packed)."""
    theirs, ours = make_modules(cell, 3, H, 1, bidirectional=True, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, lengths_hi, (N,), generator=g)
    lengths[0] = lengths_hi  # the longest
    T = int(lengths.max())
    padded = torch.randn(T, N, 3, generator=g)
    x = pack_padded_sequence(padded, lengths, enforce_sorted=False) if packed else padded
    rows = int(lengths.sum()) if packed else T * N
    assert rows > 3 * 128
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, None, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-dot"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_folded_batch(cell, dtype, monkeypatch):
    """50 sequences of 1..11 steps: at least fold_batch() (16-40) rows, so the fused loop makes
    x's products inside the step, a step ahead of the recurrence, over a batch that
    shrinks from step to step (and grows, in reverse); bfloat16 on bf16 products (where
    the CPU has them: FUSEDRNN_CPU_BF16_DOT=1) folds too."""
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_DOT", "1")
    lengths = torch.randint(1, 12, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    theirs, ours, x, state, g = packed_case(cell, (lengths, True, False), LAYERS[1].values[0],
                                            dtype, I=20, H=40)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_packed_bf16_tiles_in_place(cell):
    """bfloat16, 40 sequences of 1..9 steps, H=64: on AMX CPUs whole tiles of 16 rows of
    h are read in place, from the previous step's y or, in reverse where sequences start,
    from h0 (a tile mixing the two is staged), over a batch that changes every step."""
    lengths = torch.randint(1, 10, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    theirs, ours, x, state, g = packed_case(cell, (lengths, False, False), LAYERS[2].values[0],
                                            torch.bfloat16, I=24, H=64)
    for name, e_ours, e_torch, _, bound in compare(theirs, ours, x, state, generator=g):
        assert e_ours <= bound, f"{name}: rel err {e_ours:.2e} > bound {bound:.2e} (torch.nn {e_torch:.2e})"
