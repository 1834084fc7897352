"""fusedrnn.convert: nn.LSTM / nn.GRU submodules swapped for fusedrnn's and back, keeping the
very Parameter objects; the converted model computes and trains like the original."""
import copy
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.parametrizations import weight_norm

import fusedrnn
from fusedrnn.convert import convert
from fusedrnn.testing import rel_err

TOL = 1e-5  # float32: fusedrnn and torch.nn differ by rounding (~1e-7) only
DATA = Path("/work/shared/data/wikitext-2")


class LM(nn.Module):
    def __init__(self, vocab, emb, hidden, cell="LSTM", dropout=0.3):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = getattr(nn, cell)(emb, hidden, 2, dropout=dropout)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, tokens, hx=None):  # tokens [T,N]
        y, hx = self.rnn(self.emb(tokens), hx)
        return self.fc(y), hx


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True)


class Nested(nn.Module):
    """GRUs inside a ModuleList of Sequentials, an LSTM inside a child module."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(4, 7), nn.GRU(7, 6, 2, batch_first=True, bias=False)),
             nn.Sequential(nn.GRU(6, 6, batch_first=True))]
        )
        self.inner = Inner()
        self.head = nn.Linear(10, 3)

    def forward(self, x):  # x [N,T,4]
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.inner.lstm(x)[0])


def rnn_types(model):
    return Counter(type(m) for m in model.modules() if isinstance(m, nn.RNNBase))


def assert_flat_weights_consistent(m):
    names = m._flat_weights_names
    assert len(m._flat_weights) == len(names), (len(m._flat_weights), len(names))
    for name, w in zip(names, m._flat_weights):
        assert w is getattr(m, name), f"_flat_weights[{name}] is not the module's {name}"


def run(model, x, seed=1):
    # fusedrnn draws its inter-layer dropout masks with the same RNG calls as torch.nn
    # (one F.dropout per layer), so seeded train-mode runs match too.
    torch.manual_seed(seed)
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def assert_same_outputs_and_grads(model, ref, x, what):
    y, y_ref = run(model, x), run(ref, x)
    assert y.shape == y_ref.shape
    e = rel_err(y, y_ref)
    assert e < TOL, f"{what}: output rel err {e:.2e} >= {TOL:.0e}"
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    y.backward(g)
    y_ref.backward(g)
    for (name, p), (name_ref, p_ref) in zip(model.named_parameters(), ref.named_parameters(),
                                            strict=True):
        assert name == name_ref
        e = rel_err(p.grad, p_ref.grad)
        assert e < TOL, f"{what}: grad {name} rel err {e:.2e} >= {TOL:.0e}"


MODELS = {
    "lm": (lambda: LM(50, 8, 16), lambda: torch.randint(50, (9, 4)), {nn.LSTM: 1}),
    "nested": (Nested, lambda: torch.randn(3, 5, 4), {nn.GRU: 2, nn.LSTM: 1}),
}


@pytest.mark.parametrize("kind", MODELS)
def test_convert_keeps_parameters_optimizer_hooks_and_numbers(kind):
    build, make_input, counts = MODELS[kind]
    model = build()
    ref = copy.deepcopy(model)
    x = make_input()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    name, watched = next((n, p) for n, p in params.items() if "weight_hh_l0" in n)
    fired = []
    watched.register_hook(lambda g: fired.append(g.norm().item()))

    assert convert(model) is model
    fused = {nn.LSTM: fusedrnn.LSTM, nn.GRU: fusedrnn.GRU}
    assert rnn_types(model) == Counter({fused[c]: n for c, n in counts.items()})
    new_params = dict(model.named_parameters())
    assert list(new_params) == list(params)
    for n, p in params.items():
        assert new_params[n] is p, f"{n} is a new Parameter"
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            assert_flat_weights_consistent(m)

    assert_same_outputs_and_grads(model, ref, x, f"{kind}, train mode")
    assert len(fired) == 1, f"hook on {name} fired {len(fired)} times"
    before = watched.detach().clone()
    opt.step()
    opt_ref.step()
    assert not torch.equal(before, watched), f"the optimizer did not update {name}"
    for (n, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        e = rel_err(p, p_ref)
        assert e < TOL, f"{n} after one SGD step: rel err {e:.2e} >= {TOL:.0e}"
    model.eval()
    ref.eval()
    opt.zero_grad()
    opt_ref.zero_grad()
    assert_same_outputs_and_grads(model, ref, x, f"{kind}, eval mode, after a step")

    assert convert(model, to="torch") is model
    assert rnn_types(model) == Counter(counts)
    for n, p in model.named_parameters():
        assert p is params[n], f"{n} is a new Parameter after the round trip"
    assert not any(m.training for m in model.modules())
    e = rel_err(run(model, x), run(ref, x))
    assert e < TOL, f"{kind}, back to torch.nn: output rel err {e:.2e} >= {TOL:.0e}"


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_convert_the_module_itself(cell):
    old = getattr(nn, cell)(3, 5, 2, bias=False, batch_first=True, dropout=0.25,
                            bidirectional=True, dtype=torch.float64).eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    y_old = old(x)[0]
    new = convert(old)
    assert type(new) is getattr(fusedrnn, cell)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "training"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert all(a is b for a, b in zip(new.parameters(), old.parameters(), strict=True))
    assert all(p.device.type == "cpu" for p in new.parameters())
    assert_flat_weights_consistent(new)
    e = rel_err(new(x)[0], y_old)
    assert e < 1e-12, f"float64 output after convert: rel err {e:.2e}"
    back = convert(new, to="torch")
    assert type(back) is getattr(nn, cell)
    assert all(a is b for a, b in zip(back.parameters(), old.parameters(), strict=True))
    assert_flat_weights_consistent(back)


def test_convert_keeps_module_hooks_requires_grad_and_sharing():
    lstm = nn.LSTM(4, 5)
    lstm.bias_ih_l0.requires_grad_(False)
    calls = []
    handle = lstm.register_forward_hook(lambda m, i, o: calls.append(type(m)))
    model = nn.Sequential(lstm, nn.Identity(), lstm)  # the same module twice
    model.eval()
    convert(model)
    assert model[0] is model[2] and type(model[0]) is fusedrnn.LSTM
    assert not model[0].bias_ih_l0.requires_grad and model[0].training is False
    model[0](torch.randn(2, 3, 4))
    assert calls == [fusedrnn.LSTM]
    handle.remove()
    model[0](torch.randn(2, 3, 4))
    assert calls == [fusedrnn.LSTM], "the old hook handle no longer removes the hook"


def test_convert_leaves_subclasses_and_rejects_unknown_target():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(MyLSTM(3, 4))
    convert(model)
    assert type(model[0]) is MyLSTM
    with pytest.raises(ValueError, match="fused.*torch"):
        convert(model, to="cuda")


def test_convert_does_not_repeat_the_dropout_warning():
    with pytest.warns(UserWarning, match="dropout option"):
        old = nn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(old)


@pytest.mark.parametrize("how", ["weight_norm", "custom", "prune"])
def test_convert_parametrized_and_pruned(how):
    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(3)
    old = nn.LSTM(4, 6, 2)
    if how == "weight_norm":
        weight_norm(old, name="weight_hh_l0")
    elif how == "custom":
        parametrize.register_parametrization(old, "weight_hh_l0", Scale())
    ref = copy.deepcopy(old)
    if how == "prune":  # a pruned module cannot be deep-copied: prune both with one mask
        prune.random_unstructured(old, name="weight_hh_l0", amount=0.3)
        prune.custom_from_mask(ref, "weight_hh_l0", old.weight_hh_l0_mask)
    params = dict(old.named_parameters())
    new = convert(old)
    assert isinstance(new, fusedrnn.LSTM)
    assert parametrize.is_parametrized(new) == (how != "prune")
    assert {n: p for n, p in new.named_parameters()} == params  # same names, same objects
    assert_same_outputs_and_grads(new, ref, torch.randn(5, 3, 4), how)
    back = convert(new, to="torch")
    assert type(back).__mro__[parametrize.is_parametrized(back)] is nn.LSTM
    assert {n: p for n, p in back.named_parameters()} == params
    x = torch.randn(2, 1, 4)
    e = rel_err(back(x)[0], ref(x)[0])
    assert e == 0.0, f"{how}, back to torch.nn: rel err {e:.2e} (same weights, same code)"


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_convert_proj_size():
    old = nn.LSTM(4, 8, 2, proj_size=3, bidirectional=True)
    ref = copy.deepcopy(old)
    new = convert(old)
    assert new.proj_size == 3 and "weight_hr_l1_reverse" in new._flat_weights_names
    assert_flat_weights_consistent(new)
    assert_same_outputs_and_grads(new, ref, torch.randn(5, 2, 4), "proj_size=3")


def _corpus():
    for name in ("train.txt", "valid.txt"):
        if (DATA / name).exists():
            return DATA / name
    pytest.skip(f"no wikitext-2 train.txt or valid.txt under {DATA}")


def _token_batches(steps, T, N, vocab_size):
    words = [w for line in _corpus().read_text().splitlines() for w in line.split() + ["<eos>"]]
    vocab = {w: i for i, (w, _) in enumerate(Counter(words).most_common(vocab_size))}
    unk = len(vocab)
    ids = torch.tensor([vocab.get(w, unk) for w in words[: steps * T * N + 1]])
    stream = ids[: steps * T * N].view(N, -1).t()  # [steps*T, N]: N contiguous streams
    target = ids[1 : steps * T * N + 1].view(N, -1).t()
    return [(stream[i * T : (i + 1) * T], target[i * T : (i + 1) * T]) for i in range(steps)]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_language_model_training_matches_torch(cell):
    """The issue's check: a word-level LM on wikitext-2 trains step for step like torch.nn."""
    steps, T, N, vocab_size = 50, 35, 16, 2000
    batches = _token_batches(steps, T, N, vocab_size)
    torch.manual_seed(0)
    ref = LM(vocab_size + 1, 64, 128, cell, dropout=0.0)
    model = convert(copy.deepcopy(ref))
    assert type(model.rnn) is getattr(fusedrnn, cell)
    losses = {}
    for name, m in (("torch", ref), ("fused", model)):
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        hx, curve = None, []
        for tokens, target in batches:
            logits, hx = m(tokens, hx)
            hx = tuple(h.detach() for h in hx) if cell == "LSTM" else hx.detach()
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            opt.step()
            curve.append(loss.item())
        losses[name] = curve
    for step, (a, b) in enumerate(zip(losses["fused"], losses["torch"])):
        assert abs(a - b) / b < 1e-4, f"step {step}: loss {a:.6f} (fused) vs {b:.6f} (torch.nn)"
    first, last = losses["torch"][0], sum(losses["torch"][-5:]) / 5
    assert last < first - 1.0, f"loss did not decrease: {first:.3f} -> {last:.3f} (last 5 mean)"
