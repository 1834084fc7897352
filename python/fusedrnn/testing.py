"""The equivalence check shared by the demo and the tests: one tolerance rule.

    err(fusedrnn vs float64 reference) <= 2 * err(torch.nn vs float64 reference) + FLOOR[dtype]

with relative error ||a - b|| / ||b||, checked for every output and every gradient
(input, h0, c0, each weight and bias by name).
"""
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .reference import gru_ref, lstm_ref

# The floor covers rounding noise where a comparison of two single draws means little:
# tiny gradients (H=1: 3-4 elements, sums of T*N terms with cancellation) and cases
# where torch.nn happens to be exact. Calibrated on 16 default + 150 sampled shapes x
# both cells x 6 seeds: the largest err(ours) - 2*err(torch.nn) was 1.9e-13 (float64),
# 1.4e-6 (float32, all at H=1; 1.2e-7 at H>=7), 1.3e-5 (float16), 3.0e-3 (bfloat16, one
# element rounded the other way); each floor is about 2x that. At H=1 over 30 seeds the
# median float32 error is 1.0e-7 for fusedrnn and 1.3e-7 for torch.nn, and torch.nn's own
# worst is 1.5e-6. Systematic error that hides under a floor is caught by
# tests/test_accuracy.py, which compares medians over seeds with no floor.
FLOOR = {
    torch.float64: 1e-12,
    torch.float32: 3e-6,
    torch.float16: 3e-5,
    torch.bfloat16: 1e-2,
}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    den = b.norm()
    return ((a - b).norm() / den).item() if den > 0 else (a - b).norm().item()


def bound(err_torch, dtype):
    return 2 * err_torch + FLOOR[dtype]


def _flat_outputs(cell, out):
    y, states = out
    if isinstance(y, PackedSequence):
        y = y.data
    return [y, *states] if cell == "LSTM" else [y, states]


def compare(torch_module, ours, x, hx=None, generator=None):
    """Runs torch.nn, fusedrnn and the float64 reference on the same weights and inputs.

    torch_module and ours must hold equal parameters. x is the module input ([T,N,I],
    batch_first or unbatched as the modules are configured); hx is None or the modules'
    hx. Random upstream gradients are backpropagated through every output. Returns a
    list of rows (name, err_ours, err_torch, err_ours_vs_torch, bound).
    """
    cell = "LSTM" if isinstance(torch_module, torch.nn.LSTM) else "GRU"
    dtype = x.data.dtype
    states = [] if hx is None else (list(hx) if cell == "LSTM" else [hx])

    def leaves(t, dt=None):
        if isinstance(t, PackedSequence):
            return t._replace(data=leaves(t.data, dt))
        return t.detach().to(dt or t.dtype).requires_grad_()

    def input_grad(xi):
        return (xi.data if isinstance(xi, PackedSequence) else xi).grad

    runs = {}
    for name, fn, dt in (
        ("torch", torch_module, None),
        ("ours", ours, None),
        ("ref", None, torch.float64),
    ):
        xi = leaves(x, dt)
        # cuDNN (torch.nn on CUDA) raises "rnn: hx is not contiguous"; fusedrnn and torch.nn
        # on the CPU take any strides. torch.nn gets contiguous copies on CUDA.
        si = [leaves(s.contiguous() if name == "torch" and s.is_cuda else s, dt)
              for s in states]
        if fn is None:
            params = {n: leaves(p, dt) for n, p in torch_module.named_parameters()}
            out = _run_reference(torch_module, xi, si, params)
        else:
            params = dict(fn.named_parameters())
            for p in params.values():
                p.grad = None
            arg = None if not si else (tuple(si) if cell == "LSTM" else si[0])
            out = fn(xi, arg)
            out = _flat_outputs(cell, out)
        runs[name] = (out, xi, si, params)

    g = torch.Generator().manual_seed(1234) if generator is None else generator
    grads_out = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in runs["ref"][0]]
    for out, *_ in runs.values():
        torch.autograd.backward(out, [go.to(o.dtype).to(o.device) for o, go in zip(out, grads_out)])

    names = ["output", "h_n", "c_n"] if cell == "LSTM" else ["output", "h_n"]
    rows = []

    def add(name, get):
        a, t, r = (get(runs[k]) for k in ("ours", "torch", "ref"))
        e_ours, e_torch = rel_err(a, r), rel_err(t, r)
        rows.append((name, e_ours, e_torch, rel_err(a, t), bound(e_torch, dtype)))

    for i, n in enumerate(names):
        add(n, lambda run, i=i: run[0][i])
    add("grad input", lambda run: input_grad(run[1]))
    for i, n in enumerate(["grad h0", "grad c0"][: len(states)]):
        add(n, lambda run, i=i: run[2][i].grad)
    for n in dict(torch_module.named_parameters()):
        add(f"grad {n}", lambda run, n=n: run[3][n].grad)
    return rows


def _run_reference(module, x, states, params):
    """The float64 oracle, configured like `module` (batch_first, unbatched, packed, hx=None).
    Packed input runs one sequence at a time, each over its own length."""
    is_lstm = isinstance(module, torch.nn.LSTM)
    D = 2 if module.bidirectional else 1
    P = module.proj_size if is_lstm and module.proj_size else module.hidden_size
    weights = [params[n] for n in module._flat_weights_names]
    args = (module.bias, module.num_layers, module.bidirectional)

    def run(x, states):  # time-major x [T,N,I]
        if not states:
            states = [x.new_zeros(module.num_layers * D, x.size(1), s)
                      for s in ([P, module.hidden_size] if is_lstm else [P])]
        if is_lstm:
            return list(lstm_ref(x, states[0], states[1], weights, *args, module.proj_size > 0))
        return list(gru_ref(x, states[0], weights, *args))

    if isinstance(x, PackedSequence):
        padded, lengths = pad_packed_sequence(x)
        per_seq = [
            run(padded[: int(n), i : i + 1], [s[:, i : i + 1] for s in states])
            for i, n in enumerate(lengths)
        ]
        # Back to packed order: the same rows pack_padded_sequence would take.
        ys = padded.new_zeros(padded.size(0), padded.size(1), per_seq[0][0].size(-1))
        ys = ys.index_put(
            tuple(i.to(ys.device) for i in _packed_index(lengths)),
            torch.cat([o[0][:, 0] for o in per_seq]),
        )
        y = torch.nn.utils.rnn.pack_padded_sequence(ys, lengths, enforce_sorted=False).data
        return [y] + [torch.cat([o[k] for o in per_seq], dim=1) for k in range(1, len(per_seq[0]))]

    is_batched = x.dim() == 3
    if not is_batched:
        x = x.unsqueeze(1)
        states = [s.unsqueeze(1) for s in states]
    elif module.batch_first:
        x = x.transpose(0, 1)
    outs = run(x, states)
    if not is_batched:
        return [outs[0].squeeze(1)] + [s.squeeze(1) for s in outs[1:]]
    if module.batch_first:
        outs[0] = outs[0].transpose(0, 1)
    return outs


def _packed_index(lengths):
    """(time, batch) indices of every sequence's steps, sequence after sequence."""
    t = torch.cat([torch.arange(int(n)) for n in lengths])
    b = torch.cat([torch.full((int(n),), i) for i, n in enumerate(lengths)])
    return t, b
