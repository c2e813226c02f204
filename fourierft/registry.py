"""How PEFT comes to build fourierft's FourierFT: one named, idempotent, reversible switch.

PEFT picks a method's config and tuner classes from two process-wide tables keyed by ``peft_type``
(``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING`` and ``PEFT_TYPE_TO_TUNER_MAPPING``). :func:`register` points
``FOURIERFT`` at :class:`fourierft.FourierFTConfig` and :class:`fourierft.FourierFTModel`, so every PEFT entry point
(``peft.get_peft_model``, ``PeftModel.from_pretrained``, ``load_adapter``, ``inject_adapter_in_model``, Trainer's
and TRL's calls into PEFT) builds our layers; :func:`unregister` restores PEFT's own. Importing fourierft changes
nothing; :func:`get_peft_model`, :meth:`PeftModel.from_pretrained` and building a :class:`fourierft.FourierFTConfig`
register first (a library handed our config calls ``peft.get_peft_model`` itself: TRL's ``peft_config=``).

The models are PEFT's own ``PeftModel`` classes; :class:`PeftModel` here is that class with a ``from_pretrained``
(and constructor) that registers first. ``isinstance(m, fourierft.PeftModel)`` is ``isinstance(m, peft.PeftModel)``.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import peft
from peft import mapping
from peft.utils import PeftType

from .config import FourierFTConfig
from .io import check_adapter_folder
from .sampling import STORED_PEFT_TYPE
from .transaction import restoring
from .targets import check_adapter_name
from .tuner import FourierFTModel

_lock = threading.Lock()
_saved: dict[str, object] = {}  # PEFT's own entries while registered


def register() -> None:
    """Make PEFT's ``FOURIERFT`` build fourierft's config, tuner and layers in this process (idempotent)."""
    with _lock:
        if _saved:
            return
        _saved["config"] = mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.FOURIERFT]
        _saved["tuner"] = mapping.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FOURIERFT]
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.FOURIERFT] = FourierFTConfig
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[STORED_PEFT_TYPE] = FourierFTConfig  # type: ignore[index]
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FOURIERFT] = FourierFTModel


def unregister() -> None:
    """Give PEFT its own FourierFT back (idempotent). Models built meanwhile keep fourierft's layers."""
    with _lock:
        if not _saved:
            return
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.FOURIERFT] = _saved.pop("config")
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[PeftType.FOURIERFT] = _saved.pop("tuner")
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING.pop(STORED_PEFT_TYPE, None)  # type: ignore[call-overload]


def is_registered() -> bool:
    return bool(_saved)


@contextmanager
def unregistered() -> Iterator[None]:
    """PEFT's own FourierFT inside the block (models built there keep PEFT's layers, e.g. as a reference); the
    registration is as it was afterwards."""
    was = is_registered()
    unregister()
    try:
        yield
    finally:
        if was:
            register()


def get_peft_model(model, peft_config: peft.FourierFTConfig, adapter_name: str = "default", **kwargs):
    """PEFT's ``get_peft_model`` with fourierft's layers: a real ``peft.PeftModel`` (its task subclass).

    ``peft_config`` (ours or PEFT's ``FourierFTConfig``) is copied, never changed. ``kwargs`` are PEFT's
    (``mixed``, ``autocast_adapter_dtype``, ``revision``, ``low_cpu_mem_usage``).
    """
    if not isinstance(peft_config, peft.FourierFTConfig):
        raise TypeError(f"fourierft.get_peft_model takes a FourierFTConfig, got {type(peft_config).__name__}; "
                        "for other methods call peft.get_peft_model")
    check_adapter_name(adapter_name)
    if isinstance(model, peft.PeftModel):
        raise ValueError("this model is a PeftModel already: add another adapter with "
                         "peft_model.add_adapter(name, config), or wrap the unwrapped base model")
    register()
    with restoring(model):  # a failure leaves the caller's model unwrapped, its requires_grad flags unchanged
        return peft.get_peft_model(model, copy.deepcopy(peft_config), adapter_name=adapter_name, **kwargs)


class _PeftModelType(type):
    """``isinstance``/``issubclass`` against :class:`PeftModel` mean against ``peft.PeftModel``."""

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, peft.PeftModel)

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, peft.PeftModel)


class PeftModel(peft.PeftModel, metaclass=_PeftModelType):
    """PEFT's ``PeftModel``, reached after :func:`register`: constructing one or calling :meth:`from_pretrained`
    returns PEFT's own class (its task subclass where the config names a task) with fourierft's layers."""

    def __new__(cls, model, peft_config, adapter_name: str = "default", **kwargs):
        register()
        return peft.PeftModel(model, peft_config, adapter_name, **kwargs)

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name: str = "default", is_trainable: bool = False,
                        config=None, **kwargs):
        """PEFT's ``PeftModel.from_pretrained`` (same arguments) with fourierft registered."""
        register()
        if isinstance(model_id, (str, os.PathLike)) and os.path.isdir(model_id):  # before PEFT reads anything
            check_adapter_folder(os.path.join(model_id, kwargs.get("subfolder") or ""), require_weights=True)
        with restoring(model):  # e.g. weights for another base: the caller's model stays unwrapped and unfrozen
            return peft.PeftModel.from_pretrained(model, model_id, adapter_name=adapter_name,
                                                  is_trainable=is_trainable, config=config, **kwargs)
