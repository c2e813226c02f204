"""``fourierft info``: an adapter's config, task, layers (with their weight shapes) and sizes; ``--plot`` its
spectrum."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ._errors import CLIError
from .adapters import adapter_task, read_adapter, read_weights
from .modeling import load_config
from .presets import recorded_base, resolve_model

_PREFIX = "base_model.model."
_MARKERS = (".fourierft_spectrum", ".fourierft_rows", ".fourierft_cols", ".lora_A", ".lora_B", ".lora_embedding_A",
            ".lora_embedding_B")
SHAPES_KEY = "fourierft_layer_shapes"  # safetensors metadata of fourierft 0.1 adapters: {layer: [out, in]}
TASK_WORDS = {"classification": "sequence classification", "causal-lm": "causal LM (prompt -> response)",
              "instruct": "causal LM, labelled text as chat instructions (answer = class name)"}


def split_layers(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Split saved tensors into ``{layer: {kind: tensor}}`` for the adapter and the rest (head, biases)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    other: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        plain = key.removeprefix(_PREFIX)
        for marker in _MARKERS:
            if marker in plain:
                layer, _ = plain.split(marker, 1)
                layers.setdefault(layer, {})[marker[1:]] = t
                break
        else:
            other[plain] = t
    return layers, other


def metadata_shapes(weights: Path) -> dict[str, list[int]]:
    """Layer shapes recorded in the safetensors header (no tensor is read)."""
    if weights.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(SHAPES_KEY)
        return {k.removeprefix(_PREFIX): list(v) for k, v in json.loads(raw).items()} if raw else {}
    except (OSError, ValueError, TypeError):
        return {}


def config_shapes(base: str, task: str, layers: list[str], n_labels: int | None) -> dict[str, list[int]]:
    """Layer shapes from the base model's config alone (built on the meta device: no weights are read)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    ref = resolve_model(base)
    if ref.gguf_file:
        raise CLIError(f"layer shapes of GGUF model '{base}' need its weights; pass --base with a model folder")
    cfg = load_config(ref)
    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    if n_labels and task == "classification":
        cfg.num_labels = n_labels
    with torch.device("meta"):
        model = cls.from_config(cfg)
    mods = dict(model.named_modules())
    shapes = {}
    for layer in layers:
        w = getattr(mods.get(layer), "weight", None)
        if w is not None:
            conv1d = type(mods[layer]).__name__ == "Conv1D"
            shapes[layer] = list(w.shape)[::-1] if conv1d else list(w.shape)
    return shapes


def info(args: argparse.Namespace) -> int:
    path, config, meta, weights = read_adapter(args.adapter)
    state = read_weights(weights)
    layers, other = split_layers(state)
    task = adapter_task(config, meta)
    n_labels = len(meta["classes"]) if meta.get("classes") else None
    shapes = {**metadata_shapes(weights), **(meta.get("layer_shapes") or {})}
    shape_note = ""
    if args.base or any(layer not in shapes for layer in layers):
        base = args.base or recorded_base(meta, config)
        try:
            shapes = {**config_shapes(base, task, list(layers), n_labels), **shapes} if base else shapes
        except CLIError as exc:
            if args.base:
                raise
            shape_note = f" (shapes unknown: {exc}; pass --base MODEL)"
    adapter_n = sum(t.numel() for parts in layers.values() for t in parts.values())
    other_n = sum(t.numel() for t in other.values())
    print(f"adapter: {path}  ({config['peft_type']}, base {recorded_base(meta, config) or 'not recorded'})")
    print(f"task: {TASK_WORDS[task]} (PEFT task_type {config.get('task_type') or 'none'})")
    print("config:")
    for key in sorted(config):
        if config[key] not in (None, [], {}, "") or key in ("target_modules", "modules_to_save"):
            print(f"  {key}: {json.dumps(config[key], default=str)}")
    print(f"layers ({len(layers)}){shape_note}:")
    for layer, parts in layers.items():
        shape = shapes.get(layer)
        dims = f"{shape[0]} x {shape[1]}" if shape else "?"
        sizes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in parts.items())
        print(f"  {layer}  [{dims}]  {sizes}  = {sum(t.numel() for t in parts.values()):,}")
    if other:
        print(f"trained in full (modules_to_save / bias): {len(other)} tensors, {other_n:,} parameters")
        for key, t in other.items():
            print(f"  {key}  {tuple(t.shape)}")
    folder_bytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"parameters: {adapter_n:,} adapter + {other_n:,} other = {adapter_n + other_n:,}")
    print(f"file: {weights.name} {weights.stat().st_size:,} bytes ({weights.stat().st_size / 1024:.1f} KiB); "
          f"folder {folder_bytes:,} bytes")
    if meta.get("classes"):
        print(f"classes: {', '.join(meta['classes'])}")
    if args.plot:
        _plot(args.plot, config, layers, shapes)
    return 0


def _plot(target: str, config: dict[str, Any], layers: dict[str, dict[str, torch.Tensor]],
          shapes: dict[str, list[int]]) -> None:
    if config["peft_type"] not in ("FOURIERFT", "FOURIERFT_STORED_ENTRIES"):
        raise CLIError(f"--plot draws FourierFT spectra; this is a {config['peft_type']} adapter")
    missing = [layer for layer in layers if layer not in shapes]
    if missing:
        raise CLIError(f"--plot needs the layer shapes: pass --base MODEL (unknown: {missing[0]})")
    out = Path(target)
    if not out.parent.exists():
        raise CLIError(f"--plot {target}: folder {out.parent} does not exist")
    from fourierft.entries import spectral_entries

    drawn = []
    for layer, parts in layers.items():
        c = parts["fourierft_spectrum"].flatten()
        out_f, in_f = shapes[layer]
        if "fourierft_rows" in parts:  # entries stored in the checkpoint (frequency-biased or composed adapters)
            u, v = parts["fourierft_rows"].flatten(), parts["fourierft_cols"].flatten()
        else:
            u, v = spectral_entries(out_f, in_f, c.numel(), int(config.get("random_loc_seed", 777)))
        drawn.append((layer, shapes[layer], u, v, c))
    from .plots import spectrum

    spectrum(drawn[:16], out)
    print(f"plot: {target} ({min(16, len(drawn))} of {len(drawn)} layers)")
