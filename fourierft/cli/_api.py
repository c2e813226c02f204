"""The one import point for the adapter library the CLI drives.

The CLI speaks PEFT's API (``FourierFTConfig``, ``get_peft_model``, ``PeftModel``). It prefers this package's own
implementation and falls back to Hugging Face PEFT where ours is not importable (for example while the library is
being developed); ``BACKEND`` says which one is in use so the CLI can report it honestly. LoRA (``--method lora``) is
always PEFT's: it is a reference, not part of this package.
"""

from __future__ import annotations

from typing import Any

import torch

import os

try:  # our library first: same API, same checkpoint format, faster kernels
    if os.environ.get("FOURIERFT_CLI_BACKEND") == "peft":  # A/B checks against the reference implementation
        raise ImportError
    from fourierft import FourierFTConfig, PeftModel, get_peft_model  # type: ignore[attr-defined]

    BACKEND = "fourierft"
except ImportError:  # before the library lands, or on request
    from peft import FourierFTConfig, PeftModel, get_peft_model  # type: ignore[no-redef]

    BACKEND = "peft"


def spectral_entries(out_features: int, in_features: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(rows, cols)`` spectral entries of a layer, regenerated from ``random_loc_seed`` like the reference."""
    try:
        from fourierft.entries import spectral_entries as fast

        return fast(out_features, in_features, n, seed)
    except ImportError:  # pragma: no cover - reference definition (PEFT 0.21)
        flat = torch.randperm(out_features * in_features, generator=torch.Generator().manual_seed(seed))[:n]
        return flat // in_features, flat % in_features


def peft_lora() -> tuple[Any, Any, Any]:
    """PEFT's ``LoraConfig``, ``get_peft_model`` and ``PeftModel`` (the LoRA reference and LoRA adapters)."""
    try:
        from peft import LoraConfig, PeftModel as PeftPeftModel, get_peft_model as peft_get
    except ImportError as exc:
        from ._errors import CLIError

        raise CLIError("LoRA needs Hugging Face PEFT: pip install peft") from exc
    return LoraConfig, peft_get, PeftPeftModel


def is_peft_wrapper(model: object) -> bool:
    """True for a PEFT-style wrapper (ours or PEFT's): both expose ``merge_and_unload`` and ``peft_config``."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")
