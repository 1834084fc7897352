"""Loads the compiled modules and registers a fake (meta) kernel for every op.

The fakes give torch.compile, torch.export and opcheck the output shapes without
running a kernel. Shapes: x [T,N,I], w_hh [G,H], h0/c0 [N,H], y [T,N,H].
"""
import torch

from . import _C  # noqa: F401  (loading the library registers the ops)

if torch.version.cuda:
    try:
        from . import _C_cuda  # noqa: F401
    except ImportError:  # a CPU-only build of fusedrnn: CUDA tensors have no kernel
        pass

ops = torch.ops.fusedrnn

# Workspace floats per (step, row, unit): LSTM i,f,g,o,c; GRU r,z,n,hn.
LSTM_SAVED = 5
GRU_SAVED = 4


def _opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    T, N, _ = x.shape
    H = w_hh.shape[1]
    torch._check(w_hh.shape[0] == 4 * H)
    return (
        x.new_empty(T, N, H),
        x.new_empty(N, H),
        x.new_empty(N, H),
        x.new_empty(T, N, LSTM_SAVED * H, dtype=_opmath(x.dtype)),
    )


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, y, workspace, reverse):
    H = w_hh.shape[1]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(x.shape[1], H),
        x.new_empty(x.shape[1], H),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(4 * H),
    )


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(x, w_ih, w_hh, b_ih, b_hh, h0, reverse):
    T, N, _ = x.shape
    H = w_hh.shape[1]
    torch._check(w_hh.shape[0] == 3 * H)
    return (
        x.new_empty(T, N, H),
        x.new_empty(N, H),
        x.new_empty(T, N, GRU_SAVED * H, dtype=_opmath(x.dtype)),
    )


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_y, grad_h_n, x, w_ih, w_hh, h0, y, workspace, reverse):
    H = w_hh.shape[1]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(x.shape[1], H),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(3 * H),
        w_hh.new_empty(3 * H),
    )
