"""How a linear layer serves the rows of a mixed batch whose adapters share their entries: one kernel call.

Adapters that share their entries (PEFT's default: every adapter of a shape drawn from one ``random_loc_seed``)
differ only in their coefficients, so :func:`fourierft.kernels.mixed.mixed_linear` runs them all at one adapter's
cost with a per-row weight vector. A layer remembers, per list of row names, which of its adapters form such groups
and (at inference) their weights: :func:`mixed_plan`, checked against the adapters' state before it is used
(:meth:`MixedPlan.holds`). Within one ``forward`` or ``generate`` call with ``adapter_names`` (:func:`call_scope`,
entered by the tuner) a layer checks that state at its first use only, not at every decoding step: nothing but the
caller's own callbacks inside ``generate`` (a logits processor, a streamer) runs between two steps, and the check
reads two attributes of each of the 3 K adapter tensors (21 against 7 us per call at K = 32 and 2 on the CPU,
bench/report_text.md). :func:`add_shared_entries` adds the groups' outputs to the frozen one.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch

from .kernels._cache import generation, index_key, watch_steps
from .kernels.dispatch import resolve_choice
from .kernels.mixed import MIXED_PATHS, mixed_linear, mixed_path, mixed_weights
from .mixed import BASE, device_tensor

# this thread's adapter_names call: (its number, the plans trusted in it); numbers are never reused
_call = threading.local()
_calls = itertools.count(1)


@contextmanager
def call_scope() -> Iterator[None]:
    """One ``adapter_names`` call: a plan checked at its first use inside is trusted for the rest of the block;
    when it ends the plans let go of the adapters' tables (nestable)."""
    outer = getattr(_call, "now", None)
    _call.now = (next(_calls), [])
    try:
        yield
    finally:
        for plan in _call.now[1]:
            plan.trusted = None
        _call.now = outer


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

    __slots__ = ("distinct", "groups", "rest", "refs", "stamp", "scalings", "weights", "trusted")

    def __init__(self, layer, distinct, groups, rest, tensors, stamp) -> None:
        self.distinct: tuple[str, ...] = distinct
        self.groups: list[SharedGroup] = groups
        self.rest: list[str] | None = rest
        self.refs = [weakref.ref(t) for t in tensors]  # the adapters' tensors, not kept alive by the plan
        self.stamp: tuple = stamp
        self.scalings = (dict(layer.fourierft_scaling), dict(layer._norm_factor))
        self.weights: dict[tuple, torch.Tensor] = {}  # (group, dtype, path) -> mixed_weights
        self.trusted: tuple[int, tuple] | None = None  # (call, tables): checked in that adapter_names call

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
    call = getattr(_call, "now", None)
    if hit is not None and call is not None and hit.trusted is not None and hit.trusted[0] == call[0]:
        return hit, hit.trusted[1]  # checked at its first use in this call
    distinct = hit.distinct if hit is not None else tuple(dict.fromkeys(names))
    state = None if memo is None else _state(layer, distinct)
    if state is None:
        tables, tensors, stamp = layer.adapter_tables(), [], ()
        memo = None
    else:
        tables, tensors, stamp = state
        if hit is not None and hit.holds(layer, tensors, stamp):
            return _trust(hit, tables, call), tables
    made = _make_plan(layer, names, device, distinct, tables, tensors, stamp)
    if memo is not None:
        memo.pop(key, None)
        while len(memo) >= _PLANS_PER_LAYER:
            memo.pop(next(iter(memo)))
        memo[key] = _trust(made, tables, call)
    return made, tables


def _trust(plan: MixedPlan, tables: tuple, call: tuple[int, list] | None) -> MixedPlan:
    """``plan``, marked as checked for the rest of the adapter_names ``call`` in progress (if any)."""
    if call is not None:
        plan.trusted = (call[0], tables)
        call[1].append(plan)
    return plan


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
