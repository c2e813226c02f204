"""Adapter checkpoints in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are PEFT's, with the adapter name removed:

    base_model.model.<layer>.fourierft_spectrum        (n,) coefficients of one adapted layer
    base_model.model.<module>.<param>                  a modules_to_save copy (e.g. classifier.weight)
    base_model.model.<layer>.base_layer.bias           trained biases (bias="fourier_only" / "all")

Spectral entries are not stored (they are regenerated from ``random_loc_seed``). The safetensors metadata also
records each layer's weight shape, which PEFT ignores, so that loading onto a base model of other shapes fails
with a message naming the layer. Loading checks every key and shape before it copies anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .io import atomic_write
from .model import FourierFTModel
from .sampling import check_entries

WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
_SHAPES_KEY = "fourierft_layer_shapes"

Setter = Callable[[torch.Tensor], None]


def _bias_keys(tuner: FourierFTModel, adapter_name: str) -> dict[str, torch.nn.Parameter]:
    bias = tuner.peft_config[adapter_name].bias
    if bias == "fourier_only":
        return {
            f"{name}.base_layer.bias": layer.base_layer.bias
            for name, layer in tuner.fourierft_layers()
            if adapter_name in layer.fourierft_adapters and getattr(layer.base_layer, "bias", None) is not None
        }
    if bias == "all":
        saved = [name + "." for name, _ in tuner.saved_modules()]
        return {
            name: p
            for name, p in tuner.model.named_parameters()
            if name.endswith(".bias") and ".fourierft_adapters." not in name and not any(name.startswith(s) for s in saved)
        }
    return {}


def _slots(tuner: FourierFTModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """Checkpoint key (without ``base_model.model.``) -> the model tensor it holds, for one adapter."""
    slots: dict[str, torch.Tensor] = {}
    stored = tuner.peft_config[adapter_name].entry_sampling != "uniform"  # see fourierft.sampling
    for name, layer in tuner.fourierft_layers():
        if adapter_name in layer.fourierft_adapters:
            slots[f"{name}.fourierft_spectrum"] = layer.fourierft_adapters[adapter_name].spectrum
            if stored:  # entries PEFT cannot regenerate travel with the checkpoint
                slots[f"{name}.fourierft_rows"] = layer.fourierft_adapters[adapter_name].rows
                slots[f"{name}.fourierft_cols"] = layer.fourierft_adapters[adapter_name].cols
    for name, wrapper in tuner.saved_modules():
        if adapter_name in wrapper.modules_to_save:
            for key, value in wrapper.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                slots[f"{name}.{key}"] = value
    slots.update(_bias_keys(tuner, adapter_name))
    return slots


def _layer_shapes(tuner: FourierFTModel, adapter_name: str) -> dict[str, list[int]]:
    return {
        name: [layer.out_features, layer.in_features]
        for name, layer in tuner.fourierft_layers()
        if adapter_name in layer.fourierft_adapters
    }


def _full(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 shards parameters as DTensors: gathering them is a collective, so every rank must get here.
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@contextmanager
def _gathered(tensors: list[torch.Tensor]) -> Iterator[None]:
    """DeepSpeed ZeRO-3 keeps only each rank's partition of a parameter: gather whole ones for the block (a
    collective, like FSDP2's ``full_tensor``)."""
    partitioned = [t for t in tensors if hasattr(t, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def adapter_state_dict(tuner: FourierFTModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint keys (whole, detached, contiguous, on the CPU)."""
    slots = _slots(tuner, adapter_name)
    with _gathered(list(slots.values())):
        return {PREFIX + k: _full(v.detach()).cpu().contiguous().clone() for k, v in slots.items()}


def save_adapter(tuner: FourierFTModel, adapter_name: str, directory: str | os.PathLike, write: bool = True) -> None:
    """Write one adapter's config and weights into ``directory``, each file atomically.

    Under data parallelism every rank calls this (sharded tensors are gathered); only ranks with ``write`` write.
    """
    if any(t.is_meta for t in _slots(tuner, adapter_name).values()):
        raise ValueError(f"adapter {adapter_name!r} has meta-device weights (low_cpu_mem_usage): load them first")
    tensors = adapter_state_dict(tuner, adapter_name)
    if not write:
        return
    os.makedirs(directory, exist_ok=True)
    metadata = {"format": "pt", _SHAPES_KEY: json.dumps(_layer_shapes(tuner, adapter_name))}
    atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    tuner.peft_config[adapter_name].save_pretrained(directory)


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors and recorded layer shapes from a saved adapter. ``.bin`` files load with ``weights_only=True``."""
    path = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(path):
        with safe_open(path, framework="pt") as fh:
            shapes = json.loads((fh.metadata() or {}).get(_SHAPES_KEY, "{}"))
            return {k: fh.get_tensor(k) for k in fh.keys()}, shapes
    legacy = os.path.join(directory, LEGACY_WEIGHTS_NAME)
    if os.path.isfile(legacy):
        return torch.load(legacy, map_location="cpu", weights_only=True), {}  # never unpickle arbitrary objects
    raise FileNotFoundError(f"no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}) in {os.fspath(directory)!r}")


def check_fits(tuner: FourierFTModel, adapter_name: str, state: dict[str, torch.Tensor],
               shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Match checkpoint tensors to the model's slots; raise ``ValueError`` naming the first mismatch."""
    slots = _slots(tuner, adapter_name)
    for name, layer in tuner.fourierft_layers():
        want = shapes.get(name)
        if adapter_name in layer.fourierft_adapters and want and want != [layer.out_features, layer.in_features]:
            raise ValueError(
                f"the adapter was trained on a different base model: layer {name!r} has weight shape "
                f"{[layer.out_features, layer.in_features]} here but {want} in the checkpoint"
            )
    keys = {k.removeprefix(PREFIX): k for k in state}
    # PEFT with bias="all" also writes "<head>.modules_to_save.bias" and "<head>.original_module.bias": copies of
    # "<head>.bias" and of the frozen original. They carry nothing new, so they are skipped.
    for name, _ in tuner.saved_modules():
        for key in [k for k in keys if k.startswith((f"{name}.modules_to_save.", f"{name}.original_module."))]:
            del keys[key]
    unexpected = sorted(set(keys) - set(slots))
    if unexpected:
        raise ValueError(
            f"the checkpoint has weights for {unexpected[0]!r}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + " that this model does not have: is it the adapter of another base model?"
        )
    missing = sorted(set(slots) - set(keys))
    if missing:
        raise ValueError(f"the checkpoint has no weights for {missing[0]!r} ({len(missing)} missing in all)")
    for key, slot in slots.items():
        value = state[keys[key]]
        if tuple(value.shape) != tuple(slot.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: the model has {tuple(slot.shape)}, the checkpoint {tuple(value.shape)}"
            )
    return {key: state[keys[key]] for key in slots}


@torch.no_grad()
def load_into(tuner: FourierFTModel, adapter_name: str, state: dict[str, torch.Tensor],
              shapes: dict[str, list[int]] | None = None) -> None:
    """Copy a checkpoint into adapter ``adapter_name``; all checks run first, so on error nothing is loaded."""
    matched = check_fits(tuner, adapter_name, state, shapes or {})
    for name, layer in tuner.fourierft_layers():
        if f"{name}.fourierft_rows" in matched:
            check_entries(matched[f"{name}.fourierft_rows"], matched[f"{name}.fourierft_cols"], layer.out_features,
                          layer.in_features, f"layer {name!r} of the checkpoint")
    device = next((p.device for p in tuner.model.parameters() if not p.is_meta), torch.device("cpu"))
    tuner.materialize(device)
    slots = _slots(tuner, adapter_name)  # after materialising: real tensors now
    for key, value in matched.items():
        slots[key].copy_(value.to(slots[key].dtype))
