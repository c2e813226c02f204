"""Mixed-adapter batches: one adapter name per row of a batch, ``model(**batch, adapter_names=[...])``.

PEFT ignores ``adapter_names`` for FourierFT; here every row gets exactly the output it would get alone with its
adapter active (``set_adapter(name)``), and the reserved name :data:`BASE` (``"__base__"``, PEFT's convention)
means "no adapter" for that row.

How: :func:`mixed_batch` (entered by ``PeftModel.forward``/``generate``) sets the plain attribute
``mixed_adapter_names`` on every FourierFT layer and ``modules_to_save`` wrapper, and clears it in ``finally``, so
nothing outlives the call. A layer that sees the attribute runs :func:`layer_forward`: the frozen base layer once on
the whole batch, then each adapter's delta only on its own rows (rows grouped per adapter: one delta call per
distinct adapter, not per row). Full-module copies (:func:`wrapper_forward`, e.g. a classifier head) run per group.

The batch must be dimension 0 of every adapted layer's input, as in PEFT. ``generate`` expands rows in place
(beam search, ``num_return_sequences``: ``repeat_interleave``) and some models flatten ``(batch, seq)`` rows into
one dimension; both keep each row's copies contiguous, so a layer whose leading size is ``k * len(names)`` repeats
every name ``k`` times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

BASE = "__base__"
_BATCH_KEYS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "decoder_input_ids")


def batch_size_of(args: tuple, kwargs: dict) -> int:
    """The batch size of a forward/generate call: dim 0 of its first tensor input (``input_ids`` etc. first)."""
    for key in _BATCH_KEYS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key].shape[0]
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("adapter_names was given but the call has no tensor input to take the batch size from")


def check_names(tuner, adapter_names: Sequence[str], batch_size: int) -> list[str]:
    """Validate per-row names against the model; raise ``ValueError`` (nothing changes) or return them as a list."""
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise ValueError(f"adapter_names must be a list of adapter names, one per row, got {adapter_names!r}")
    names = list(adapter_names)
    if len(names) != batch_size:
        raise ValueError(f"adapter_names has {len(names)} names but the batch has {batch_size} rows: give one per row")
    unknown = sorted({n for n in names if n != BASE and n not in tuner.peft_config})
    if unknown:
        raise ValueError(
            f"unknown adapter(s) {unknown} in adapter_names; adapters: {sorted(tuner.peft_config)} "
            f"(or {BASE!r} for the base model)"
        )
    if tuner.model.training:
        raise ValueError("adapter_names (mixed-adapter batches) is for inference: call model.eval() first")
    merged = [name for name, layer in tuner.fourierft_layers() if layer.merged_adapters]
    if merged:
        raise ValueError(f"adapters are merged into {merged[0]!r}: unmerge them before using adapter_names")
    return names


@contextmanager
def mixed_batch(tuner, adapter_names: Sequence[str], batch_size: int) -> Iterator[None]:
    """Route row ``i`` through adapter ``adapter_names[i]`` for the calls inside the block; always undone after."""
    names = check_names(tuner, adapter_names, batch_size)
    modules = [m for _, m in [*tuner.fourierft_layers(), *tuner.saved_modules()]]
    try:
        for module in modules:
            module.mixed_adapter_names = names
        yield
    finally:
        for module in modules:
            module.mixed_adapter_names = None


def _expand(names: list[str], rows: int) -> list[str]:
    """Names for a leading dimension of ``rows`` = ``k * len(names)`` (each row's copies are contiguous)."""
    if rows == len(names):
        return names
    if rows % len(names):
        raise ValueError(
            f"a layer got {rows} rows for {len(names)} adapter_names: the batch must be dimension 0 of the input"
        )
    k = rows // len(names)
    return [n for n in names for _ in range(k)]


def _groups(names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """``{name: (rows,) int64 row indices}``, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return {name: torch.tensor(idx, dtype=torch.int64, device=device) for name, idx in rows.items()}


def layer_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A FourierFT layer's output with per-row adapters: ``base(x)`` plus, on each group's rows, its delta."""
    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters:
        return result
    for name, idx in _groups(_expand(layer.mixed_adapter_names, x.shape[0]), x.device).items():
        if name == BASE or name not in layer.fourierft_adapters:  # an adapter absent here adds nothing, as alone
            continue
        delta = layer.adapter_delta(name, x.index_select(0, idx))
        result = result.index_add(0, idx, delta.to(result.dtype))
    return result


def wrapper_forward(wrapper, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A ``modules_to_save`` wrapper with per-row adapters: each group runs its own copy (or the original)."""
    if wrapper.disable_adapters:
        return wrapper.original_module(x, *args, **kwargs)
    out = None
    for name, idx in _groups(_expand(wrapper.mixed_adapter_names, x.shape[0]), x.device).items():
        module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
        part = module(x.index_select(0, idx), *args, **kwargs)
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[idx] = part
    return out
