"""Module state like torch.nn's: state_dict, flatten_parameters, copy/pickle, dtype moves,
Parameter hooks, parametrizations and torch.func.functional_call."""
import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

import fusedrnn
from conftest import CELLS, make_modules, rel_err

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # rounding only; fp32 errors are ~1e-7

VARIANTS = [  # num_layers, bidirectional, bias, proj_size (LSTM only)
    (1, False, True, 0), (2, False, True, 0), (1, True, True, 0), (2, True, False, 0),
    (3, True, True, 0), (2, True, True, 3), (1, False, False, 2),
]


def run(module, x, hx=None, seed=5):
    """Outputs, then the gradients of x and of every parameter (by name), as {name: tensor}."""
    x = x.detach().requires_grad_()
    y, states = module(x, hx)
    outs = {"output": y}
    outs.update(zip(("h_n", "c_n"), states) if isinstance(states, tuple) else [("h_n", states)])
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
             for o in outs.values()]
    torch.autograd.backward(list(outs.values()), grads)
    outs["grad input"] = x.grad
    outs.update((f"grad {n}", p.grad) for n, p in module.named_parameters())
    return outs


def assert_match(ours, theirs, what, dtype=torch.float32):
    assert list(ours) == list(theirs), f"{what}: {list(ours)} != {list(theirs)}"
    for name in ours:
        e = rel_err(ours[name], theirs[name])
        assert e < TOL[dtype], f"{what}, {name}: rel err {e:.2e} >= {TOL[dtype]:.0e}"


