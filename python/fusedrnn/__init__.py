"""fusedrnn: fused LSTM and GRU kernels for PyTorch, drop-in for torch.nn.LSTM / GRU."""
from . import _ops  # noqa: F401  (loads the kernels and their fake implementations)
from .autograd import GRUFunction, LSTMFunction
from .convert import convert
from .modules import GRU, LSTM

__all__ = ["LSTM", "GRU", "LSTMFunction", "GRUFunction", "convert"]
__version__ = "0.1.0"
