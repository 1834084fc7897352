"""Determinism of the CPU ops: the same inputs give bit-identical outputs and gradients
across calls, thread counts, the unit blocks' assignment to workers (the Balancer),
reused scratch memory and concurrent callers.
"""
import itertools
import platform

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CELLS, make_modules, outputs_and_grads


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


@pytest.mark.parametrize("loop", ["fused", "gemm"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 16, 33, 64])
@pytest.mark.parametrize("cell", CELLS)
def test_bit_identical_across_thread_counts(cell, N, dt, loop, monkeypatch):
    """The fused CPU loops split units across workers but sum every output and gradient
    in a fixed order: one thread and two give the same bits (H=256: blocks to share).
    The GEMM loop too: its weight gradients sum chunks of rows in double, each chunk one
    oneDNN GEMM (weight_grad.h): 128-row chunks up to 1024 rows (N=33: 990 rows, where
    MKL's one GEMM split K across threads), 1024-row chunks above (N=64: 1920 rows).
    The GEMM loop's per-step products are oneDNN's own sums: this holds on the CPUs CI
    runs on, not everywhere (the 16-core Xeon with AMX of a GPU lease, torch 2.11, split
    K of the LSTM's dG W_hh at N=16 and 33; README, determinism)."""
    if loop == "gemm":
        monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    _, m = make_modules(cell, 40, 256, 1, bidirectional=True)
    m = m.to(dt)
    _assert_same_bits_on_1_and_2_threads(cell, m, torch.randn(30, N, 40, dtype=dt))


def _assert_same_bits_on_1_and_2_threads(cell, m, x):
    x = x.requires_grad_()
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(outputs_and_grads(cell, m, x))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("H", [129, 140, 192])
@pytest.mark.parametrize("cell", CELLS)
def test_small_layers_bit_identical_across_thread_counts(cell, H):
    """From 48K multiply-adds a step (kWorkerStepMacs, workers.h) a fused loop takes a
    second worker: at N=1, H=129 and H=140 (9 unit blocks split unevenly, the last one
    holding 1 or 12 units) run on two workers forward and backward (their forwards took
    one worker before 4782edb), and must give one worker's bits. H=192: the backward's
    three 64-unit blocks split 1:2 and all three dx blocks on worker 0 (dx_split)."""
    _, m = make_modules(cell, H, H, 1)
    _assert_same_bits_on_1_and_2_threads(cell, m, torch.randn(50, 1, H))


