"""fusedrnn.LSTM / GRU against torch.nn and the float64 reference (fusedrnn.testing's rule).

The shape cases are a covering set, not a Cartesian product: every value of every axis
(T, N, H, layers, directions, batch_first, bias, hx, non-contiguous input, unbatched input)
appears in several cases, and each case runs for both cells (and, for the default set,
float32 and float64). The larger sweep is marked slow.
"""
import itertools
import random

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

from conftest import check_close, compare_with_torch, cpu_flags, make_modules

CELLS = ["LSTM", "GRU"]


def case(T, N, I, H, L=1, bidir=False, bf=False, bias=True, hx=True, nc=None, unb=False,
         scale=1.0):
    """One shape case; the id lists what is not the default."""
    kw = dict(T=T, N=N, I=I, H=H, num_layers=L, bidirectional=bidir, batch_first=bf,
              bias=bias, hx=hx, noncontig=nc, unbatched=unb, scale=scale)
    parts = [f"T{T}", "unb" if unb else f"N{N}", f"I{I}", f"H{H}", f"L{L}"]
    parts += ["bi"] * bidir + ["bf"] * bf + ["nobias"] * (not bias) + ["nohx"] * (not hx)
    parts += [nc] if nc else []
    parts += [f"x{scale:g}"] if scale != 1.0 else []
    return pytest.param(kw, id="-".join(parts))


# T {1,2,17,100} x N {1,3,64} x H {1,7,128,129}, I != H throughout.
DEFAULT_CASES = [
    case(1, 1, 3, 1, hx=False),
    case(1, 3, 5, 7, L=2, bidir=True, bias=False),
    case(1, 64, 64, 128, bf=True, nc="step"),
    case(2, 1, 4, 129, bidir=True, bf=True, nc="step"),
    case(2, 64, 9, 7, L=3, hx=False, nc="narrow"),
    case(2, 3, 5, 1, L=2, bf=True, bias=False, unb=True),
    case(17, 3, 10, 128, bf=True),
    case(17, 64, 3, 1, L=2, bidir=True, bf=True, bias=False, nc="transpose"),
    case(17, 1, 6, 7, L=3, bidir=True),
    case(17, 3, 5, 7, L=2, bidir=True, unb=True),
    case(100, 3, 5, 7, bidir=True, nc="step"),
    case(100, 1, 2, 129, L=2, hx=False, bias=False),
    case(100, 64, 16, 129, L=2),
    case(100, 3, 7, 128, bf=True, hx=False, nc="narrow", unb=True),
    # Inputs and states of size ~30 saturate the gates: the float exp/tanh at the ends.
    case(17, 64, 8, 16, bidir=True, scale=30.0),
    case(2, 3, 5, 7, L=2, hx=True, scale=0.01),
]


