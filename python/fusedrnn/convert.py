"""convert: swap torch.nn.LSTM / GRU submodules for fusedrnn's, or back, keeping the Parameters.

Example::

    model = nn.Sequential(nn.Embedding(1000, 64), nn.LSTM(64, 128, 2, batch_first=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fusedrnn.convert(model)             # model[1] is now a fusedrnn.LSTM; opt still trains it
    fusedrnn.convert(model, to="torch") # and back to nn.LSTM, e.g. before exporting
"""
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from .modules import GRU, LSTM

_TO_FUSED = {nn.LSTM: LSTM, nn.GRU: GRU}
_TO_TORCH = {LSTM: nn.LSTM, GRU: nn.GRU}

# The per-instance hook dictionaries of nn.Module (torch 2.10 .. 2.13). They are moved over
# as the same dict objects, so RemovableHandles taken on the old module still remove them.
_HOOK_DICTS = (
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def convert(model, to="fused"):
    """Replaces every nn.LSTM / nn.GRU in `model` by fusedrnn.LSTM / GRU (or back), in place.

    to="fused": nn.LSTM -> fusedrnn.LSTM, nn.GRU -> fusedrnn.GRU.
    to="torch": fusedrnn.LSTM -> nn.LSTM, fusedrnn.GRU -> nn.GRU (e.g. for export).

    Submodules are replaced recursively, and `model` itself when it is one (use the return
    value then). The new module has the same configuration (sizes, num_layers, bias,
    batch_first, dropout, bidirectional, proj_size) and holds the very same Parameter
    objects, so an optimizer built before the call, tensor hooks on the parameters and
    requires_grad flags keep working, and no weight memory is allocated: the new module is
    built on the "meta" device and then given the old module's state. Moved over with the
    Parameters: buffers, submodules, the module's own hooks (forward, backward, state_dict;
    their handles stay valid), the training flag, and weights that are plain tensors
    computed by a hook (torch.nn.utils.prune, the deprecated torch.nn.utils.weight_norm).

    Parametrized weights (torch.nn.utils.parametrize, e.g.
    torch.nn.utils.parametrizations.weight_norm) are supported: the new module takes over
    the old module's ParametrizationList objects, so the parametrizations' `original`
    Parameters are the same objects too.

    Only modules whose class is exactly nn.LSTM / nn.GRU (or fusedrnn.LSTM / GRU for
    to="torch"), possibly parametrized, are replaced; subclasses may override forward
    and are left as they are. A module that appears at several places in `model` is
    replaced by one new module everywhere.

    Returns `model`, or the new module when `model` itself was replaced.

        >>> model = nn.Sequential(nn.Embedding(100, 8), nn.LSTM(8, 16, 2))
        >>> model = convert(model)
        >>> type(model[1]).__name__
        'LSTM'
        >>> type(model[1]).__module__
        'fusedrnn.modules'
    """
    if to == "fused":
        mapping = _TO_FUSED
    elif to == "torch":
        mapping = _TO_TORCH
    else:
        raise ValueError(f'convert: to must be "fused" or "torch", got {to!r}')

    done = {}  # id(old) -> new, so a shared module stays shared

    def swap(module):
        if id(module) not in done:
            done[id(module)] = _swap(module, mapping[_base_class(module)])
        return done[id(module)]

    if _base_class(model) in mapping:
        return swap(model)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and _base_class(child) in mapping:
                setattr(parent, name, swap(child))
    return model


def _base_class(module):
    """The module's class, seen through the subclass that parametrize injects."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _swap(old, new_cls):
    kwargs = {
        "input_size": old.input_size, "hidden_size": old.hidden_size,
        "num_layers": old.num_layers, "bias": old.bias, "batch_first": old.batch_first,
        "dropout": old.dropout, "bidirectional": old.bidirectional, "device": "meta",
    }
    if old.mode == "LSTM":
        kwargs["proj_size"] = old.proj_size
    with warnings.catch_warnings():
        # The user saw the dropout-with-one-layer warning when building `old`.
        warnings.filterwarnings("ignore", message="dropout option adds dropout")
        new = new_cls(**kwargs)
    if new._flat_weights_names != old._flat_weights_names:
        raise RuntimeError(
            f"convert: weight names differ: {old._flat_weights_names} vs {new._flat_weights_names}"
        )

    if parametrize.is_parametrized(old):
        for name in old.parametrizations:
            if name not in new._parameters:
                raise ValueError(
                    f"convert: parametrization on {name!r}, which is not a weight of "
                    f"{type(old).__name__}; only weights can be parametrized"
                )
            # Installs the property on a fresh Parametrized class of `new`; the placeholder
            # ParametrizationList (around the meta weight) is replaced by the old one below.
            parametrize.register_parametrization(new, name, nn.Identity(), unsafe=True)
        new.parametrizations = old.parametrizations

    # Meta placeholders for weights the old module holds otherwise (parametrized, pruned).
    for name in list(new._parameters):
        if name not in old._parameters:
            del new._parameters[name]
    for name, p in old._parameters.items():
        setattr(new, name, p)
    for name, b in old._buffers.items():
        new.register_buffer(name, b, persistent=name not in old._non_persistent_buffers_set)
    for name, m in old._modules.items():
        if name != "parametrizations":
            setattr(new, name, m)
    for name in new._flat_weights_names:
        # A weight kept as a plain tensor attribute, recomputed by a forward pre-hook.
        if name in old.__dict__:
            setattr(new, name, old.__dict__[name])
    for name in _HOOK_DICTS:
        if name in old.__dict__:
            new.__dict__[name] = old.__dict__[name]
    new.training = old.training
    with torch.no_grad():  # _flat_weights holds parametrized weights' values, not a graph
        new._init_flat_weights()
    return new
