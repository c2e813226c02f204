"""Saved adapters read back for ``eval``, ``merge`` and ``info``: one-line errors for anything that is not an
adapter, does not fit its base, or names a base that is not here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import CLIError
from .modeling import META_FILE, first_line, load_base, load_config, load_tokenizer
from .presets import ModelRef, recorded_base, resolve_model


def read_adapter(folder: str) -> tuple[Path, dict[str, Any], dict[str, Any], Path]:
    """``(folder, adapter_config, cli metadata, weights file)`` with one-line errors for anything else."""
    path = Path(folder)
    if not path.exists():
        raise CLIError(f"{folder}: no such adapter folder")
    if not path.is_dir():
        raise CLIError(f"{folder}: is a file; an adapter is a folder holding adapter_config.json")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        hint = " (it holds a full model: config.json)" if (path / "config.json").exists() else ""
        raise CLIError(f"{folder}: not an adapter folder, no adapter_config.json{hint}")
    weights = next((path / f for f in ("adapter_model.safetensors", "adapter_model.bin") if (path / f).exists()), None)
    if weights is None:
        raise CLIError(f"{folder}: adapter_config.json but no adapter_model.safetensors")
    try:
        config = json.loads(cfg_file.read_text())
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(f"{folder}: unreadable adapter config ({first_line(exc)})") from exc
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CLIError(f"{folder}: adapter_config.json has no peft_type")
    return path, config, meta, weights


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights))
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CLIError(f"{weights}: unreadable adapter weights ({first_line(exc)})") from exc


def _classes_from_weights(state: dict[str, torch.Tensor]) -> list[str] | None:
    for key, t in state.items():
        if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")) and t.ndim == 2:
            return [str(i) for i in range(t.shape[0])]
    return None


def base_ref(folder: str, base: str | None, meta: dict[str, Any], config: dict[str, Any]) -> ModelRef:
    """The base model of an adapter: ``--base`` if given, else the one it records, resolved to a local copy."""
    if base:
        return resolve_model(base)
    named = recorded_base(meta, config)
    if not named:
        raise CLIError(f"{folder} does not name its base model: pass --base MODEL")
    try:
        ref = resolve_model(named)
        if not ref.is_local and not ref.gguf_file:
            load_config(ref)  # a hub id: is it reachable (cache or network)?
    except CLIError as exc:
        raise CLIError(f"{folder} was trained on '{named}', which is not available here ({exc}); "
                       "pass --base MODEL (a folder or hub id of that model)") from exc
    return ref


def adapter_task(config: dict[str, Any], meta: dict[str, Any]) -> str:
    if meta.get("task") in ("classification", "causal-lm", "instruct"):
        return meta["task"]
    return "causal-lm" if config.get("task_type") == "CAUSAL_LM" else "classification"


def load_adapted(folder: str, base: str | None, dtype: str = "float32") -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(adapted model in eval mode, tokenizer, info)`` for eval and merge; raises CLIError if it does not fit."""
    path, config, meta, weights = read_adapter(folder)
    state = read_weights(weights)
    ref = base_ref(folder, base, meta, config)
    name = ref.portable
    task = adapter_task(config, meta)
    classes = (meta.get("classes") or _classes_from_weights(state)) if task != "causal-lm" else None
    if not classes and task != "causal-lm":
        raise CLIError(f"{folder}: cannot tell the number of classes (no {META_FILE}, no classifier weights)")
    tok = load_tokenizer(ref)
    model, _ = load_base(ref, task, classes, tok.pad_token_id, dtype)
    want = meta.get("layer_shapes", {})
    have = dict(model.named_modules())
    for layer, shape in want.items():
        mod = have.get(layer)
        got = getattr(mod, "weight", None)
        if mod is None or got is None:
            raise CLIError(f"adapter {folder} does not fit model '{name}': it has no layer {layer}")
        dims = list(got.shape) if type(mod).__name__ != "Conv1D" else list(got.shape)[::-1]
        if dims != shape:
            raise CLIError(f"adapter {folder} does not fit model '{name}': {layer} is {dims}, adapter expects {shape}")
    ours = config["peft_type"] in ("FOURIERFT", "FOURIERFT_STORED_ENTRIES")  # the latter: entries saved, not seeded
    if ours:
        import fourierft

        loader = fourierft.PeftModel
    else:
        import peft

        loader = peft.PeftModel
    try:
        adapted = loader.from_pretrained(model, str(path), is_trainable=False)
    except Exception as exc:
        raise CLIError(f"adapter {folder} does not fit model '{name}': {first_line(exc)}") from exc
    _check_loaded(adapted, state, folder, name)  # PEFT's loader only warns about keys it could not place
    adapted.eval()
    return adapted, tok, {"base": name, "ref": ref, "task": task, "classes": classes, "meta": meta,
                          "config": config}


def _check_loaded(model: nn.Module, state: dict[str, torch.Tensor], folder: str, name: str) -> None:
    """Every saved tensor must land on a same-shaped tensor (PEFT only warns about keys it could not place)."""
    loaded: dict[str, tuple[int, ...]] = {}
    for key, t in model.state_dict().items():
        plain = key.replace(".modules_to_save.default", "").replace(".default", "")
        loaded[plain] = tuple(t.shape)
    for key, t in state.items():
        plain = key.replace(".default", "")
        if plain not in loaded:
            raise CLIError(f"adapter {folder} does not fit model '{name}': nothing to load {key} into")
        if loaded[plain] != tuple(t.shape):
            raise CLIError(f"adapter {folder} does not fit model '{name}': {key} is {tuple(t.shape)}, "
                           f"the model has {loaded[plain]}")
