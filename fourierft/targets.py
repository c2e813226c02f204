"""Which FourierFT layer class a base module gets, and what in a config matches nothing or cannot be a name.

Pure functions over modules and configs, used by :mod:`fourierft.tuner` (and the registry and composer for adapter
names). PEFT's own targeting rules are applied by PEFT; these add what PEFT lacks: container targets, errors that name
the model's layers, and warnings for entries that match nothing.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings

from torch import nn

from .layer import Conv2d, Embedding, FourierFTLayer, Linear
from .quantized import quantization_kind


def _conv1d_class() -> type[nn.Module] | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def layer_class_for(base: nn.Module) -> tuple[type[FourierFTLayer], bool]:
    """The FourierFT layer class for a base layer, and whether its weight is stored ``(in, out)``."""
    conv1d = _conv1d_class()
    if conv1d is not None and isinstance(base, conv1d):
        return Linear, True
    if isinstance(base, nn.Linear) or (quantization_kind(base) is not None and hasattr(base, "in_features")):
        return Linear, False
    if isinstance(base, nn.Conv2d):
        return Conv2d, False
    if isinstance(base, nn.Embedding):
        return Embedding, False
    raise TypeError(
        f"Target module {base} is not supported. FourierFT adapts torch.nn.Linear, transformers' Conv1D, "
        "torch.nn.Conv2d and torch.nn.Embedding (and bitsandbytes/torchao quantized linear layers)")


def is_adaptable(module: nn.Module) -> bool:
    try:
        layer_class_for(module)
    except TypeError:
        return False
    return True


def is_excluded(config, key: str) -> bool:
    """PEFT's ``exclude_modules`` rule: a regex matching the whole name, or a name or dotted suffix in a list."""
    excluded = config.exclude_modules
    if isinstance(excluded, str):
        return re.fullmatch(excluded, key) is not None
    return any(key == e or key.endswith("." + e) for e in excluded or [])


def ancestors(root: nn.Module, sub: str) -> list[nn.Module]:
    """The modules from ``root`` down to, not including, ``root.get_submodule(sub)``."""
    parts = sub.split(".")
    return [root.get_submodule(".".join(parts[:i])) for i in range(len(parts))]


def no_match_hint(model: nn.Module, wanted) -> str:
    """Names of this model's adaptable layers, closest to ``wanted`` first, for a ``target_modules`` that matched
    nothing."""
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and is_adaptable(m)})
    asked = [wanted] if isinstance(wanted, str) else sorted(wanted or [])
    close = sorted({c for a in asked for c in difflib.get_close_matches(a.rsplit(".", 1)[-1], names, n=3)})
    hint = f"Did you mean {close}? " if close else ""
    return f"{hint}This model's adaptable layers are named: {names[:30]}"


def warn_unmatched(config, module_names: list[str], targeted: list[str]) -> None:
    """Warn about entries of ``target_modules``, ``modules_to_save`` and ``n_frequency_pattern`` that match nothing
    (PEFT accepts them silently; a typo then adapts less than the user asked for)."""
    def matches(entry: str, names: list[str]) -> bool:
        return any(n == entry or n.endswith("." + entry) for n in names)

    unmatched = {}
    targets = config.target_modules
    if targets is not None and not isinstance(targets, str):
        unmatched["target_modules"] = sorted(t for t in targets if t != "all-linear" and not matches(t, module_names))
    # PEFT's sequence-classification wrapper adds both "classifier" and "score" itself; a model has one of them
    unmatched["modules_to_save"] = sorted(m for m in config.modules_to_save or []
                                          if m not in ("classifier", "score") and not matches(m, module_names))
    unmatched["n_frequency_pattern"] = sorted(
        p for p in config.n_frequency_pattern or {}
        if not any(re.match(rf".*\.{p}$", n) or n == p for n in targeted))
    for field_name, entries in unmatched.items():
        if entries:
            warnings.warn(f"{field_name} entries {entries} match no module of this model (no layer gets them): "
                          "check the names against model.named_modules()", stacklevel=3)


def check_adapter_name(name: object) -> None:
    """An adapter name must be a non-empty string without ``.`` (it becomes a key of parameter dicts)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"adapter name must be a non-empty string without '.', got {name!r}")


def _same_model(recorded: str, given: str) -> bool:
    """Whether two model names can mean the same model: equal (local folders resolved), or a hub id and a local
    copy of it (``.../org/name``, or the hub cache's ``.../models--org--name/snapshots/<hash>``)."""
    def norm(name: str) -> str:
        name = name.rstrip("/\\")
        return os.path.realpath(name) if os.path.isdir(name) else name

    a, b = norm(recorded), norm(given)
    return a == b or any(path.endswith("/" + hub) or f"/models--{hub.replace('/', '--')}/" in path + "/"
                         for hub, path in ((a, b), (b, a)))


def warn_other_base(config, model: nn.Module) -> None:
    """Warn when an adapter's config records another base model (``base_model_name_or_path``) than the model it is
    put on (``config._name_or_path``); PEFT does not look. Its weights may still fit (same layer shapes) and then
    compute something else, so this warns before anything changes rather than refusing."""
    recorded = getattr(config, "base_model_name_or_path", None)
    given = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if isinstance(recorded, str) and isinstance(given, str) and recorded and given and not _same_model(recorded,
                                                                                                       given):
        warnings.warn(f"this adapter was trained on base model {recorded!r} (base_model_name_or_path in its "
                      f"adapter_config.json), but the model given is {given!r}: load the adapter onto {recorded!r}; "
                      "if the two are the same model under other names, set base_model_name_or_path to the one "
                      "you load (or ignore this warning)", UserWarning, stacklevel=3)
