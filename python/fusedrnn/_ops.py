"""Loads the compiled modules and registers a fake (meta) kernel for every op.

The fakes give torch.compile, torch.export and opcheck the output shapes without
running a kernel. Shapes: see csrc/registry.cpp (x [T,N,I] or packed [R,I]).
"""
import torch

from . import _C  # noqa: F401  (loading the library registers the ops)

if torch.version.cuda:
    # A fusedrnn built without nvcc has no _C_cuda: CUDA tensors then get the dispatcher's
    # "no kernel for CUDA" error. One that exists but cannot load (built for another CUDA
    # major version than this torch's, say) says why, and the CPU ops still work.
    try:
        from . import _C_cuda  # noqa: F401
    except ModuleNotFoundError:
        pass
    except ImportError as e:
        import warnings

        warnings.warn(f"fusedrnn: the CUDA module failed to load, CUDA tensors are not "
                      f"supported: {e}", RuntimeWarning, stacklevel=2)

ops = torch.ops.fusedrnn

# Workspace floats per (step, row, unit): LSTM i,f,g,o,c; GRU r,z,n,hn.
LSTM_SAVED = 5
GRU_SAVED = 4


def _opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(x, batch_sizes):
    """Leading dims of y and the workspace: [T,N] padded, [R] packed."""
    return tuple(x.shape[:-1]) if batch_sizes is None else (x.shape[0],)


def _workspace(x, lead, width, save):
    """[*lead, width] in opmath; [0] when nothing is saved for backward (save=False)."""
    shape = (*lead, width) if save else (0,)
    return x.new_empty(shape, dtype=_opmath(x.dtype))


@torch.library.register_fake("fusedrnn::lstm_forward")
def _lstm_forward_fake(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save=True):
    H, P = w_ih.shape[0] // 4, w_hh.shape[1]
    lead = _rows(x, batch_sizes)
    return (
        x.new_empty(*lead, P),
        x.new_empty(h0.shape),
        x.new_empty(c0.shape),
        _workspace(x, lead, LSTM_SAVED * H, save),
    )


@torch.library.register_fake("fusedrnn::lstm_backward")
def _lstm_backward_fake(
    grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, y, workspace, batch_sizes, reverse
):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(w_ih.shape[0]),
        w_hh.new_empty(w_hr.shape if w_hr is not None else (0,)),
    )


@torch.library.register_fake("fusedrnn::gru_forward")
def _gru_forward_fake(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, save=True):
    H = w_hh.shape[1]
    lead = _rows(x, batch_sizes)
    return (
        x.new_empty(*lead, H),
        x.new_empty(h0.shape),
        _workspace(x, lead, GRU_SAVED * H, save),
    )


@torch.library.register_fake("fusedrnn::gru_backward")
def _gru_backward_fake(grad_y, grad_h_n, x, w_ih, w_hh, h0, y, workspace, batch_sizes, reverse):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        h0.new_empty(h0.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(w_ih.shape[0]),
        w_hh.new_empty(w_ih.shape[0]),
    )
