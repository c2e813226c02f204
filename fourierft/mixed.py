"""Mixed-adapter batches: one adapter name per row, ``peft_model(**batch, adapter_names=[...])``, at inference.

PEFT's ``PeftModel.forward``/``generate`` enter the tuner's ``_enable_peft_forward_hooks``; ours
(:func:`adapter_names_hooks`) validates the names and registers forward pre-hooks that hand ``adapter_names`` to
every FourierFT layer and ``modules_to_save`` wrapper, removed again when the call ends. Row ``i`` then gets exactly
the output it gets alone with adapter ``adapter_names[i]`` active; the reserved name :data:`BASE` (``"__base__"``,
PEFT's convention) means no adapter.

The batch must be dimension 0 of every adapted layer's input, as in PEFT, and the call's batch size (its first
tensor input's dimension 0) must equal ``len(adapter_names)``. ``generate`` expands rows in place (beam search,
``num_return_sequences``: ``repeat_interleave``) and some models flatten ``(batch, seq)`` rows into one dimension;
both keep each row's copies contiguous, so a layer whose leading size is ``k * len(names)`` repeats every name ``k``
times (:func:`expand_names`).

Linear layers send adapters that share their entries (PEFT's default: every adapter of a shape drawn from one
``random_loc_seed``) through one :func:`fourierft.kernels.mixed.mixed_linear` call, at one adapter's cost
(:func:`mixed_plan`, :func:`add_shared_entries`); the others go row group by row group. A batch whose rows all use
one adapter runs that adapter's plain forward.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import NamedTuple

import torch
from torch import nn

from .kernels._cache import generation, index_key, watch_steps
from .kernels.dispatch import resolve_choice
from .kernels.mixed import MIXED_PATHS, mixed_linear, mixed_path, mixed_weights

BASE = "__base__"
# inputs that carry the batch in dimension 0, looked up when a call passes no positional tensor
_BATCH_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "decoder_input_ids")


def expand_names(names: Sequence[str], rows: int) -> list[str]:
    """Names for a leading dimension of ``rows = k * len(names)`` (each row's copies are contiguous)."""
    if rows == len(names):
        return list(names)
    if not names or rows % len(names):
        raise ValueError(
            f"a layer got {rows} rows for {len(names)} adapter_names: the batch must be dimension 0 of the input")
    k = rows // len(names)
    return [n for n in names for _ in range(k)]


def device_tensor(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a tensor on ``device``, made once per distinct tuple and shared by every layer and call
    (decoding steps and a model's layers repeat the same names): a blocking host-to-device copy waits for the
    device, and that wait, once per layer and call, left the GPU idle between a mixed batch's layers. Callers only
    read it."""
    if torch.compiler.is_compiling():  # a constant of the graph
        return torch.tensor(values, dtype=dtype, device=device)
    return _device_tensor(values, dtype, device)


@lru_cache(maxsize=64)
def _device_tensor(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor: index_add may save it for a backward
        return torch.tensor(values, dtype=dtype, device=device)


def row_groups(names: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """``{name: (rows,) int64 row indices}``, in order of first appearance (read-only tensors, see
    :func:`device_tensor`)."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return {name: device_tensor(tuple(idx), torch.int64, device) for name, idx in rows.items()}


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """Dimension 0 of a call's first positional tensor, else of its first batch-carrying keyword; None if none."""
    for value in (*args, *(kwargs.get(k) for k in _BATCH_KEYS)):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def check_names(adapter_names, known: set[str], training: bool, rows: int | None = None) -> list[str]:
    """Validate per-row names (``rows``: the call's batch size, if known); raise ``ValueError`` (nothing changes) or
    return them as a list."""
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise ValueError(f"adapter_names must be a list of adapter names, one per row, got {adapter_names!r}")
    if training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode: call model.eval() first")
    unknown = sorted({n for n in adapter_names if n != BASE} - known)
    if unknown:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)} (adapters: "
                         f"{sorted(known)}; {BASE!r} means the base model)")
    if rows is not None and rows != len(adapter_names):
        raise ValueError(f"got {len(adapter_names)} adapter_names for a batch of {rows} rows: give exactly one adapter "
                         f"name per row ({BASE!r} for the base model)")
    return list(adapter_names)


def _pre_hook(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _check_rows_hook(module: nn.Module, args: tuple, kwargs: dict, names: int) -> None:
    rows = batch_size(args, kwargs)
    if rows is not None and rows != names:
        raise ValueError(f"got {names} adapter_names for a batch of {rows} rows: give exactly one adapter name per "
                         f"row ({BASE!r} for the base model)")


@contextmanager
def adapter_names_hooks(model: nn.Module, adapter_names, known: set[str], modules: list[nn.Module],
                        rows: int | None = None, repeat: int = 1) -> Iterator[None]:
    """Route row ``i`` through ``adapter_names[i]`` in ``modules`` for the calls inside the block.

    ``rows``: the call's batch size if known (checked against the names); ``repeat``: how often ``generate``
    repeats each row (beam search), so that every module is handed one name per expanded row.
    """
    names = check_names(adapter_names, known, model.training, rows)
    names = expand_names(names, len(names) * repeat)
    merged = [m for m in modules if getattr(m, "merged", False)]
    if merged:
        raise ValueError("adapters are merged into the weights: unmerge them before using adapter_names")
    handles = [m.register_forward_pre_hook(partial(_pre_hook, adapter_names=names), with_kwargs=True)
               for m in modules]
    if rows is None:  # PEFT's task wrappers hand the tuner no inputs: check them where the model receives them
        handles.append(model.register_forward_pre_hook(partial(_check_rows_hook, names=len(names)), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SharedGroup(NamedTuple):
    """Adapters of one layer that share their entries, as one mixed batch uses them."""

    names: tuple[str, ...]  # in order of first appearance; names[0]'s entries are the group's
    row_adapter: torch.Tensor  # (B,) int64: each row's index into names, len(names) for rows of other adapters
    scalings: torch.Tensor  # (K,) float64: each adapter's scaling


class MixedPlan:
    """How one layer serves one list of row names: the groups of adapters sharing entries (each one
    :func:`fourierft.kernels.mixed.mixed_linear` call), the names left for the row-group path (``rest``; None when
    no row is left) and, at inference, each group's weights. Valid while the layer's adapters, their entries,
    coefficients and scalings are as when it was made (:meth:`holds`)."""

    __slots__ = ("distinct", "groups", "rest", "refs", "stamp", "scalings", "weights")

    def __init__(self, layer, distinct, groups, rest, tensors, stamp) -> None:
        self.distinct: tuple[str, ...] = distinct
        self.groups: list[SharedGroup] = groups
        self.rest: list[str] | None = rest
        self.refs = [weakref.ref(t) for t in tensors]  # the adapters' tensors, not kept alive by the plan
        self.stamp: tuple = stamp
        self.scalings = (dict(layer.fourierft_scaling), dict(layer._norm_factor))
        self.weights: dict[tuple, torch.Tensor] = {}  # (group, dtype, path) -> mixed_weights

    def holds(self, layer, tensors: list[torch.Tensor], stamp: tuple) -> bool:
        """Whether ``layer``'s state (:func:`_state`) is still the one this plan was made for."""
        return (stamp == self.stamp and len(tensors) == len(self.refs)
                and all([ref() is t for ref, t in zip(self.refs, tensors)])
                and layer.fourierft_scaling == self.scalings[0] and layer._norm_factor == self.scalings[1])


# layer -> {(names, device): MixedPlan}; decoding asks for the same plan at every step and layer call
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLANS_PER_LAYER = 8


def _state(layer, distinct: Sequence[str]) -> tuple[tuple[dict, dict, dict], list[torch.Tensor], tuple] | None:
    """The layer's tables, the tensors of the adapters named (coefficients, rows, cols of each it holds) and a
    stamp of what a plan depends on besides their identity and the scalings: which adapters the layer holds, their
    entries (written in place: ``_version``; re-pointed: ``data_ptr``) and coefficients (also through a fused
    optimizer step: the caches' :func:`generation`). Two attribute reads per tensor: comparing or hashing the
    entries themselves would cost a copy from the device (and a wait for it) at every layer call. None for
    inference tensors (no version counter)."""
    tables = spectra, rows, cols = layer.adapter_tables()
    present = tuple([name for name in distinct if name in spectra])  # BASE and adapters this layer lacks: out
    tensors = [t for name in present for t in (spectra[name], rows[name], cols[name])]
    try:
        versions = [(t._version, t.data_ptr()) for t in tensors]
    except RuntimeError:
        return None
    return tables, tensors, (generation(), present, versions)


def _make_plan(layer, names: list[str], device: torch.device, distinct, tables, tensors, stamp) -> MixedPlan:
    spectra, rows, cols = tables
    classes: dict[tuple, list[str]] = {}
    for name in distinct:
        spectrum = spectra.get(name)
        if spectrum is None:
            continue
        key = (index_key(rows[name]), index_key(cols[name]), spectrum.dtype, spectrum.device)  # entries by content
        classes.setdefault(key, []).append(name)
    groups, shared = [], set()
    for group in (g for g in classes.values() if len(g) > 1):
        for name in group:
            if spectra[name].is_meta:
                layer.get_delta_weight(name)  # raises the clear error
        index = {name: i for i, name in enumerate(group)}
        row_adapter = device_tensor(tuple(index.get(n, len(group)) for n in names), torch.int64, device)
        groups.append(SharedGroup(tuple(group), row_adapter,
                                  device_tensor(tuple(layer.scaling(n) for n in group), torch.float64, device)))
        shared.update(group)
    rest = [BASE if name in shared else name for name in names]
    return MixedPlan(layer, distinct, groups, None if all(n == BASE for n in rest) else rest, tensors, stamp)


def mixed_plan(layer, names: list[str], device: torch.device) -> tuple[MixedPlan, tuple[dict, dict, dict]]:
    """The plan for ``names`` (one per row) on ``layer`` and the layer's ``(spectra, rows, cols)`` tables; made
    once per list of names and remembered while it holds (never under ``torch.compile``)."""
    key = (tuple(names), device)
    memo = None if torch.compiler.is_compiling() else _plans.setdefault(layer, {})
    hit = memo.get(key) if memo is not None else None
    distinct = hit.distinct if hit is not None else tuple(dict.fromkeys(names))
    state = None if memo is None else _state(layer, distinct)
    if state is None:
        tables, tensors, stamp = layer.adapter_tables(), [], ()
        memo = None
    else:
        tables, tensors, stamp = state
        if hit is not None and hit.holds(layer, tensors, stamp):
            return hit, tables
    made = _make_plan(layer, names, device, distinct, tables, tensors, stamp)
    if memo is not None:
        memo.pop(key, None)
        while len(memo) >= _PLANS_PER_LAYER:
            memo.pop(next(iter(memo)))
        memo[key] = made
    return made, tables


def _group_weights(layer, plan: MixedPlan, i: int, tables: tuple[dict, dict, dict],
                   x: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``(path, mixed_weights)`` of group ``i``; at inference (no autograd) made once per plan and dtype."""
    group = plan.groups[i]
    keep = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    path = layer.compute_path if layer.compute_path in MIXED_PATHS else "auto"
    spectra, rows = tables[0], tables[1][group.names[0]]
    stacked = None
    if keep:
        needs_grad = False
    else:
        stacked = torch.stack([spectra[name] for name in group.names])  # (K, n)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or stacked.requires_grad)
    if path == "factored" and needs_grad:  # the factored mixed form has no backward
        path = "auto"
    measured = None
    if path == "auto" and not needs_grad and not torch.compiler.is_compiling():
        first = group.names[0]  # one adapter's paths timed on this batch (CUDA), the same key a lone adapter has
        measured = resolve_choice(x, spectra[first], rows, tables[2][first], layer.out_features,
                                  layer.in_features, layer.scaling(first), training=False).seconds
    path = mixed_path(path, layer.out_features, layer.in_features, rows.numel(), x.device.type, needs_grad,
                      x.numel() // layer.in_features, measured)
    if not keep:
        return path, mixed_weights(stacked, group.scalings, rows, layer.out_features, x.dtype, path)
    hit = plan.weights.get((i, x.dtype, path))
    if hit is None:
        watch_steps()  # a fused optimizer writes coefficients without bumping their versions
        with torch.inference_mode(False):  # normal tensors: a later call with autograd on may read them
            stacked = torch.stack([spectra[name] for name in group.names])  # (K, n)
            hit = plan.weights[(i, x.dtype, path)] = mixed_weights(stacked, group.scalings, rows,
                                                                   layer.out_features, x.dtype, path)
    return path, hit


def add_shared_entries(layer, plan: MixedPlan, tables: tuple[dict, dict, dict], x: torch.Tensor,
                       result: torch.Tensor) -> torch.Tensor:
    """``result`` ``(B, ..., out_features)`` (this forward's own temporary) plus ``x[i] @ dW_{names[i]}.T`` for
    every row whose adapter is in one of ``plan``'s groups, one kernel call per group; outside autograd the sum is
    written into ``result`` (inside the last matmul when the dtypes agree)."""
    _, rows, cols = tables
    for i, group in enumerate(plan.groups):
        path, weights = _group_weights(layer, plan, i, tables, x)
        fusable = result.dtype == x.dtype and result.shape[:-1] == x.shape[:-1]
        into = (fusable and not torch.is_grad_enabled() and result.is_contiguous()
                and not torch.compiler.is_compiling())
        first = group.names[0]
        y = mixed_linear(x, weights, group.row_adapter, rows[first], cols[first], layer.out_features,
                         layer.in_features, path, base=result if fusable else None, into_base=into)
        result = y if fusable else result + y.to(result.dtype)
    return result