def _slow_cases(n=120, seed=0):
    """A seeded sample of the full product, with each T, N and H value guaranteed."""
    axes = dict(
        T=[1, 2, 17, 100], N=[1, 3, 64], H=[1, 7, 128, 129], L=[1, 2, 3], bidir=[False, True],
        bf=[False, True], bias=[False, True], hx=[False, True],
        nc=[None, "step", "narrow", "transpose"], unb=[False, False, False, True],
    )
    rng = random.Random(seed)
    combos = [dict(zip(axes, v, strict=True)) for v in itertools.product(*axes.values())]
    picked = rng.sample(combos, n)
    for axis in ("T", "N", "H"):
        for v in axes[axis]:
            if not any(c[axis] == v for c in picked):
                picked.append(rng.choice([c for c in combos if c[axis] == v]))
    cases = {}
    for c in map(dict, picked):
        I = {1: 2, 7: 5, 128: 33, 129: 64}[c["H"]]
        p = case(c.pop("T"), c.pop("N"), I, c.pop("H"), **c)
        cases[p.id] = p
    return list(cases.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", DEFAULT_CASES)
def test_matches_torch(cell, kw, dtype, device):
    compare_with_torch(cell, **kw, dtype=dtype, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", _slow_cases())
def test_matches_torch_sweep(cell, kw, dtype, device):
    compare_with_torch(cell, **kw, dtype=dtype, device=device)


# 16-bit storage: torch.nn's CPU float16 GEMMs are slow, so these stay small.
HALF_CASES = [
    case(17, 3, 5, 7, L=2, bidir=True),
    case(2, 64, 9, 129, bf=True, nc="step"),
    case(17, 3, 6, 128, hx=False, unb=True),
    case(1, 1, 3, 1, bias=False),
    # Batches 12..31 run the fused CPU loop (16-bit storage); float math leaves x unfolded,
    # bf16 products fold it from batch 16 (fold_batch in csrc/cpu/loop_choice.h).
    case(9, 20, 6, 129, bidir=True),
]


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", HALF_CASES)
def test_matches_torch_16bit(cell, kw, dt, device):
    compare_with_torch(cell, **kw, dtype=dt, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "kw",
    [
        case(100, 3, 5, 7, L=2, bidir=True, bf=True),
        case(17, 64, 33, 128, nc="transpose", bf=True, bias=False),
        case(2, 1, 4, 129, L=3, hx=False),
    ],
)
def test_matches_torch_16bit_sweep(cell, kw, dt, device):
    compare_with_torch(cell, **kw, dtype=dt, device=device)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", [case(1, 1, 1024, 1024), case(2, 3, 1000, 1030, hx=False)])
def test_matches_torch_bf16_few_rows_large_weights(cell, kw):
    """bfloat16 with at most 16 rows of weights of 4M values or more (G x (I + H)) takes
    the GEMM loop's backward instead of the float fused one (fused_backward_16bit,
    loop_choice.h): the `step` shape's case."""
    compare_with_torch(cell, **kw, dtype=torch.bfloat16, device="cpu")


@pytest.mark.parametrize("upcast", ["0", "1"], ids=["16bit", "float-copies"])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", HALF_CASES + [case(1, 1, 1024, 1024)])
def test_matches_torch_16bit_upcast(cell, kw, dt, upcast, monkeypatch):
    """16-bit storage on float32 copies (FUSEDRNN_CPU_UPCAST=1; upcast_16bit in
    csrc/cpu/common.h, the default on CPUs with AVX2 and no AVX-512) and in 16-bit (=0, the
    default elsewhere), each on any CPU: every output and gradient within the tolerance
    rule; packed, bidirectional, two-layer and unbatched cases."""
    monkeypatch.setenv("FUSEDRNN_CPU_UPCAST", upcast)
    compare_with_torch(cell, **kw, dtype=dt, device="cpu")


@pytest.mark.skipif("avx512f" in cpu_flags() or "avx2" not in cpu_flags(),
                    reason="16-bit storage runs on float32 copies by default only on CPUs "
                           "with AVX2 and no AVX-512")
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
def test_16bit_upcast_runs_by_default(cell, dt, monkeypatch):
    """Without AVX-512 the default takes the float32 copies from 8 rows (T x N) on
    (kUpcastForwardRows): at T=9, N=5 the output and dx have the bits of
    FUSEDRNN_CPU_UPCAST=1, and =0 gives other bits (its h is rounded to 16 bits each
    step); at T=3, N=2 the forward's output has the bits of =0. Guards the default: copies
    that never ran would pass the forced tests."""
    torch.manual_seed(0)
    m = (fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)(24, 40).to(dt)
    for T, N, same in ((9, 5, "1"), (3, 2, "0")):
        x0 = torch.randn(T, N, 24).to(dt)
        outs = {}
        for upcast in ("", "0", "1"):
            monkeypatch.setenv("FUSEDRNN_CPU_UPCAST", upcast)
            x = x0.clone().requires_grad_()
            y, _ = m(x)
            y.float().square().sum().backward()
            outs[upcast] = (y.detach(), x.grad)
        checked = outs[""] if same == "1" else outs[""][:1]  # (y, dx), or y
        for a, b in zip(checked, outs[same]):
            assert torch.equal(a, b)
        assert not torch.equal(outs["0"][0], outs["1"][0])


def _run(module, x, hx, grad_seed=1):
    """Forward, then backward of a fixed random projection; returns output and grads."""
    y, _ = module(x, hx)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y)
    params = [getattr(module, n) for n in module._flat_weights_names]
    grads = torch.autograd.grad(y, [x, *params], g)
    return y, grads


def _state(cell, shape):
    return (torch.randn(shape), torch.randn(shape)) if cell == "LSTM" else torch.randn(shape)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_eval_is_no_dropout(cell):
    _, with_p = make_modules(cell, 5, 7, 3, dropout=0.5, bidirectional=True)
    _, without = make_modules(cell, 5, 7, 3, dropout=0.0, bidirectional=True)
    with_p.eval()
    without.eval()
    x = torch.randn(6, 3, 5, requires_grad=True)
    hx = _state(cell, (6, 3, 7))
    y1, g1 = _run(with_p, x, hx)
    y2, g2 = _run(without, x, hx)
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_train(cell):
    """Train mode: dropout changes the output, and the same seed gives the same output."""
    _, m = make_modules(cell, 5, 7, 2, dropout=0.5)
    x = torch.randn(6, 3, 5, requires_grad=True)
    hx = _state(cell, (2, 3, 7))
    m.eval()
    y_eval, _ = _run(m, x, hx)
    m.train()
    torch.manual_seed(123)
    y1, g1 = _run(m, x, hx)
    torch.manual_seed(123)
    y2, g2 = _run(m, x, hx)
    torch.manual_seed(124)
    y3, _ = _run(m, x, hx)
    assert not torch.equal(y1, y_eval)
    assert not torch.equal(y1, y3)
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_single_layer_train_is_eval(cell):
    """torch.nn drops out between layers only: with one layer, train mode equals eval."""
    with pytest.warns(UserWarning, match="dropout"):
        _, m = make_modules(cell, 5, 7, 1, dropout=0.5)
    x = torch.randn(6, 3, 5, requires_grad=True)
    hx = _state(cell, (1, 3, 7))
    y_train, g_train = _run(m.train(), x, hx)
    y_eval, g_eval = _run(m.eval(), x, hx)
    assert torch.equal(y_train, y_eval)
    for a, b in zip(g_train, g_eval, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_train_matches_torch(cell):
    """F.dropout draws the same mask as torch.nn's inter-layer dropout for one seed, so the
    tolerance rule holds in train mode too, with torch.nn in float64 as the reference."""
    theirs, ours = make_modules(cell, 5, 7, 3, dropout=0.3, bidirectional=True)
    ref = make_modules(cell, 5, 7, 3, dropout=0.3, bidirectional=True)[0].double()
    x = torch.randn(9, 4, 5, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    results = []
    for m, inp in [(ours, x), (theirs, x), (ref, x64)]:
        torch.manual_seed(7)
        results.append(_run(m.train(), inp, None))
    names = ["output", "grad input", *theirs._flat_weights_names]
    (y_o, g_o), (y_t, g_t), (y_r, g_r) = results
    for name, a, b, r in zip(names, [y_o, *g_o], [y_t, *g_t], [y_r, *g_r], strict=True):
        check_close(name, a, b, r, torch.float32)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", DEFAULT_CASES)
def test_matches_torch_gemm_loop(cell, kw, monkeypatch):
    """float32 on the CPU without the fused AVX-512 loop (FUSEDRNN_CPU_FUSED=0): the
    per-step GEMM loop that CPUs without AVX-512 run."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    compare_with_torch(cell, **kw, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "kw",
    [
        dict(T=37, N=29, I=5, H=7),  # 1073 rows: a 1024-row chunk and 49, none a multiple of 16
        dict(T=40, N=33, I=19, H=129, num_layers=2, bidirectional=True, batch_first=True),
    ],
    ids=["R1073-I5-H7", "R1320-I19-H129-L2-bi-bf"],
)
def test_matches_torch_gemm_loop_chunked_weight_grads(cell, kw, monkeypatch):
    """The GEMM loop's weight gradients over more than 1024 rows (csrc/cpu/weight_grad.h):
    chunks transposed in 16 x 16 register blocks with element-by-element edges, one GEMM a
    chunk, the chunks summed in double."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    compare_with_torch(cell, **kw, dtype=torch.float32, device="cpu")


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="the fused CPU loop needs AVX-512")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H,N,gemm_T,fused_T", [(1024, 1, 4, 8), (512, 1, 1, 2), (768, 2, 1, 5)])
def test_short_forward_runs_the_gemm_loop(cell, H, N, gemm_T, fused_T, dt, monkeypatch):
    """A float32 forward of fewer rows than its W_hh has 2 MB (fused_forward_pays,
    loop_choice.h), and a bfloat16 one on bf16 products of fewer steps
    (fused_forward_pays_bf16), runs the per-step GEMM loop even where the fused loop could:
    packing W_hh into the fused loop's panels costs a pass over it (at T=1, N=1, H=1024 the
    fused float32 LSTM took 2.9 ms, the GEMM loop 0.65). At gemm_T steps the outputs must
    be the GEMM loop's bits (FUSEDRNN_CPU_FUSED=0); at fused_T, where the rows repay the
    panels, the fused loop's, which differ from the GEMM loop's. Both match torch.nn."""
    if dt == torch.bfloat16:
        if "avx512_bf16" not in cpu_flags():
            pytest.skip("bf16 products need AVX512-BF16")
        monkeypatch.setenv("FUSEDRNN_CPU_BF16_DOT", "1")
        monkeypatch.setenv("FUSEDRNN_CPU_AMX", "0")
        # The bf16 rule goes by steps; 16 rows fold x into the fused products, so that its
        # bits differ from the GEMM loop's (at one step of 1 or 2 rows both loops take x
        # W_ih^T from oneDNN, and h0 = 0 adds nothing: the same bits).
        N = 16
    ref, m = make_modules(cell, H, H, 1)
    ref, m = ref.to(dt), m.to(dt)
    rtol, atol = (1e-4, 1e-5) if dt == torch.float32 else (2e-2, 2e-2)  # bf16: a few ulp
    torch.manual_seed(3)
    for T, want_gemm in ((gemm_T, True), (fused_T, False)):
        x = torch.randn(T, N, H, dtype=dt)
        with torch.no_grad():
            monkeypatch.delenv("FUSEDRNN_CPU_FUSED", raising=False)
            y, fin = m(x)
            monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
            y_gemm, fin_gemm = m(x)
            y_t, fin_t = ref(x)
        outs = [y, *(fin if cell == "LSTM" else [fin])]
        gemm = [y_gemm, *(fin_gemm if cell == "LSTM" else [fin_gemm])]
        same = all(torch.equal(a, b) for a, b in zip(outs, gemm, strict=True))
        assert same == want_gemm, f"T={T}: {'GEMM' if want_gemm else 'fused'} loop expected"
        torch.testing.assert_close(y, y_t, rtol=rtol, atol=atol)


def _compare_padded_or_packed(cell, kw):
    """compare_with_torch for a padded case; for one with lengths, a bidirectional packed
    batch against torch.nn: outputs and every gradient."""
    kw = dict(kw)
    lengths = kw.pop("lengths", None)
    if lengths is None:
        compare_with_torch(cell, **kw, dtype=torch.float32, device="cpu")
        return
    ref, m = make_modules(cell, kw["I"], kw["H"], 1, bidirectional=True)
    torch.manual_seed(5)
    x = torch.randn(kw["T"], kw["N"], kw["I"], requires_grad=True)
    outs = []
    for mod in (m, ref):
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        y, fin = mod(packed)
        o = [y.data, *(fin if cell == "LSTM" else [fin])]
        torch.manual_seed(0)
        g = torch.autograd.grad(o, [x, *mod.parameters()], [torch.randn_like(t) for t in o])
        outs.append([*o, *g])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.skipif(not AVX2, reason="the AVX2 panel loop needs AVX2 and FMA")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "kw",
    [c for c in DEFAULT_CASES if c.values[0]["N"] > 4]
    + [pytest.param(dict(T=9, N=13, I=6, H=33, lengths=(4, 9, 1, 7, 9, 9, 2, 3, 5, 8, 6, 9, 1)),
                    id="T9-N13-packed-H33")],
)
@pytest.mark.parametrize("fold", ["0", "1"], ids=["x-apart", "x-folded"])
def test_matches_torch_avx2_panels(cell, kw, fold, monkeypatch):
    """The float32 recurrences above the row-dot loop's batches on CPUs with AVX2 but not
    AVX-512 (avx2_panels.h: W_hh packed into 16-unit panels once a call, 6-row tiles, one
    barrier a step, forward and backward), forced with the fused loop off; dx and the
    weight gradients stay the GEMM loop's. The forward with x's products apart (oneDNN's
    GEMM over blocks of steps) and folded into the tiles (W_ih packed too; GRU's W_in x in
    a slot of its own), each forced. Odd sizes: H=7 and 129 (a partial last panel), 13
    rows (a 1-row tile), packed."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    monkeypatch.setenv("FUSEDRNN_CPU_PANELS", "1")
    monkeypatch.setenv("FUSEDRNN_CPU_PANEL_FOLD", fold)
    _compare_padded_or_packed(cell, kw)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "kw",
    [c for c in DEFAULT_CASES if c.values[0]["N"] <= 4]
    + [pytest.param(dict(T=9, N=4, I=6, H=33, lengths=(4, 9, 1, 7)), id="T9-N4-packed-H33")],
)
def test_matches_torch_rowdot_loop(cell, kw, monkeypatch):
    """The small-batch float32 forward of CPUs without AVX-512 (rowdot_loop.h: dot products
    with W_hh's rows in place, one barrier a step), forced with the fused loop off; its
    workspace feeds the GEMM loop's backward."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    monkeypatch.setenv("FUSEDRNN_CPU_ROWDOT", "1")
    _compare_padded_or_packed(cell, kw)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", HALF_CASES)
def test_matches_torch_16bit_gemm_loop(cell, kw, dt, monkeypatch):
    """16-bit storage on the CPU through the per-step GEMM loop (FUSEDRNN_CPU_FUSED=0),
    which small batches otherwise leave to the fused loop on AVX-512 CPUs."""
    monkeypatch.setenv("FUSEDRNN_CPU_FUSED", "0")
    compare_with_torch(cell, **kw, dtype=dt, device="cpu")


@pytest.mark.parametrize("dot", ["0", "1"], ids=["float-products", "bf16-products"])
@pytest.mark.parametrize("cell", CELLS)
# I=601 at batch 40 (x folded into the step): the bf16 products' k chunks (kPairsChunkK,
# 512) split x's columns, the last chunk ending in half a pair.
@pytest.mark.parametrize("kw", HALF_CASES + [case(3, 40, 601, 33, bidir=True)])
def test_matches_torch_bf16_products(cell, kw, dot, monkeypatch):
    """bfloat16 as CPUs without AMX run it (FUSEDRNN_CPU_AMX=0), in the fused loop with
    float products (FUSEDRNN_CPU_BF16_DOT=0: AVX-512 CPUs without AVX512-BF16) and with
    bf16 products on vdpbf16ps (=1: the default on AVX512-BF16 CPUs; where the CPU lacks
    AVX512-BF16 this runs float products again)."""
    monkeypatch.setenv("FUSEDRNN_CPU_AMX", "0")
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_DOT", dot)
    compare_with_torch(cell, **kw, dtype=torch.bfloat16, device="cpu")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", [case(5, 40, 6, 64, bidir=True), case(3, 33, 8, 256, L=2),
                                case(4, 16, 7, 96, hx=False)])
