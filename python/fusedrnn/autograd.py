"""LSTMFunction and GRUFunction: the public autograd entry points to the fused kernels.

Each covers one layer and one direction over a whole sequence:

    y, h_n, c_n, ws = fusedrnn.LSTMFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse)
    y, h_n, ws      = fusedrnn.GRUFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, reverse)

x [T,N,I]; w_ih [G,I]; w_hh [G,H]; b_ih, b_hh [G] or None; h0, c0 [N,H]; y [T,N,H];
G = 4H (LSTM, gate order i,f,g,o) or 3H (GRU, r,z,n), torch.nn's layout.
reverse=True runs the recurrence from t=T-1 down to 0 (the backward direction of a
bidirectional layer); y keeps the time order of x. ws is the saved-activation
workspace that backward reads: non-differentiable, returned (not hidden) so that a
later differentiable backward can use it as an output of the graph.
"""
import torch

from ._ops import ops


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse=False):
        y, h_n, c_n, ws = ops.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse)
        ctx.mark_non_differentiable(ws)
        ctx.save_for_backward(x, w_ih, w_hh, h0, c0, y, ws)
        ctx.reverse = reverse
        ctx.has_bias = b_ih is not None
        return y, h_n, c_n, ws

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_ws):
        x, w_ih, w_hh, h0, c0, y, ws = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db = ops.lstm_backward(
            grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, y, ws, ctx.reverse
        )
        db_ih, db_hh = (db, db) if ctx.has_bias else (None, None)
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, None


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, reverse=False):
        y, h_n, ws = ops.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, reverse)
        ctx.mark_non_differentiable(ws)
        ctx.save_for_backward(x, w_ih, w_hh, h0, y, ws)
        ctx.reverse = reverse
        ctx.has_bias = b_ih is not None
        return y, h_n, ws

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, _grad_ws):
        x, w_ih, w_hh, h0, y, ws = ctx.saved_tensors
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = ops.gru_backward(
            grad_y, grad_h_n, x, w_ih, w_hh, h0, y, ws, ctx.reverse
        )
        if not ctx.has_bias:
            db_ih = db_hh = None
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, None
