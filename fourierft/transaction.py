"""One transaction mechanism for every state-changing call: if the call fails, the model is as it was.

:func:`restoring` snapshots what wrapping, adding or loading an adapter can change (each submodule's children,
parameters and buffers, every parameter's ``requires_grad``, training flags, and the adapter bookkeeping of tuner
layers and tuners) and puts it all back if the block raises. Snapshots are shallow (references, not copies of
tensors), so they cost a few dicts per module. In-place writes into existing tensors are not undone: callers that
write values (loading a state dict) validate before writing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

_TUNER_STATE = ("peft_config", "active_adapter", "targeted_module_names", "targeted_parameter_names")
# ParameterDict and PEFT's BufferDict keep their key order in ``_keys``
_LAYER_STATE = ("_active_adapter", "merged_adapters", "_disable_adapters", "_norm_factor", "_keys")


def _copy_attr(value):
    return copy.copy(value) if isinstance(value, (dict, list, set)) else value


def _snapshot(module: nn.Module) -> dict:
    names = list(_LAYER_STATE)
    if isinstance(module, BaseTunerLayer):
        names += [n for n in module.other_param_names if not isinstance(getattr(module, n, None), nn.Module)]
    if isinstance(module, BaseTuner):
        names += _TUNER_STATE
    return {
        "_modules": dict(module._modules), "_parameters": dict(module._parameters), "_buffers": dict(module._buffers),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set), "training": module.training,
        "attrs": {n: _copy_attr(module.__dict__[n]) for n in names if n in module.__dict__},
        "added": set(module.__dict__),
    }


def _restore(module: nn.Module, snap: dict) -> None:
    for key in ("_modules", "_parameters", "_buffers"):
        getattr(module, key).clear()
        getattr(module, key).update(snap[key])
    module._non_persistent_buffers_set = snap["_non_persistent_buffers_set"]
    module.training = snap["training"]
    for name in set(module.__dict__) - snap["added"]:  # attributes the failed call added (e.g. model.peft_config)
        del module.__dict__[name]
    for name, value in snap["attrs"].items():
        current = module.__dict__.get(name)
        if type(current) is type(value) and isinstance(value, (dict, list, set)):
            current.clear()  # in place: others hold the same object (the tuner's peft_config is the model's)
            current.update(value) if isinstance(value, (dict, set)) else current.extend(value)
        else:
            module.__dict__[name] = value


class Snapshot:
    """What :func:`restoring` saves of ``roots`` and their submodules; :meth:`restore` puts it back."""

    def __init__(self, *roots: nn.Module) -> None:
        self._modules = {id(m): m for root in roots for m in root.modules()}
        self._snaps = {key: _snapshot(m) for key, m in self._modules.items()}
        self._grads = [(p, p.requires_grad) for root in roots for p in root.parameters()]

    def restore(self) -> None:
        for key, module in self._modules.items():
            _restore(module, self._snaps[key])
        for p, flag in self._grads:
            p.requires_grad_(flag)


@contextmanager
def restoring(*roots: nn.Module) -> Iterator[Snapshot]:
    """Undo every structural and bookkeeping change to ``roots`` (and their submodules) if the block raises."""
    snapshot = Snapshot(*roots)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise
