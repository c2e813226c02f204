"""Which modules of a model get a FourierFT adapter, and with which ``n_frequency``.

Matching follows PEFT 0.21 (``check_target_module_exists`` and ``_maybe_include_all_linear_layers``): a list target
matches a module name exactly or as a dotted suffix; a string target is a regex that must match the whole name;
``"all-linear"`` takes every Linear/Conv1D except the output head. Beyond PEFT, a target naming a container module
(``"mlp"``) adapts every supported layer inside it, and a target that matches nothing raises an error listing names
of this model that could be meant.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

from .config import FourierFTConfig
from .layer import FourierFTLayer, supported_layer_types
from .layers_extra import extra_layer_types

ALL_LINEAR = "all-linear"
SEQ_CLS_HEAD_NAMES = ("score", "classifier")

# PEFT's TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING (LoRA's table, GPT-2 and BigCode on mlp.c_proj).
TARGET_MODULE_MAPPING: dict[str, list[str] | str] = {
    "t5": ["q", "v"], "mt5": ["q", "v"], "bart": ["q_proj", "v_proj"], "gpt2": ["mlp.c_proj"],
    "bloom": ["query_key_value"], "blip-2": ["q", "v", "q_proj", "v_proj"], "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"], "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"], "deberta": ["in_proj"],
    "layoutlm": ["query", "value"], "llama": ["q_proj", "v_proj"], "llama4": ["q_proj", "v_proj"],
    "chatglm": ["query_key_value"], "gpt_bigcode": ["mlp.c_proj"], "mpt": ["Wqkv"],
    "RefinedWebModel": ["query_key_value"], "RefinedWeb": ["query_key_value"], "falcon": ["query_key_value"],
    "btlm": ["c_proj", "c_attn"], "codegen": ["qkv_proj"], "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"], "stablelm": ["q_proj", "v_proj"], "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"], "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)", "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"], "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "rwkv": ["key", "value", "receptance", "output"], "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}


@dataclass(frozen=True)
class Target:
    """A layer to adapt: its dotted name in the model, the layer, and its ``n_frequency``."""

    name: str
    module: nn.Module
    n_frequency: int


def _is_supported(module: nn.Module) -> bool:
    return isinstance(module, (FourierFTLayer, *supported_layer_types()))


def _layer_index_ok(config: FourierFTConfig, key: str) -> bool:
    """PEFT's ``layers_to_transform`` rule: the first ``<pattern>.<idx>.`` in the name must be a chosen index."""
    indexes = config.layers_to_transform
    if indexes is None or indexes == []:
        return True
    patterns = config.layers_pattern
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == indexes if isinstance(indexes, int) else index in indexes


def _matches_name(names: str | set[str], key: str) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    return key in names or any(key.endswith(f".{name}") for name in names)


def _is_excluded(config: FourierFTConfig, key: str) -> bool:
    if config.exclude_modules and _matches_name(config.exclude_modules, key):
        return True
    # Adapting a module that is also trained in full (modules_to_save) would make the two fight; PEFT refuses too.
    return any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.modules_to_save or [])


def _n_frequency_for(config: FourierFTConfig, keys: list[str]) -> int:
    """PEFT's rule (``re.match(rf".*\\.{key}$", name)``), tried on the layer's name, then on its container's."""
    for key in keys:
        for pattern, n in config.n_frequency_pattern.items():
            if re.match(rf"(.*\.)?{pattern}$", key):
                return n
    return config.n_frequency


def _all_linear_names(model: nn.Module, config: FourierFTConfig) -> set[str]:
    names = {n for n, m in model.named_modules() if n and _is_supported(m)}
    heads: list[nn.Module] = []
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        heads.append(output)
    elif config.task_type == "SEQ_CLS":
        heads += [getattr(model, n) for n in SEQ_CLS_HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)][:1]
    return {n for n in names if not any(model.get_submodule(n) is h for h in heads)}


def default_targets(model: nn.Module) -> list[str] | str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TARGET_MODULE_MAPPING:
        raise ValueError(
            f"target_modules is not set and there are no default targets for model type {model_type!r}: "
            "pass target_modules, e.g. a list of layer names or 'all-linear'"
        )
    return TARGET_MODULE_MAPPING[model_type]


def find_targets(model: nn.Module, config: FourierFTConfig) -> list[Target]:
    """Every layer to adapt, in ``named_modules`` order. Raises ``ValueError`` if the targets match nothing."""
    wanted = config.target_modules if config.target_modules is not None else default_targets(model)
    if isinstance(wanted, str) and wanted.lower() == ALL_LINEAR:
        wanted = _all_linear_names(model, config)
    found: dict[str, Target] = {}
    inside_adapted: set[str] = set()  # base layers of FourierFT layers are never targets themselves
    for key, module in model.named_modules():
        if not key or any(key.startswith(p + ".") for p in inside_adapted):
            continue
        if isinstance(module, FourierFTLayer):
            inside_adapted.add(key)
        if not _matches_name(wanted, key) or not _layer_index_ok(config, key) or _is_excluded(config, key):
            continue
        # Conv2d/Embedding only when named themselves: "all-linear" and container names mean linear layers.
        if _is_supported(module) or isinstance(module, extra_layer_types()):
            found[key] = Target(key, module, _n_frequency_for(config, [key]))
            continue
        for sub, child in module.named_modules():  # a container: adapt the supported layers inside it
            full = f"{key}.{sub}"
            if sub and _is_supported(child) and not _is_excluded(config, full) and "base_layer" not in sub.split("."):
                found.setdefault(full, Target(full, child, _n_frequency_for(config, [full, key])))
    if not found:
        raise ValueError(_no_match_message(model, wanted))
    return list(found.values())


def _no_match_message(model: nn.Module, wanted: str | set[str]) -> str:
    layer_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and _is_supported(m)})
    asked = [wanted] if isinstance(wanted, str) else sorted(wanted)
    close = sorted({c for a in asked for c in difflib.get_close_matches(a.rsplit(".", 1)[-1], layer_names, n=3)})
    hint = f" Did you mean {close}?" if close else ""
    return (
        f"target_modules {asked} matched no module of this model.{hint} "
        f"Its adaptable layers are named: {layer_names[:30]}"
    )