def test_matches_torch_bf16_amx_rows_in_place(cell, kw):
    """bfloat16 on AMX CPUs runs the forward's recurrent products on tiles (amx_gates,
    the default there; HALF_CASES cover staged rows: H not a multiple of 32, partial
    tiles and unit blocks). Here H is a multiple of 32, so whole tiles of 16 rows are
    read in place from y and h0, beside a last partial tile (N=40, 33), in one or two k
    chunks (H=256), and one exact tile (N=16). Elsewhere these run the other loops."""
    compare_with_torch(cell, **kw, dtype=torch.bfloat16, device="cpu")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("N", [50, 280, 520])
def test_matches_torch_fused_row_groups(cell, N):
    """Row grouping of the fused loops: N=50 runs two groups (48 + 2 rows, tails of a
    group and of a tile), and its backward's dx (150-row chunks, over 1 MB of dG rows)
    one tile a group. With I=H=512, N=280 has 1.1 MB of step rows: the fused loops,
    except GRU's forward, which takes the per-step GEMM loop (kFusedGRURowsBytes) ahead
    of the fused backward; N=520 (2.1 MB) takes the GEMM loop both ways
    (fused_rows_fit)."""
    compare_with_torch(cell, T=3, N=N, I=512, H=512, bidirectional=True)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", [dict(T=5, N=8, I=32, H=96), dict(T=4, N=64, I=24, H=100)],
                         ids=["N8-H96", "N64-H100"])
