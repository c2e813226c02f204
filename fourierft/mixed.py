"""Mixed-adapter batches: one adapter name per row, ``peft_model(**batch, adapter_names=[...])``, at inference.

PEFT's ``PeftModel.forward``/``generate`` enter the tuner's ``_enable_peft_forward_hooks``; ours
(:func:`adapter_names_hooks`) validates the names and registers forward pre-hooks that hand ``adapter_names`` to
every FourierFT layer and ``modules_to_save`` wrapper, removed again when the call ends. Row ``i`` then gets exactly
the output it gets alone with adapter ``adapter_names[i]`` active; the reserved name :data:`BASE` (``"__base__"``,
PEFT's convention) means no adapter.

The batch must be dimension 0 of every adapted layer's input, as in PEFT. ``generate`` expands rows in place (beam
search, ``num_return_sequences``: ``repeat_interleave``) and some models flatten ``(batch, seq)`` rows into one
dimension; both keep each row's copies contiguous, so a layer whose leading size is ``k * len(names)`` repeats every
name ``k`` times (:func:`expand_names`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

BASE = "__base__"


def expand_names(names: Sequence[str], rows: int) -> list[str]:
    """Names for a leading dimension of ``rows = k * len(names)`` (each row's copies are contiguous)."""
    if rows == len(names):
        return list(names)
    if not names or rows % len(names):
        raise ValueError(
            f"a layer got {rows} rows for {len(names)} adapter_names: the batch must be dimension 0 of the input")
    k = rows // len(names)
    return [n for n in names for _ in range(k)]


def row_groups(names: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """``{name: (rows,) int64 row indices}``, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return {name: torch.tensor(idx, dtype=torch.int64, device=device) for name, idx in rows.items()}


def check_names(adapter_names, known: set[str], training: bool) -> list[str]:
    """Validate per-row names; raise ``ValueError`` (nothing changes) or return them as a list."""
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise ValueError(f"adapter_names must be a list of adapter names, one per row, got {adapter_names!r}")
    if training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode: call model.eval() first")
    unknown = sorted({n for n in adapter_names if n != BASE} - known)
    if unknown:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)} (adapters: "
                         f"{sorted(known)}; {BASE!r} means the base model)")
    return list(adapter_names)


def _pre_hook(module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def adapter_names_hooks(model: nn.Module, adapter_names, known: set[str], modules: list[nn.Module]) -> Iterator[None]:
    """Route row ``i`` through ``adapter_names[i]`` in ``modules`` for the calls inside the block."""
    names = check_names(adapter_names, known, model.training)
    merged = [m for m in modules if getattr(m, "merged", False)]
    if merged:
        raise ValueError("adapters are merged into the weights: unmerge them before using adapter_names")
    handles = [m.register_forward_pre_hook(partial(_pre_hook, adapter_names=names), with_kwargs=True)
               for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