def inputs(cell, L=1, D=1, dtype=torch.float32, seed=1, proj=0):
    """x [6,3,4] and random hx for H=5 (h0 [L*D,3,proj or 5], c0 [L*D,3,5])."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 4, generator=gen, dtype=dtype)
    sizes = [proj or 5, 5][: 1 + (cell == "LSTM")]
    h = [torch.randn(L * D, 3, s, generator=gen, dtype=dtype) for s in sizes]
    return x, (tuple(h) if cell == "LSTM" else h[0])


@pytest.mark.parametrize(
    "cell,L,bidir,bias,proj",
    [(cell, *v) for cell in CELLS for v in VARIANTS if cell == "LSTM" or not v[3]],
)
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_state_dict_loads_both_ways(cell, L, bidir, bias, proj):
    torch_cls, fused_cls = CELLS[cell]
    kwargs = dict(num_layers=L, bidirectional=bidir, bias=bias, **({"proj_size": proj} if proj else {}))
    torch.manual_seed(0)
    theirs = torch_cls(4, 5, **kwargs)
    torch.manual_seed(1)
    ours = fused_cls(4, 5, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    x, hx = inputs(cell, L, 1 + bidir, proj=proj)
    assert_match(run(ours, x, hx), run(theirs, x, hx), "torch.nn -> fusedrnn")

    torch.manual_seed(2)
    ours2 = fused_cls(4, 5, **kwargs)
    theirs2 = torch_cls(4, 5, **kwargs)
    theirs2.load_state_dict(ours2.state_dict(), strict=True)
    for n, p in ours2.state_dict().items():
        assert torch.equal(theirs2.state_dict()[n], p), n
    assert_match(run(ours2, x, hx), run(theirs2, x, hx), "fusedrnn -> torch.nn")


@pytest.mark.parametrize("cell", CELLS)
def test_flatten_parameters_is_a_no_op(cell):
    _, ours = make_modules(cell, 4, 5, 2, bidirectional=True)
    before = [(id(p), p.data_ptr(), p.detach().clone()) for p in ours.parameters()]
    flat = [id(w) for w in ours._flat_weights]
    assert ours.flatten_parameters() is None
    after = list(ours.parameters())
    assert [id(p) for p in after] == [b[0] for b in before], "a Parameter was replaced"
    assert [p.data_ptr() for p in after] == [b[1] for b in before], "storage moved"
    assert all(torch.equal(p, b[2]) for p, b in zip(after, before))
    assert [id(w) for w in ours._flat_weights] == flat


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_and_pickle(cell, how):
    _, ours = make_modules(cell, 4, 5, 2, bidirectional=True)
    x, hx = inputs(cell, 2, 2)
    clone = copy.deepcopy(ours) if how == "deepcopy" else pickle.loads(pickle.dumps(ours))
    assert type(clone) is type(ours)
    assert not any(a is b for a, b in zip(clone.parameters(), ours.parameters()))
    assert all(w is getattr(clone, n) for w, n in zip(clone._flat_weights,
                                                      clone._flat_weights_names, strict=True))
    a, b = run(clone, x, hx), run(ours, x, hx)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{how}: {name} differs, rel err "\
            f"{rel_err(a[name], b[name]):.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_dtype_moves(cell):
    theirs, ours = make_modules(cell, 4, 5, 2, bidirectional=True)
    ids = [id(p) for p in ours.parameters()]
    x, hx = inputs(cell, 2, 2, torch.float64)
    for move in (lambda m: m.to(torch.float64), lambda m: m.double()):
        assert move(ours) is ours and move(theirs) is theirs
        assert all(p.dtype == torch.float64 for p in ours.parameters())
        assert [id(p) for p in ours.parameters()] == ids, "Parameter objects replaced"
        assert [w.dtype for w in ours._flat_weights] == [torch.float64] * len(ids)
        ours.zero_grad()
        theirs.zero_grad()
        out = run(ours, x, hx)
        assert all(t.dtype == torch.float64 for t in out.values())
        assert_match(out, run(theirs, x, hx), "float64", torch.float64)
    ours.float()
    theirs.float()
    ours.zero_grad()
    theirs.zero_grad()
    x, hx = inputs(cell, 2, 2, torch.float32)
    assert [id(p) for p in ours.parameters()] == ids
    out = run(ours, x, hx)
    assert all(t.dtype == torch.float32 for t in out.values())
    assert_match(out, run(theirs, x, hx), "back to float32")


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_hook_fires_and_modifies_the_gradient(cell):
    theirs, ours = make_modules(cell, 4, 5, 2)
    x, hx = inputs(cell, 2)
    plain = {n: t.clone() for n, t in run(ours, x, hx).items()}
    ours.zero_grad()
    calls = {"torch": 0, "fused": 0}
    for name, m in (("torch", theirs), ("fused", ours)):
        def hook(g, name=name):
            calls[name] += 1
            return 3 * g
        m.weight_hh_l0.register_hook(hook)
    ours_out, theirs_out = run(ours, x, hx), run(theirs, x, hx)
    assert calls == {"torch": 1, "fused": 1}, calls
    assert_match(ours_out, theirs_out, "with a hook tripling grad weight_hh_l0")
    for name, t in ours_out.items():
        want = 3 * plain[name] if name == "grad weight_hh_l0" else plain[name]
        e = rel_err(t, want)
        assert e < 1e-6, f"{name} with the hook vs without (x3 if hooked): rel err {e:.2e}"


class Scale(nn.Module):
    """w * s with a learnable per-row scale s: gradients must reach s."""

    def __init__(self, rows):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, rows).unsqueeze(1))

    def forward(self, w):
        return w * self.s


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("how", ["weight_norm", "custom", "custom cached"])
def test_parametrized_weight(cell, how):
    theirs, ours = make_modules(cell, 4, 5, 2, bidirectional=True)
    for m in (theirs, ours):
        if how == "weight_norm":
            weight_norm(m, name="weight_hh_l0")
        else:
            parametrize.register_parametrization(m, "weight_hh_l0", Scale(m.weight_hh_l0.size(0)))
            parametrize.register_parametrization(m, "bias_ih_l1_reverse", nn.Tanh())
    originals = [n for n, _ in ours.named_parameters() if n.startswith("parametrizations.")]
    expected = {"weight_norm": 2, "custom": 3, "custom cached": 3}[how]
    assert len(originals) == expected, originals
    x, hx = inputs(cell, 2, 2)
    if how == "custom cached":
        with parametrize.cached():
            ours_out, theirs_out = run(ours, x, hx), run(theirs, x, hx)
    else:
        ours_out, theirs_out = run(ours, x, hx), run(theirs, x, hx)
    assert_match(ours_out, theirs_out, how)
    for n in originals:
        assert ours_out[f"grad {n}"].norm() > 0, f"no gradient reached {n}"
    # The parametrization is what is used: scaling it changes the output.
    with torch.no_grad():
        for m in (theirs, ours):
            if how == "weight_norm":
                m.parametrizations.weight_hh_l0.original0.mul_(2)
            else:
                m.parametrizations.weight_hh_l0[0].s.mul_(2)
    ours.zero_grad()
    theirs.zero_grad()
    changed = run(ours, x, hx)
    e = rel_err(changed["output"], ours_out["output"])
    assert e > 1e-3, f"output ignores the parametrization (rel change {e:.2e})"
    assert_match(changed, run(theirs, x, hx), f"{how}, after changing the parametrization")


@pytest.mark.parametrize("cell", CELLS)
def test_functional_call(cell):
    theirs, ours = make_modules(cell, 4, 5, 2, bidirectional=True)
    gen = torch.Generator().manual_seed(9)
    params = {n: (0.3 * torch.randn(p.shape, generator=gen)).requires_grad_()
              for n, p in ours.named_parameters()}
    x, hx = inputs(cell, 2, 2)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    results = {}
    for name, m in (("fused", ours), ("torch", theirs)):
        y, states = torch.func.functional_call(m, params, (x, hx))
        results[name] = [y, *(states if isinstance(states, tuple) else (states,))]
        results[name] += torch.autograd.grad(results[name][0].square().sum(), list(params.values()))
    for i, (a, b) in enumerate(zip(results["fused"], results["torch"], strict=True)):
        e = rel_err(a, b)
        assert e < TOL[torch.float32], f"functional_call result {i}: rel err {e:.2e}"
    y_default = ours(x, hx)[0]
    e = rel_err(y_default, theirs(x, hx)[0])
    assert e < TOL[torch.float32], f"after functional_call: rel err {e:.2e}"
    assert rel_err(y_default, results["fused"][0]) > 0.1, "functional_call weights were kept"
    for n, p in ours.named_parameters():
        assert torch.equal(p, before[n]), f"functional_call changed {n}"
    assert isinstance(ours, fusedrnn.LSTM if cell == "LSTM" else fusedrnn.GRU)