@pytest.mark.parametrize("cell", CELLS)
def test_mkl_gemms_bit_identical_across_thread_counts(cell, monkeypatch):
    """The backward's large float32 GEMMs on MKL (mkl_gemm_wanted, common.h: the default on
    CPUs without AVX-512, forced here, panel_gemm off): dx = dG W_ih ([1088, 320], 1088
    rows) and the weight gradients' 1024-row chunks (results [960 or 1280, 320]). Outputs and every
    gradient the same bits on 1 and 2 threads; with MKL off (oneDNN), dx and dW_ih have
    other bits, so the MKL GEMMs did run."""
    _, m = make_modules(cell, 320, 320, 1)
    x = torch.randn(17, 64, 320).requires_grad_()
    threads = torch.get_num_threads()
    runs = []
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_GEMM", "0")  # dx on MKL, not panel_gemm
    try:
        for n, on in ((1, "1"), (2, "1"), (2, "0")):
            torch.set_num_threads(n)
            monkeypatch.setenv("FUSEDRNN_CPU_MKL", on)
            runs.append(outputs_and_grads(cell, m, x))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)
    dx = 3 if cell == "LSTM" else 2  # after y, h_n (and c_n); then weight_ih_l0
    assert not torch.equal(runs[1][dx], runs[2][dx])
    assert not torch.equal(runs[1][dx + 1], runs[2][dx + 1])


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
    at T=10, N=128, I=1024, H=256: a race, seen only by chance.) The forward's odd steps
    run a worker's blocks in reverse (zigzag, recurrence.h): FUSEDRNN_CPU_ZIGZAG=0, one
    order, must give the same bits too."""
    settings = [{"FUSEDRNN_CPU_BALANCE": mode, "FUSEDRNN_CPU_ZIGZAG": zigzag}
                for mode, zigzag in (("0", "1"), ("test", "1"), ("1", "1"), ("test", "0"))]
    _assert_same_bits_under(settings, cell, N, dt, monkeypatch)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("N", [1, 16, 130])
@pytest.mark.parametrize("cell", CELLS)
def test_loop_orders_give_same_bits(cell, N, dt, monkeypatch):
    """The forward runs a block's products as whole-K row tiles, or by groups of rows,
    chunk by chunk (whole_k_tiles, loop_choice.h; AMD CPUs take the first): the same sums
    in the same order, so outputs and every gradient must match bit for bit. I=600: the x
    panel (folded at N=130) has five float chunks and two bf16 ones; N=130: three groups
    of rows and a short last tile."""
    settings = [{"FUSEDRNN_CPU_TILE_OUTER": v} for v in ("0", "1")]
    _assert_same_bits_under(settings, cell, N, dt, monkeypatch, I=600)


@pytest.mark.parametrize("T,N,I", [(1, 1, 600), (1, 3, 70), (2, 1, 600), (12, 1, 24), (3, 40, 600)])
@pytest.mark.parametrize("cell", CELLS)
def test_weights_in_place_give_same_bits(cell, T, N, I, monkeypatch):
    """The fused backward reads a weight in place (strided rows, masked loads) where its
    loop reads it once (panels_in_place, loop_choice.h; W_hh at T=1, W_ih for one chunk
    of rows), else from packed column panels; with one chunk of rows it writes the weight
    gradients with non-temporal stores (stream_weight_grads). The same sums in the same
    order, so outputs and every gradient must match bit for bit under each choice forced.
    I=600 and 70, H=192: partial last blocks (masked lanes); T=3, N=40: 120 rows, one
    chunk, over several steps; T=12: W_hh read 12 times."""
    settings = [{"FUSEDRNN_CPU_PANELS": p, "FUSEDRNN_CPU_STREAM": s}
                for p, s in (("packed", "0"), ("inplace", "1"), ("inplace", "0"), ("", ""))]
    _assert_same_bits_under(settings, cell, N, torch.float32, monkeypatch, T=T, I=I)


@pytest.mark.parametrize("T,N,I", [(1, 1, 600), (1, 4, 70), (2, 2, 600), (4, 1, 31)])
@pytest.mark.parametrize("dt", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_give_same_bits_on_any_thread_count(cell, T, N, I, dt, monkeypatch):
    """The few-row products (few_rows.h: at most 4 rows, float64 and bfloat16) split their
    outputs between threads, never a sum: outputs and every gradient must match bit for
    bit on 1 and 2 threads, with the GEMM loop everywhere (FUSEDRNN_CPU_FUSED=0) and by
    default. I=600: past whole 32-value loads (24 left), H=192: 3 passes of rows split
    where the threads' shares end; packed rows give steps of fewer rows. T*N <= 4: every
    product has few rows (more rows take MKL's float64 GEMMs, whose bits move with the
    thread count where they split K: README, determinism)."""
    settings = [{"FUSEDRNN_CPU_FUSED": f} for f in ("0", "1")]
    _assert_same_bits_under(settings[:1], cell, N, dt, monkeypatch, T=T, I=I, threads=(1, 2))
    _assert_same_bits_under(settings[1:], cell, N, dt, monkeypatch, T=T, I=I, threads=(1, 2))


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX2",
                    reason="float32's few-row loops run on CPUs with AVX2 and no AVX-512")
@pytest.mark.parametrize("T,N,I", [(1, 1, 600), (1, 4, 70), (2, 2, 600), (4, 1, 31)])
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_fp32_same_bits_on_any_thread_count(cell, T, N, I, monkeypatch):
    """float32's few-row products (AVX2, few_rows_kernels_ymm.h's *_ymm) split outputs between
    threads, never a sum: outputs and every gradient the same bits on 1 and 2 threads,
    with the GEMM loop everywhere and by default (the row-dot loop's recurrences)."""
    for fused in ("0", "1"):
        _assert_same_bits_under([{"FUSEDRNN_CPU_FUSED": fused}], cell, N, torch.float32,
                                monkeypatch, T=T, I=I, threads=(1, 2))


def _assert_same_bits_under(settings, cell, N, dt, monkeypatch, T=12, I=24, H=192, threads=(2,)):
    """One bidirectional layer (by default I=24, H=192: 12 forward blocks, 3 backward
    blocks; T=12) on 2 threads (or each of `threads`), padded and packed (lengths 1..T):
    outputs and every gradient, once per dict of environment variables in `settings`, all
    bit-identical. Returns torch.nn's layer, the input and the last run's results."""
    theirs, m = make_modules(cell, I, H, 1, bidirectional=True)
    m = m.to(dt)
    torch.manual_seed(1)
    lengths = torch.randint(1, T + 1, (N,))
    lengths[0] = T
    x = torch.randn(T, N, I, dtype=dt, requires_grad=True)
    saved_threads = torch.get_num_threads()
    runs = []
    try:
        for n_threads, env in itertools.product(threads, settings):
            torch.set_num_threads(n_threads)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
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
        torch.set_num_threads(saved_threads)
    for a, *others in zip(*runs, strict=True):
        for b in others:
            assert torch.equal(a, b)
    return theirs, x, runs[-1]


@pytest.mark.parametrize("T,I,H", [(20, 24, 192), (37, 300, 213), (64, 256, 256), (41, 5, 7)])
@pytest.mark.parametrize("cell", CELLS)
def test_overlap_gives_same_bits(cell, T, I, H, monkeypatch):
    """At batch 1 the float32 forward makes x W_ih^T in pieces that ride along the
    recurrent products of earlier steps (overlap.h), from T=20 (LSTM; GRU 14): outputs and
    every gradient must match the bits of the projection made ahead in blocks
    (FUSEDRNN_CPU_OVERLAP=0), with blocks moving between workers each step, on 1 and 2
    threads; T past whole groups of steps (37, 41), I other than H (its pieces cut
    elsewhere), a masked last block (H=213, 7), one block (H=7). And the output is
    torch.nn's within float32 tolerance."""
    settings = [{"FUSEDRNN_CPU_OVERLAP": ov, "FUSEDRNN_CPU_BALANCE": bal}
                for ov, bal in (("0", "0"), ("1", "0"), ("1", "test"), ("1", "1"))]
    theirs, x, res = _assert_same_bits_under(settings, cell, 1, torch.float32, monkeypatch,
                                             T=T, I=I, H=H, threads=(2, 1))
    with torch.no_grad():
        y_ref, _ = theirs(x)
    torch.testing.assert_close(res[0], y_ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("loop", ["fused", "rowdot"])
@pytest.mark.parametrize("N", [1, 130])
@pytest.mark.parametrize("cell", CELLS)
def test_bit_identical_when_workers_sleep(cell, N, loop, monkeypatch):
    """The fused loops' workers spin, then sleep, at the step barrier and at the
    backward's wait for a block's weight-gradient chunks (waits.h). With no spin at all
    (FUSEDRNN_CPU_SPIN_US=0) every wait sleeps and every store must still wake its
    waiter in time: outputs and every gradient match the spinning run's bits, with blocks
    moving between workers each step (N=130: every step closes a chunk) and packed rows.
    With FUSEDRNN_CPU_SHARED=1 (the default) such a run marks the cores as shared, and
    the calls after it run one worker (SharedCores, waits.h): the same bits again."""
    if loop == "rowdot":
        if platform.machine() not in ("x86_64", "AMD64") or N > 2:
            pytest.skip("the row-dot loop: x86-64, batches up to 2")
        monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
        monkeypatch.setenv("FUSEDRNN_CPU_ROWDOT", "1")
    monkeypatch.setenv("FUSEDRNN_CPU_BALANCE", "test")
    # Last, a run that sleeps nowhere: it clears the mark the others left.
    settings = [{"FUSEDRNN_CPU_SPIN_US": spin, "FUSEDRNN_CPU_SHARED": shared}
                for spin, shared in (("0", "1"), ("0", "0"), ("200", "0"))]
    _assert_same_bits_under(settings, cell, N, torch.float32, monkeypatch)


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


def _has_from_blob_deleter():
    # torch's stable shim has torch_from_blob (a deleter) from 2.11 on; 2.10 lacks it.
    return tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 11)


@pytest.mark.parametrize("cell", CELLS)
def test_workspace_from_block_cache(cell, monkeypatch):
    """The forward's saved workspace comes from the block cache and goes back to it when
    torch frees it (common.h, cached_empty): its storage is ours (not resizable) with the
    cache and plain without (FUSEDRNN_CPU_CACHE_OUTPUTS=0); a repeat forward faults in
    far fewer fresh pages than the workspace has; outputs and gradients are the bits of
    plain allocations. y and dx stay plain, resizable tensors, as torch.nn's."""
    import os
    import resource

    if not _has_from_blob_deleter():
        pytest.skip("torch < 2.11: the workspace is a plain allocation")
    if os.environ.get("FUSEDRNN_CPU_CACHE_MB"):
        pytest.skip("FUSEDRNN_CPU_CACHE_MB set: the cache may not hold the workspace")
    _, m = make_modules(cell, 64, 512, 1)
    torch.manual_seed(4)
    x = torch.randn(64, 64, 64, requires_grad=True)  # workspace 34 MB (GRU), 42 MB (LSTM)
    g = torch.randn(64, 64, 512)
    forward = getattr(torch.ops.fusedrnn, f"{cell.lower()}_forward")
    w = [p.detach() for p in m.parameters()]
    h0 = torch.zeros(64, 512)
    states = (h0, torch.zeros(64, 512)) if cell == "LSTM" else (h0,)

    def step():
        y, _ = m(x)
        return [y, *torch.autograd.grad(y, [x, *m.parameters()], g)]

    def workspace():
        if cell == "LSTM":
            return forward(x.detach(), *w, None, *states, None, False, True)[-1]
        return forward(x.detach(), *w, *states, None, False, True)[-1]

    runs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("FUSEDRNN_CPU_CACHE_OUTPUTS", mode)
        for _ in range(2):
            step()
        runs[mode] = step()
        assert workspace().untyped_storage().resizable() == (mode == "0")
        assert all(t.untyped_storage().resizable() for t in runs[mode][:2])  # y, dx
    assert all(torch.equal(a, b) for a, b in zip(runs["0"], runs["1"], strict=True))
    # A forward alone, after one to warm up: its workspace (8,192 or more 4 KB pages,
    # which glibc maps fresh every call at 32 MB and more) from the cache; the pages it
    # may fault in are y's (1/4 or 1/5 of the workspace's) and small temporaries'.
    ws_pages = workspace().numel() * 4 // 4096
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    workspace()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < ws_pages // 2, (faults, ws_pages)