def test_matches_torch_fused_partial_cell_groups(cell, kw):
    """The fused forward keeps its sums by groups of 4 unit blocks (hg_at in
    csrc/cpu/recurrence.h). On two threads, H=96 (6 blocks) gives the second worker
    blocks 3-5: its first group starts inside a group; H=100 also ends in a partial
    block. N=8 takes x W_ih^T from the GEMM, N=64 folds it into the step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compare_with_torch(cell, **kw, bidirectional=True)
    finally:
        torch.set_num_threads(threads)


# The GEMM loop's backward (batch 32 and up, bfloat16) sums its weight gradients over
# T*N rows: 1480 rows in chunks of 128 (T=37, N=40), output columns 96 and 160 (H=96, 129:
# a last block of 32 columns), 165 rows padded to 192 (T=5, N=33).
WEIGHT_GRAD_CASES = HALF_CASES + [case(37, 40, 6, 96, bidir=True), case(5, 33, 7, 129, L=2)]


@pytest.mark.parametrize("dot", ["0", "1"], ids=["float", "vdpbf16ps"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", WEIGHT_GRAD_CASES)
def test_matches_torch_bf16_weight_grads_without_amx(cell, kw, dot, monkeypatch):
    """bfloat16 weight gradients as CPUs without AMX run them (FUSEDRNN_CPU_AMX=0): widened
    to float, one oneDNN GEMM a chunk (FUSEDRNN_CPU_BF16_DOT=0), or on vdpbf16ps (=1,
    dot_rows in csrc/cpu/amx.h, where the CPU has AVX512-BF16; elsewhere the float path
    again). The other bfloat16 tests take the AMX kernel on CPUs that have it."""
    monkeypatch.setenv("FUSEDRNN_CPU_AMX", "0")
    monkeypatch.setenv("FUSEDRNN_CPU_BF16_DOT", dot)
    compare_with_torch(cell, **kw, dtype=torch.bfloat16, device="cpu")
