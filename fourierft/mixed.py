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

Linear layers send adapters that share their entries through one kernel call (:mod:`fourierft.shared_entries`);
the others go row group by row group. A batch whose rows all use one adapter runs that adapter's plain forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial

import torch
from torch import nn

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
