"""Which FourierFT layer class a base module gets, and what in a config matches nothing or cannot be a name.

Pure functions over modules and configs, used by :mod:`fourierft.tuner` (and the registry and composer for adapter
names). PEFT's own targeting rules are applied by PEFT; these add what PEFT lacks: container targets, errors that name
the model's layers, and warnings for entries that match nothing.
"""

from __future__ import annotations

import difflib
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
