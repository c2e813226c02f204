"""fourierft: FourierFT fine-tuning (Gao et al., ICML 2024), a drop-in for Hugging Face PEFT's FourierFT."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FourierFTConfig, TaskType
from .entries import spectral_entries
from .layer import FourierFTLayer, FourierFTLinear, SpectralAdapter
from .model import FourierFTModel
from .peft_model import PeftModel, get_peft_model

# PEFT's task-specific wrapper names: one class serves every task here (forward and generate pass through).
PeftModelForSequenceClassification = PeftModelForCausalLM = PeftModelForTokenClassification = PeftModel
PeftModelForSeq2SeqLM = PeftModelForQuestionAnswering = PeftModelForFeatureExtraction = PeftModel
from .spectral import delta_weight

__all__ = [
    "FourierFTConfig",
    "FourierFTLayer",
    "FourierFTLinear",
    "FourierFTModel",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "SpectralAdapter",
    "TaskType",
    "delta_weight",
    "get_peft_model",
    "spectral_entries",
]
