"""The layer stack: layers, directions and inter-layer dropout over the layer ops.

Inputs are time-major: x [T,N,I]; hx [L*D,N,H] (and cx for LSTM); weights is the flat
list of torch.nn's parameters, per layer and direction [w_ih, w_hh, (b_ih, b_hh)].
"""
import torch
import torch.nn.functional as F

from .autograd import GRUFunction, LSTMFunction


def _stack(cell, x, states, weights, has_bias, num_layers, bidirectional, dropout, training):
    D = 2 if bidirectional else 1
    per = 4 if has_bias else 2
    finals = [[] for _ in states]
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = weights[k * per : (k + 1) * per]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
            y, *final = cell(x, w_ih, w_hh, b_ih, b_hh, *[s[k] for s in states], d == 1)
            outs.append(y)
            for acc, f in zip(finals, final):
                acc.append(f)
        x = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    return x, [torch.stack(f, 0) for f in finals]


def _lstm_cell(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    y, h_n, c_n, _ = LSTMFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse)
    return y, h_n, c_n


def _gru_cell(x, w_ih, w_hh, b_ih, b_hh, h0, reverse):
    y, h_n, _ = GRUFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, reverse)
    return y, h_n


def lstm(x, hx, cx, weights, has_bias, num_layers, bidirectional, dropout=0.0, training=False):
    """Multi-layer LSTM. Returns y [T,N,D*H], h_n [L*D,N,H], c_n [L*D,N,H]."""
    y, (h_n, c_n) = _stack(
        _lstm_cell, x, (hx, cx), weights, has_bias, num_layers, bidirectional, dropout, training
    )
    return y, h_n, c_n


def gru(x, hx, weights, has_bias, num_layers, bidirectional, dropout=0.0, training=False):
    """Multi-layer GRU. Returns y [T,N,D*H], h_n [L*D,N,H]."""
    y, (h_n,) = _stack(
        _gru_cell, x, (hx,), weights, has_bias, num_layers, bidirectional, dropout, training
    )
    return y, h_n
