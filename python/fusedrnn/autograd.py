"""LSTMFunction and GRUFunction: the public autograd entry points to the fused kernels.

Each covers one layer and one direction over a whole sequence:

    y, h_n, c_n, ws = fusedrnn.LSTMFunction.apply(
        x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, w_hr, batch_sizes)
    y, h_n, ws = fusedrnn.GRUFunction.apply(x, w_ih, w_hh, b_ih, b_hh, h0, reverse, batch_sizes)

x [T,N,I], or a PackedSequence's data [R,I] with its batch_sizes [T] (int64, CPU);
w_ih [G,I]; w_hh [G,P]; b_ih, b_hh [G] or None; h0 [N,P]; c0 [N,H]; y [T,N,P] or [R,P];
G = 4H (LSTM, gate order i,f,g,o) or 3H (GRU, r,z,n), torch.nn's layout. w_hr [P,H]
is the LSTM projection (proj_size = P) or None (P = H).
reverse=True runs the recurrence from t=T-1 down to 0 (the backward direction of a
bidirectional layer); y keeps the time order of x. ws is the saved-activation
workspace that backward reads: non-differentiable, returned (not hidden) so that a
later differentiable backward can use it as an output of the graph. When no input
requires grad (inference), nothing is saved and ws is empty.
"""
import torch

from . import composite
from ._ops import ops


def _differentiable_grads(fn, inputs, outputs_grads):
    """create_graph=True: recompute with differentiable ops and differentiate those, so
    the gradients carry a graph (double backward). None for inputs that need no grad."""
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    with torch.enable_grad():
        outs = fn(*inputs)
        grads = torch.autograd.grad(
            outs, [inputs[i] for i in wanted], outputs_grads, create_graph=True, allow_unused=True
        )
    result = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def _zeros_for(grads, outputs):
    """The output gradients, zeros where autograd passed None (an output the loss did not
    use). The Functions turn off autograd's own zero-filling (set_materialize_grads):
    it also filled a zero gradient for the non-differentiable workspace on every
    backward, 210 MB at T=50, N=256, H=1024 (LSTM, float32), page faults and all."""
    return tuple(torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs))


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse=False, w_hr=None, batch_sizes=None):
        y, h_n, c_n, ws = ops.lstm_forward(
            x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse,
            any(ctx.needs_input_grad),
        )
        ctx.mark_non_differentiable(ws)
        ctx.set_materialize_grads(False)  # see _zeros_for
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, ws, batch_sizes)
        ctx.reverse = reverse
        return y, h_n, c_n, ws

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_ws):
        x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, y, ws, batch_sizes = ctx.saved_tensors
        grad_y, grad_h_n, grad_c_n = _zeros_for((grad_y, grad_h_n, grad_c_n), (y, h0, c0))
        if torch.is_grad_enabled():  # create_graph=True
            dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dw_hr = _differentiable_grads(
                lambda *a: composite.lstm_layer(*a[:7], ctx.reverse, a[7], batch_sizes),
                [x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr], [grad_y, grad_h_n, grad_c_n],
            )
            return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, None, dw_hr, None
        dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = ops.lstm_backward(
            grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, y, ws, batch_sizes,
            ctx.reverse,
        )
        db_ih, db_hh = (db, db) if b_ih is not None else (None, None)
        dw_hr = dw_hr if w_hr is not None else None
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, None, dw_hr, None


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, reverse=False, batch_sizes=None):
        y, h_n, ws = ops.gru_forward(
            x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, any(ctx.needs_input_grad)
        )
        ctx.mark_non_differentiable(ws)
        ctx.set_materialize_grads(False)  # see _zeros_for
        ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, h0, y, ws, batch_sizes)
        ctx.reverse = reverse
        return y, h_n, ws

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, _grad_ws):
        x, w_ih, w_hh, b_ih, b_hh, h0, y, ws, batch_sizes = ctx.saved_tensors
        grad_y, grad_h_n = _zeros_for((grad_y, grad_h_n), (y, h0))
        if torch.is_grad_enabled():  # create_graph=True
            dx, dw_ih, dw_hh, db_ih, db_hh, dh0 = _differentiable_grads(
                lambda *a: composite.gru_layer(*a, ctx.reverse, batch_sizes),
                [x, w_ih, w_hh, b_ih, b_hh, h0], [grad_y, grad_h_n],
            )
            return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, None, None
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = ops.gru_backward(
            grad_y, grad_h_n, x, w_ih, w_hh, h0, y, ws, batch_sizes, ctx.reverse
        )
        if b_ih is None:
            db_ih = db_hh = None
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, None, None
