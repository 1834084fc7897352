"""The layer stack: layers, directions and inter-layer dropout over the layer ops.

x is time-major [T,N,I], or a PackedSequence's data [R,I] with its batch_sizes [T];
hx [L*D,N,P] (and cx [L*D,N,H] for LSTM); weights is torch.nn's flat parameter list,
per layer and direction [w_ih, w_hh, (b_ih, b_hh), (w_hr)].
"""
import torch
import torch.nn.functional as F

from ._ops import ops
from .autograd import GRUFunction, LSTMFunction

# Under torch.no_grad the layers call the forward ops with save=False: nothing is kept for
# backward (an LSTM's workspace is 5x the size of y). The autograd Functions cannot tell,
# since autograd sets ctx.needs_input_grad from requires_grad alone, even under no_grad.


def _stack(cell, x, states, weights, has_bias, has_proj, num_layers, bidirectional, dropout,
           training, batch_sizes):
    D = 2 if bidirectional else 1
    per = 2 + 2 * has_bias + has_proj
    finals = [[] for _ in states]
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = weights[k * per : (k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
            w_hr = w[-1] if has_proj else None
            y, *final = cell(x, w[0], w[1], b_ih, b_hh, w_hr, *[s[k] for s in states], d == 1,
                             batch_sizes)
            outs.append(y)
            for acc, f in zip(finals, final):
                acc.append(f)
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)
    # One layer and direction: a view of the op's (fresh) final state, not a copy.
    return x, [f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f, 0) for f in finals]


def _lstm_cell(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, reverse, batch_sizes):
    if not torch.is_grad_enabled():
        y, h_n, c_n, _ = ops.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes,
                                          reverse, False)
        return y, h_n, c_n
    y, h_n, c_n, _ = LSTMFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, w_hr,
                                        batch_sizes)
    return y, h_n, c_n


def _gru_cell(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, reverse, batch_sizes):
    if not torch.is_grad_enabled():
        y, h_n, _ = ops.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, False)
        return y, h_n
    y, h_n, _ = GRUFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, reverse, batch_sizes)
    return y, h_n


def lstm(x, hx, cx, weights, has_bias, num_layers, bidirectional, dropout=0.0, training=False,
         batch_sizes=None, has_proj=False):
    """Multi-layer LSTM. Returns y [T,N,D*P] (or [R,D*P]), h_n [L*D,N,P], c_n [L*D,N,H]."""
    y, (h_n, c_n) = _stack(_lstm_cell, x, (hx, cx), weights, has_bias, has_proj, num_layers,
                           bidirectional, dropout, training, batch_sizes)
    return y, h_n, c_n


def gru(x, hx, weights, has_bias, num_layers, bidirectional, dropout=0.0, training=False,
        batch_sizes=None):
    """Multi-layer GRU. Returns y [T,N,D*H] (or [R,D*H]), h_n [L*D,N,H]."""
    y, (h_n,) = _stack(_gru_cell, x, (hx,), weights, has_bias, False, num_layers, bidirectional,
                       dropout, training, batch_sizes)
    return y, h_n
