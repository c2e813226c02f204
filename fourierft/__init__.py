"""fourierft: FourierFT fine-tuning (Gao et al., ICML 2024) as PEFT's own FourierFT, with fast layers of ours.

``fourierft.get_peft_model`` and ``fourierft.PeftModel.from_pretrained`` hand out real ``peft.PeftModel`` objects
whose FourierFT tuner and layers are fourierft's (see :mod:`fourierft.registry`). The math (:mod:`fourierft.spectral`),
the entries (:mod:`fourierft.entries`) and the kernels (:mod:`fourierft.kernels`) import without PEFT.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .entries import spectral_entries
from .spectral import delta_weight

_PEFT_NAMES = {
    "FourierFTConfig": ".config", "FourierFTModel": ".tuner", "FourierFTLayer": ".layer", "Linear": ".layer",
    "Conv2d": ".layer", "Embedding": ".layer", "PeftModel": ".registry", "get_peft_model": ".registry",
    "register": ".registry", "unregister": ".registry", "is_registered": ".registry",
    "unregistered": ".registry", "export_lora": ".export", "save_pretrained": ".folder_io",
}
# PEFT's task-specific wrapper names: each dispatches on the config's task type, as PEFT's PeftModel does.
_TASK_ALIASES = ("PeftModelForCausalLM", "PeftModelForFeatureExtraction", "PeftModelForQuestionAnswering",
                 "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification", "PeftModelForTokenClassification")


def __getattr__(name: str):
    """The PEFT integration is imported on first use, so ``import fourierft`` works (math, entries, kernels)
    without PEFT installed."""
    import importlib

    if name in _PEFT_NAMES:
        return getattr(importlib.import_module(_PEFT_NAMES[name], __name__), name)
    if name in _TASK_ALIASES:
        from .registry import PeftModel

        return PeftModel
    if name == "TaskType":
        from peft import TaskType

        return TaskType
    raise AttributeError(f"module 'fourierft' has no attribute {name!r}")


__all__ = ["delta_weight", "spectral_entries", "TaskType", *_PEFT_NAMES, *_TASK_ALIASES]
