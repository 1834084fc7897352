"""One layer and one direction as a time loop of differentiable torch ops.

The create_graph=True path: LSTMFunction / GRUFunction's backward recomputes the layer
with these ops and differentiates them with create_graph, so gradients are themselves
differentiable (double backward, gradgradcheck, Hessian-vector products). Exact, but
slower than the fused backward: T steps of small ops instead of one fused pass each.
Same layout as the ops: x [T,N,I] or packed [R,I] with batch_sizes; h0 [N,P]; c0 [N,H].
"""
import torch


def _steps(x, batch_sizes):
    """(row offset, active rows) of every step."""
    if batch_sizes is None:
        T, N = x.shape[:2]
        return [(t * N, N) for t in range(T)], x.reshape(T * N, -1)
    sizes = batch_sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    return list(zip(offsets, sizes)), x


def _layer(step, x, states, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes):
    steps, x2 = _steps(x, batch_sizes)
    xg = x2 @ w_ih.T
    if b_ih is not None:
        xg = xg + b_ih
    order = reversed(steps) if reverse else steps
    ys = {}
    for off, B in order:
        active = [s[:B] for s in states]
        gh = active[0] @ w_hh.T
        if b_hh is not None:
            gh = gh + b_hh
        new = step(xg[off : off + B], gh, active)
        states = [torch.cat([n, s[B:]]) for n, s in zip(new, states)]
        ys[off] = new[0]
    y = torch.cat([ys[off] for off, _ in steps])
    if batch_sizes is None:
        y = y.reshape(x.shape[0], x.shape[1], -1)
    return y, states


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse=False, w_hr=None, batch_sizes=None):
    """Returns y, h_n, c_n."""

    def step(xg, gh, states):
        i, f, g, o = (xg + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * states[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return [h if w_hr is None else h @ w_hr.T, c]

    y, (h, c) = _layer(step, x, [h0, c0], w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    return y, h, c


def gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=False, batch_sizes=None):
    """Returns y, h_n."""

    def step(xg, gh, states):
        xr, xz, xn = xg.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return [n + z * (states[0] - n)]

    y, (h,) = _layer(step, x, [h0], w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    return y, h
