"""Inter-layer dropout, statistically: the mask rate is p and kept values are scaled by
1/(1-p), on every layer's output but the last, only in training mode."""
import pytest
import torch

import fusedrnn
from fusedrnn import functional


def _layer_inputs(monkeypatch, m, x):
    """Runs m(x) and returns the input each layer op received, in call order."""
    seen = []
    real = functional.LSTMFunction

    class Spy:
        @staticmethod
        def apply(x, *args):
            seen.append(x.detach())
            return real.apply(x, *args)

    monkeypatch.setattr(functional, "LSTMFunction", Spy)
    m(x)
    return seen


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_mask_rate_and_scaling(monkeypatch, p):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(16, 64, num_layers=3, dropout=p)
    x = torch.randn(50, 32, 16)
    m.train()
    inputs = _layer_inputs(monkeypatch, m, x)  # layer 0, layer 1, layer 2 (one direction)
    # What layer k would get without its dropout: layer k-1 run alone on the (dropped)
    # input it actually received, so only the mask between them differs.
    clean = []
    for k in (1, 2):
        one = fusedrnn.LSTM(16 if k == 1 else 64, 64)
        one.load_state_dict({n[:-1] + "0": v for n, v in m.state_dict().items() if int(n[-1]) == k - 1})
        clean.append(one(inputs[k - 1])[0].detach())
    n = inputs[1].numel()
    for dropped, full in zip(inputs[1:], clean):
        kept = dropped != 0
        rate = 1 - kept.float().mean().item()
        # Binomial(n, p): 5 standard deviations.
        assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5, f"mask rate {rate:.4f}, p={p}"
        torch.testing.assert_close(dropped[kept], full[kept] / (1 - p), rtol=1e-6, atol=1e-7)


def test_no_dropout_in_eval_or_after_last_layer(monkeypatch):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(8, 16, num_layers=2, dropout=0.5).eval()
    x = torch.randn(10, 4, 8)
    inputs = _layer_inputs(monkeypatch, m, x)
    assert not torch.any(inputs[1] == 0)
    m.train()
    y_train, _ = m(x)
    assert torch.all(y_train != 0)  # the last layer's output is never dropped
