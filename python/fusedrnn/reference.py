"""Pure-PyTorch oracle: an explicit time loop, written independently of csrc/cells.h.

Tests and the demo run it in float64. Never on the hot path.
Time-major: x [T,N,I]; hx [L*D,N,P], cx [L*D,N,H]; weights as in functional.py (torch.nn's
flat list: per layer and direction w_ih [G,I], w_hh [G,P], then b_ih, b_hh [G] if has_bias,
then w_hr [P,H] if has_proj). Packed input: compare one sequence at a time (testing.py).
"""
import torch


def _lstm_layer_ref(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    steps = range(x.size(0) - 1, -1, -1) if reverse else range(x.size(0))
    ys = [None] * x.size(0)
    for t in steps:
        gates = x[t] @ w_ih.T + h @ w_hh.T
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = h @ w_hr.T
        ys[t] = h
    return torch.stack(ys), h, c


def _gru_layer_ref(x, h, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    steps = range(x.size(0) - 1, -1, -1) if reverse else range(x.size(0))
    ys = [None] * x.size(0)
    for t in steps:
        gi = x[t] @ w_ih.T
        gh = h @ w_hh.T
        if b_ih is not None:
            gi, gh = gi + b_ih, gh + b_hh
        ir, iz, in_ = gi.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        h = (1 - z) * n + z * h
        ys[t] = h
    return torch.stack(ys), h


def _stack_ref(layer_fn, x, states, weights, has_bias, num_layers, bidirectional, has_proj=False):
    D = 2 if bidirectional else 1
    per = 2 + 2 * has_bias + has_proj
    finals = [[] for _ in states]
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = list(weights[k * per : (k + 1) * per])
            b = w[2:4] if has_bias else [None, None]
            w_hr = w[-1] if has_proj else None
            y, *final = layer_fn(x, *[s[k] for s in states], w[0], w[1], *b, w_hr, d == 1)
            outs.append(y)
            for acc, f in zip(finals, final):
                acc.append(f)
        x = torch.cat(outs, dim=2)
    return x, [torch.stack(f) for f in finals]


def lstm_ref(x, hx, cx, weights, has_bias, num_layers, bidirectional, has_proj=False):
    """Returns y [T,N,D*P], h_n [L*D,N,P], c_n [L*D,N,H]."""
    y, (h_n, c_n) = _stack_ref(
        _lstm_layer_ref, x, (hx, cx), weights, has_bias, num_layers, bidirectional, has_proj
    )
    return y, h_n, c_n


def gru_ref(x, hx, weights, has_bias, num_layers, bidirectional):
    """Returns y [T,N,D*H], h_n [L*D,N,H]."""
    y, (h_n,) = _stack_ref(_gru_layer_ref, x, (hx,), weights, has_bias, num_layers, bidirectional)
    return y, h_n
