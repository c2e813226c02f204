"""fourierft: FourierFT fine-tuning (Gao et al., ICML 2024), a drop-in for Hugging Face PEFT's FourierFT."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FourierFTConfig
from .entries import spectral_entries
from .layer import FourierFTLayer, FourierFTLinear, SpectralAdapter
from .model import FourierFTModel
from .peft_model import PeftModel, get_peft_model
from .spectral import delta_weight

__all__ = [
    "FourierFTConfig",
    "FourierFTLayer",
    "FourierFTLinear",
    "FourierFTModel",
    "PeftModel",
    "SpectralAdapter",
    "delta_weight",
    "get_peft_model",
    "spectral_entries",
]
