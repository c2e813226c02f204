"""``FourierFTConfig``: PEFT's ``FourierFTConfig`` (every field, every default) plus what fourierft adds.

It is a subclass of :class:`peft.FourierFTConfig`, so PEFT's wrapper, ``Trainer`` and the Hub tooling treat it as
PEFT's own; ``adapter_config.json`` is PEFT's, byte for byte, while the added fields keep their defaults.

Added fields, each refused loudly when a checkpoint names a value we do not understand:

* ``ifft2_norm`` (``"backward"`` | ``"forward"`` | ``"ortho"``) and ``alpha`` (``n_frequency = int(alpha * d1 * d2)``
  per layer): the two keys of PEFT's open FourierFT pull request, so adapters written by that PEFT load right.
* ``entry_sampling``, ``frequency_center``, ``frequency_width``: non-uniform spectral entries
  (:mod:`fourierft.sampling`). Such adapters store their entries and are written with ``peft_type``
  ``FOURIERFT_STORED_ENTRIES``, which a PEFT without fourierft refuses instead of computing another ``dW``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import peft
from peft.utils import PeftType

from .io import check_adapter_folder
from .sampling import STORED_PEFT_TYPE, check_sampling_fields

IFFT2_NORMS = ("backward", "forward", "ortho")
# Fields beyond PEFT's and the defaults that keep them out of adapter_config.json.
EXTENSION_DEFAULTS: dict[str, Any] = {
    "ifft2_norm": "backward", "alpha": None,
    "entry_sampling": "uniform", "frequency_center": None, "frequency_width": None,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{name}: {pattern!r} is not a valid regular expression ({err})") from None


@dataclass
class FourierFTConfig(peft.FourierFTConfig):
    """PEFT's FourierFT configuration, validated when built, plus ``ifft2_norm``, ``alpha`` and entry sampling.

    ``dW = scaling * Re(ifft2(S, norm=ifft2_norm))`` for each adapted ``(d1, d2)`` weight, with ``n`` coefficients:
    ``n_frequency_pattern[name]`` if a pattern matches, else ``int(alpha * d1 * d2)`` if ``alpha`` is set, else
    ``n_frequency``. See :class:`peft.FourierFTConfig` for PEFT's fields.
    """

    ifft2_norm: str = field(default="backward", metadata={"help": "ifft2 normalisation: backward, forward or ortho."})
    alpha: float | None = field(default=None, metadata={"help": "n_frequency = int(alpha * in * out) per layer."})
    entry_sampling: str = field(default="uniform", metadata={"help": "uniform, frequency_biased or stored."})
    frequency_center: float | None = field(default=None, metadata={"help": "Band centre (frequency_biased)."})
    frequency_width: float | None = field(default=None, metadata={"help": "Band width (frequency_biased)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.n_frequency) or self.n_frequency <= 0:
            raise ValueError(f"n_frequency must be a positive integer, got {self.n_frequency!r}")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or not math.isfinite(
                self.scaling):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}")
        if not _is_int(self.random_loc_seed) or not -(2**63) <= self.random_loc_seed < 2**64:
            raise ValueError(f"random_loc_seed must be an integer in [-2**63, 2**64), got {self.random_loc_seed!r}")
        for name in ("fan_in_fan_out", "init_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.bias not in ("none", "all", "fourier_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'fourier_only', got {self.bias!r}")
        self._check_patterns()
        if self.ifft2_norm not in IFFT2_NORMS:
            raise ValueError(f"ifft2_norm must be one of {list(IFFT2_NORMS)}, got {self.ifft2_norm!r}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                                       or not 0 < self.alpha <= 1):
            raise ValueError(f"alpha must be a number in (0, 1] (the fraction of entries trained), got {self.alpha!r}")
        check_sampling_fields(self.entry_sampling, self.frequency_center, self.frequency_width)
        # A valid config of ours registers fourierft: code that hands it to peft.get_peft_model itself (TRL's
        # SFTTrainer(peft_config=...)) must get our layers, or PEFT's would drop ifft2_norm/alpha/entry_sampling.
        from .registry import register

        register()

    def _check_patterns(self) -> None:
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                _check_regex(name, value)
            elif value is not None and (not isinstance(value, (list, set, tuple))
                                        or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a regex string or a list of module names, got {value!r}")
        layers = self.layers_to_transform
        indices = [layers] if _is_int(layers) else layers if isinstance(layers, (list, tuple)) else None
        if layers is not None and (indices is None or not all(_is_int(i) and i >= 0 for i in indices)):
            raise ValueError(f"layers_to_transform must be a layer index >= 0 or a list of them, got {layers!r}")
        pattern = self.layers_pattern
        if pattern is not None and not isinstance(pattern, str) and (
                not isinstance(pattern, (list, tuple)) or not all(isinstance(p, str) for p in pattern)):
            raise ValueError(f"layers_pattern must be a name or a list of names, got {pattern!r}")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) for m in self.modules_to_save):
                raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        if not isinstance(self.n_frequency_pattern, dict):
            raise ValueError(f"n_frequency_pattern must be a dict {{name: n}}, got {self.n_frequency_pattern!r}")
        for key, value in self.n_frequency_pattern.items():
            if not isinstance(key, str) or not _is_int(value) or value <= 0:
                raise ValueError(f"n_frequency_pattern maps module names to positive integers, got {key!r}: {value!r}")
            _check_regex(f"n_frequency_pattern key {key!r}", key)

    # --- the math a layer of shape (d1, d2) gets -------------------------------------------------------------------
    def n_frequency_for(self, key: str, d1: int, d2: int) -> int:
        """Coefficients for the layer at ``key``: a matching ``n_frequency_pattern`` entry (PEFT's rule), else
        ``int(alpha * d1 * d2)``, else ``n_frequency``."""
        return n_frequency_for(self, key, d1, d2)

    # --- adapter_config.json ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """PEFT's dict; the added fields only when they differ from their defaults."""
        out = super().to_dict()
        for name, default in EXTENSION_DEFAULTS.items():
            if out.get(name) == default:
                out.pop(name, None)
        if self.entry_sampling != "uniform":
            out["peft_type"] = STORED_PEFT_TYPE
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        """PEFT's; a local folder's files are checked first (PEFT's ``load_adapter`` reads this config before it
        adds the adapter, so a damaged weights file is refused before anything changes)."""
        path = os.path.join(pretrained_model_name_or_path, subfolder or "")
        if os.path.isdir(path):
            check_adapter_folder(path, require_weights=False)
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    @classmethod
    def from_peft_type(cls, **kwargs):
        """Build from ``adapter_config.json``'s keys; a key we do not understand is refused, never dropped."""
        peft_type = kwargs.get("peft_type", PeftType.FOURIERFT)
        if str(peft_type) not in (PeftType.FOURIERFT.value, STORED_PEFT_TYPE):
            raise ValueError(f"this is a {peft_type} adapter config, not FourierFT (peft_type {PeftType.FOURIERFT.value})")
        stored = str(peft_type) == STORED_PEFT_TYPE
        if stored != (kwargs.get("entry_sampling", "uniform") != "uniform"):
            raise ValueError(f"peft_type {peft_type!r} does not match entry_sampling "
                             f"{kwargs.get('entry_sampling', 'uniform')!r}: the adapter config is inconsistent")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(
                f"adapter config keys {unknown} are not understood by this fourierft (they may change the adapter's "
                "math): upgrade fourierft, or remove them from adapter_config.json if you know they are harmless")
        return cls(**{k: v for k, v in kwargs.items() if k != "peft_type"})


def matching_pattern(config, key: str) -> str | None:
    """The first ``n_frequency_pattern`` key matching the module name ``key`` (PEFT's rule), or ``None``."""
    for pattern in config.n_frequency_pattern or {}:
        if re.match(rf".*\.{pattern}$", key) or key == pattern:
            return pattern
    return None


def n_frequency_for(config, key: str, d1: int, d2: int) -> int:
    """See :meth:`FourierFTConfig.n_frequency_for`; also serves PEFT's own config class (no ``alpha`` there)."""
    pattern = matching_pattern(config, key)
    if pattern is not None:
        return config.n_frequency_pattern[pattern]
    alpha = getattr(config, "alpha", None)
    if alpha is not None:
        n = int(alpha * d1 * d2)
        if n < 1:
            raise ValueError(f"alpha={alpha} gives no coefficient for layer {key!r} ({d1}x{d2}): raise alpha")
        return n
    return config.n_frequency


def norm_factor(config, d1: int, d2: int) -> float:
    """The factor turning PEFT's ``backward``-normalised ``ifft2`` into ``config.ifft2_norm``'s."""
    norm = getattr(config, "ifft2_norm", "backward")
    return {"backward": 1.0, "forward": float(d1 * d2), "ortho": math.sqrt(d1 * d2)}[norm]


def derive_config(config, **changes) -> FourierFTConfig:
    """A new :class:`FourierFTConfig` with ``config``'s fields (ours or PEFT's class) and ``changes``; ``config``
    itself is not changed."""
    values = {f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(config)
              if f.init and f.name != "peft_type"}
    values.update(changes)
    return FourierFTConfig(**values)
