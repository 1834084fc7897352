"""fusedrnn.LSTM and fusedrnn.GRU: drop-in torch.nn.LSTM / torch.nn.GRU on fused kernels.

They subclass nn.RNNBase, not nn.LSTM / nn.GRU: torch.compile refuses any nn.LSTM or
nn.GRU instance (subclasses included), and RNNBase already gives the same constructor
checks, parameter names, shapes, initial values and state_dict as torch.nn. The
forward-argument checks are torch.nn's own functions, so errors read the same.
"""
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import functional


def _permute(state, permutation):
    """Reorders a state's batch [L*D,N,P] (torch.nn's permute_hidden, one tensor)."""
    return state if permutation is None else state.index_select(1, permutation)


_TYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.bfloat16: "BFloat16",
               torch.float16: "Half"}


def _check_packed_lstm_input(data, w_ih):
    """torch.nn.LSTM does not check packed input; its first GEMM raises these."""
    if data.dim() == 2 and data.size(1) != w_ih.size(1):
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({data.size(0)}x{data.size(1)} and "
            f"{w_ih.size(1)}x{w_ih.size(0)})"
        )
    if data.dtype != w_ih.dtype and not torch.is_autocast_enabled(data.device.type):
        a, b = (_TYPE_NAMES.get(t, str(t)) for t in (data.dtype, w_ih.dtype))
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {a} and {b}")


def _check_packed_lstm_batch(states, batch, gates):
    """torch.nn.LSTM's errors for a packed input whose hx / cx batch is wrong: they come
    from its first step's arithmetic, so they are reproduced here word for word."""
    hb, cb = states[0].size(-2), states[1].size(-2)
    if hb == 1 and batch != 1:
        raise RuntimeError(
            f"output with shape [1, {gates}] doesn't match the broadcast shape [{batch}, {gates}]"
        )
    a, b = (hb, batch) if hb != batch else (batch, cb)
    if a != b:
        raise RuntimeError(
            f"The size of tensor a ({a}) must match the size of tensor b ({b}) at non-singleton "
            "dimension 0"
        )


class _FusedRNNBase(nn.RNNBase):
    def flatten_parameters(self):
        """A no-op: the kernels read torch.nn's per-layer parameters as they are."""

    def _weights(self):
        # Read by name at every call, so parametrizations and swapped tensors are seen
        # (they are not in _parameters; a registered parameter is read from there, which
        # skips nn.Module.__getattr__).
        params = self._parameters
        return [params[n] if n in params else getattr(self, n) for n in self._flat_weights_names]

    def _run(self, fn, x, states, weights, *args):
        """Calls fn(x, *states, weights, *args). Under autocast, the layers run in the
        autocast dtype as torch.nn's do: float16 on CUDA (as cuDNN's RNN autocast), the
        autocast dtype on the CPU (bfloat16 by default); the casts are differentiable."""
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return fn(x, *states, weights, *args)
        dtype = torch.float16 if device == "cuda" else torch.get_autocast_dtype(device)
        x, states = x.to(dtype), [s.to(dtype) for s in states]
        weights = [w.to(dtype) for w in weights]
        with torch.autocast(device, enabled=False):
            return fn(x, *states, weights, *args)

    def _check_devices(self, input, states, weights):
        """torch.nn's device checks (from its C++ RNN entry), word for word."""
        device = input.device
        for w in weights:
            if w.device != device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input "
                    f"tensor at {input.device} and parameter tensor at {w.device}"
                )
        for s in states:
            if s.device != device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor "
                    f"at {input.device} and hidden tensor at {s.device}"
                )

    def _zeros(self, input, batch, n_states):
        D = 2 if self.bidirectional else 1
        sizes = [self.proj_size or self.hidden_size, self.hidden_size][:n_states]
        return tuple(
            torch.zeros(self.num_layers * D, batch, s, dtype=input.dtype, device=input.device)
            for s in sizes
        )

    def _prepare(self, input, hx, name, n_states, weights):
        """torch.nn's input handling. Returns the time-major input (or packed data), the
        states, batch_sizes (None unless packed) and how to restore the output's form."""
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if n_states == 2:
                _check_packed_lstm_input(data, self.weight_ih_l0)
            if hx is None:
                hx = self._zeros(data, batch_sizes[0], n_states)
                if n_states == 1:  # torch.nn checks GRU's packed input, not LSTM's
                    self.check_forward_args(data, hx[0], batch_sizes)
            else:
                states = hx if n_states == 2 else (hx,)
                if n_states == 2:
                    _check_packed_lstm_batch(states, int(batch_sizes[0]), 4 * self.hidden_size)
                # torch.nn.LSTM skips this check on packed input and then crashes
                # (segfaults) on a wrong layer count or size; here its own message is raised.
                self.check_forward_args(data, hx, batch_sizes)
                hx = tuple(_permute(s, sorted_indices) for s in states)
            self._check_devices(data, hx, weights)
            return data, hx, batch_sizes, (input, None)
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = self._zeros(input, batch, n_states)
        else:
            states = hx if n_states == 2 else (hx,)
            want = 3 if is_batched else 2
            if any(s.dim() != want for s in states):
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                if n_states == 2:
                    dims = f"({states[0].dim()}-D, {states[1].dim()}-D) tensors"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got {dims}"
                    )
                raise RuntimeError(
                    f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor"
                )
            hx = tuple(s if is_batched else s.unsqueeze(1) for s in states)
        self.check_forward_args(input, hx if n_states == 2 else hx[0], None)
        self._check_devices(input, hx, weights)
        if self.batch_first:
            input = input.transpose(0, 1)
        if input.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        return input, hx, None, (None, is_batched)

    def _finish(self, y, states, form):
        packed, is_batched = form
        if packed is not None:
            y = PackedSequence(y, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            return y, tuple(_permute(s, packed.unsorted_indices) for s in states)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(1 if not self.batch_first else 0)
            states = tuple(s.squeeze(1) for s in states)
        return y, states


class LSTM(_FusedRNNBase):
    """Drop-in torch.nn.LSTM. Same arguments.

    input [T,N,I] (or [N,T,I] with batch_first, unbatched [T,I], or a PackedSequence);
    returns output [T,N,D*P], (h_n [L*D,N,P], c_n [L*D,N,H]), P = proj_size or H.
    """

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input, hx=None):
        weights = self._weights()
        x, (h0, c0), batch_sizes, form = self._prepare(input, hx, "LSTM", 2, weights)
        y, h_n, c_n = self._run(
            functional.lstm, x, (h0, c0), weights, self.bias, self.num_layers, self.bidirectional,
            self.dropout, self.training, batch_sizes, self.proj_size > 0,
        )
        y, (h_n, c_n) = self._finish(y, (h_n, c_n), form)
        return y, (h_n, c_n)


class GRU(_FusedRNNBase):
    """Drop-in torch.nn.GRU. Same arguments.

    input [T,N,I] (or [N,T,I] with batch_first, unbatched [T,I], or a PackedSequence);
    returns output [T,N,D*H], h_n [L*D,N,H].
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input, hx=None):
        weights = self._weights()
        x, (h0,), batch_sizes, form = self._prepare(input, hx, "GRU", 1, weights)
        y, h_n = self._run(
            functional.gru, x, (h0,), weights, self.bias, self.num_layers, self.bidirectional,
            self.dropout, self.training, batch_sizes,
        )
        y, (h_n,) = self._finish(y, (h_n,), form)
        return y, h_n
