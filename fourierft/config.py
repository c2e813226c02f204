"""``FourierFTConfig``: every field of PEFT's, with its defaults, validated when it is built.

It reads and writes the same ``adapter_config.json`` as PEFT (``"peft_type": "FOURIERFT"``), so a checkpoint moves
between the two packages unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .io import atomic_write_bytes
from .sampling import STORED_PEFT_TYPE, check_sampling_fields

CONFIG_NAME = "adapter_config.json"
PEFT_TYPE = "FOURIERFT"

Bias = Literal["none", "all", "fourier_only"]
TaskTypeName = Literal[
    "SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"
]


class TaskType(str, enum.Enum):
    """PEFT's task types, so ``FourierFTConfig(task_type=TaskType.SEQ_CLS)`` reads as it does with PEFT."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"
# Keys PEFT writes that carry no meaning for the adapter itself.
_BOOKKEEPING_KEYS = {"peft_type", "peft_version", "auto_mapping"}
# Fields beyond PEFT's, with the defaults that keep them out of adapter_config.json.
_EXTENSION_DEFAULTS = {"entry_sampling": "uniform", "frequency_center": None, "frequency_width": None}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_collection(name: str, value: Any) -> str | set[str] | None:
    """``None``, a regex string, or a collection of names (normalised to a ``set``, as PEFT does)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return set(value)
    raise ValueError(f"{name} must be a string (a regex) or a list of module names, got {value!r}")


@dataclass
class FourierFTConfig:
    """Configuration of a FourierFT adapter (fields and defaults as in PEFT 0.21's ``FourierFTConfig``).

    Args:
        n_frequency: trainable spectral coefficients per adapted layer (``1 <= n <= d1 * d2``).
        scaling: the ``scaling`` in ``dW = scaling * Re(ifft2(S))``; the paper uses 100-150 (RoBERTa), 300 (LLaMA, ViT).
        random_loc_seed: seed of the spectral entries; entries are regenerated from it, never stored.
        fan_in_fan_out: the layer stores its weight as ``(in, out)`` (GPT-2 ``Conv1D``); corrected per layer type.
        target_modules: module names (exact or name suffix), a regex (full match), or ``"all-linear"``. ``None``
            picks the defaults for the model type. A name of a container module adapts every supported layer in it.
        exclude_modules: names (exact or suffix) or a regex of modules never adapted.
        bias: ``"none"``, ``"all"`` (train every bias) or ``"fourier_only"`` (biases of adapted layers).
        modules_to_save: modules trained in full and saved with the adapter (e.g. a classifier head).
        layers_to_transform, layers_pattern: adapt only these layer indices (of the ``ModuleList`` named by the
            pattern, e.g. ``"layers"`` or ``"h"``).
        n_frequency_pattern: ``{name or regex: n_frequency}`` overriding ``n_frequency`` for matching layers.
        init_weights: ``False`` (PEFT's default) draws coefficients from ``N(0, 1)``; ``True`` starts at zero.
        inference_mode: freeze the adapter (set by ``from_pretrained(..., is_trainable=False)``).
        entry_sampling: ``"uniform"`` (PEFT's entries, the default), ``"frequency_biased"`` (the paper's band around
            ``frequency_center`` of ``frequency_width``) or ``"stored"`` (explicit entries, e.g. a composed
            adapter); see :mod:`fourierft.sampling`. Non-uniform adapters store their entries in the checkpoint and
            are saved with ``peft_type`` ``FOURIERFT_STORED_ENTRIES``, which PEFT refuses to load. The three keys
            are written only when they differ from their defaults, so default configs stay PEFT's JSON byte for byte.
    """

    n_frequency: int = 1000
    scaling: float = 150.0
    random_loc_seed: int = 777
    fan_in_fan_out: bool = False
    target_modules: str | set[str] | None = None
    exclude_modules: str | set[str] | None = None
    bias: Bias = "none"
    modules_to_save: list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    layers_pattern: str | list[str] | None = None
    n_frequency_pattern: dict[str, int] = field(default_factory=dict)
    init_weights: bool = False
    inference_mode: bool = False
    task_type: TaskTypeName | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    entry_sampling: str = "uniform"
    frequency_center: float | None = None
    frequency_width: float | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.n_frequency) or self.n_frequency <= 0:
            raise ValueError(f"n_frequency must be a positive integer, got {self.n_frequency!r}")
        if isinstance(self.scaling, bool) or not isinstance(self.scaling, (int, float)) or not math.isfinite(
            self.scaling
        ):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}")
        self.scaling = float(self.scaling)
        if not _is_int(self.random_loc_seed):
            raise ValueError(f"random_loc_seed must be an integer, got {self.random_loc_seed!r}")
        for name in ("fan_in_fan_out", "init_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.bias not in get_args(Bias):
            raise ValueError(f"bias must be one of {list(get_args(Bias))}, got {self.bias!r}")
        if isinstance(self.task_type, enum.Enum):  # TaskType.SEQ_CLS (ours or PEFT's) -> "SEQ_CLS"
            self.task_type = self.task_type.value
        if self.task_type is not None and self.task_type not in get_args(TaskTypeName):
            raise ValueError(
                f"task_type must be None or one of {list(get_args(TaskTypeName))}, got {self.task_type!r}"
            )
        self.target_modules = _str_collection("target_modules", self.target_modules)
        self.exclude_modules = _str_collection("exclude_modules", self.exclude_modules)
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) for m in self.modules_to_save):
                raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
            self.modules_to_save = list(self.modules_to_save)
        self._check_layers()
        self._check_n_frequency_pattern()
        check_sampling_fields(self.entry_sampling, self.frequency_center, self.frequency_width)

    def _check_layers(self) -> None:
        layers = self.layers_to_transform
        if layers is not None and not (_is_int(layers) or (isinstance(layers, list) and all(map(_is_int, layers)))):
            raise ValueError(f"layers_to_transform must be an integer or a list of integers, got {layers!r}")
        pattern = self.layers_pattern
        if pattern is not None and not (
            isinstance(pattern, str) or (isinstance(pattern, list) and all(isinstance(p, str) for p in pattern))
        ):
            raise ValueError(f"layers_pattern must be a string or a list of strings, got {pattern!r}")
        if isinstance(self.target_modules, str) and layers is not None:
            raise ValueError("layers_to_transform cannot be used when target_modules is a str (a regex)")
        if isinstance(self.target_modules, str) and pattern is not None:
            raise ValueError("layers_pattern cannot be used when target_modules is a str (a regex)")
        if pattern and layers is None:
            raise ValueError("layers_pattern needs layers_to_transform: say which layer indices to adapt")

    def _check_n_frequency_pattern(self) -> None:
        if self.n_frequency_pattern is None:
            self.n_frequency_pattern = {}
        if not isinstance(self.n_frequency_pattern, dict):
            raise ValueError(f"n_frequency_pattern must be a dict {{name: n_frequency}}, got {self.n_frequency_pattern!r}")
        for key, value in self.n_frequency_pattern.items():
            if not isinstance(key, str) or not _is_int(value) or value <= 0:
                raise ValueError(
                    f"n_frequency_pattern maps module names to positive integers, got {key!r}: {value!r}"
                )
        self.n_frequency_pattern = dict(self.n_frequency_pattern)

    @property
    def peft_type(self) -> str:
        return PEFT_TYPE if self.entry_sampling == "uniform" else STORED_PEFT_TYPE

    def copy(self, **changes: Any) -> FourierFTConfig:
        """A deep, validated copy (the caller's config is never mutated by this package)."""
        return dataclasses.replace(self.from_dict(self.to_dict()), **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form PEFT writes (sets become sorted lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _EXTENSION_DEFAULTS and value == _EXTENSION_DEFAULTS[f.name]:
                continue  # our additions are written only when they differ from the default (PEFT's JSON)
            out[f.name] = sorted(value) if isinstance(value, set) else value
        out["peft_type"] = self.peft_type
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FourierFTConfig:
        """Build from PEFT's JSON form; a config of another method is refused, unknown keys are dropped with a warning."""
        peft_type = data.get("peft_type", PEFT_TYPE)
        if peft_type not in (PEFT_TYPE, STORED_PEFT_TYPE):
            raise ValueError(f"this is a {peft_type} adapter config, not FourierFT (peft_type must be {PEFT_TYPE!r})")
        if (peft_type == STORED_PEFT_TYPE) != (data.get("entry_sampling", "uniform") != "uniform"):
            raise ValueError(f"peft_type {peft_type!r} does not match entry_sampling {data.get('entry_sampling')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - _BOOKKEEPING_KEYS)
        if unknown:
            warnings.warn(f"adapter config keys not used by FourierFT were ignored: {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in names})

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(os.path.join(save_directory, CONFIG_NAME), text.encode())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, subfolder: str | None = None) -> FourierFTConfig:
        path = os.path.join(directory, subfolder or "", CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {os.path.dirname(path)!r}: is this a saved adapter folder?")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

