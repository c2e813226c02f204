"""Export a FourierFT adapter as a PEFT LoRA checkpoint (``adapter_config.json`` + ``adapter_model.safetensors``).

A FourierFT ``dW`` has rank ``<= 2n`` (``../shared/notes/spectral-math.md``):

    dW = scaling / (d1 d2) * (Cu diag(c) Cv^T - Su diag(c) Sv^T),   Cu[j, k] = cos(2 pi j u_k / d1), Su = sin(...)

so LoRA's ``dW = (alpha / r) * B @ A`` holds exactly with ``B = [Cu, Su]`` ``(d1, 2n)`` and
``A = scaling / (d1 d2) * [diag(c) Cv^T; -diag(c) Sv^T]`` ``(2n, d2)`` (sine columns that vanish, at ``u in {0, d1/2}``
or ``v in {0, d2/2}``, are dropped). Where that is wider than ``min(d1, d2)``, an SVD of ``dW`` at its full numerical
rank is used instead (also exact up to float rounding). With ``rank=r`` the best rank-``r`` approximation
(truncated SVD, Eckart-Young) is written and its relative Frobenius error reported per layer. ``lora_alpha = r`` per
layer (``alpha_pattern``), so LoRA's scaling is 1. Errors are measured in float64 against
:func:`fourierft.spectral.delta_weight` on the float32 factors actually written.

GPT-2 ``Conv1D`` layers need ``fan_in_fan_out=True`` in PEFT LoRA; ``lora_A``/``lora_B`` keep the
``(r, in)``/``(out, r)`` shapes there too. ``Conv2d`` (groups 1): ``A`` becomes a ``kh x kw`` conv to ``r`` channels
(the same ``(out, in * kh * kw)`` view as :mod:`fourierft.layers_extra`), ``B`` a ``1 x 1`` conv. ``Embedding``:
PEFT's ``lora_embedding_A = B^T``, ``lora_embedding_B = A^T``. ``modules_to_save`` copies and trained biases are
written under the same keys as PEFT's own checkpoints (its generic layout).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

from .io import atomic_write, atomic_write_bytes
from .layer import FourierFTLayer
from .spectral import delta_weight

PREFIX = "base_model.model."  # PEFT's key prefix for LoRA-style tuners
WEIGHTS_NAME = "adapter_model.safetensors"

_LORA_BIAS = {"none": "none", "all": "all", "fourier_only": "lora_only"}


@dataclass
class LoraExport:
    """What :func:`export_lora` wrote: per layer its rank and relative error ``||dW - B A||_F / ||dW||_F``."""

    directory: str
    ranks: dict[str, int] = field(default_factory=dict)
    relative_errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_relative_error(self) -> float:
        return max(self.relative_errors.values(), default=0.0)


def exact_factors(spectrum: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, d1: int, d2: int,
                  scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ``B`` ``(d1, r)`` and ``A`` ``(r, d2)``, float64, ``B @ A = dW``, ``r <= 2n``."""
    c = spectrum.detach().to(torch.float64).cpu()
    u, v = rows.cpu().to(torch.float64), cols.cpu().to(torch.float64)
    j = torch.arange(d1, dtype=torch.float64)[:, None]
    l = torch.arange(d2, dtype=torch.float64)[:, None]
    pu, pv = 2 * torch.pi * j * u / d1, 2 * torch.pi * l * v / d2  # (d1, n), (d2, n)
    # sin(pi * j) = 0: these sine columns are identically zero, so they add no rank.
    keep = ~((2 * rows.cpu()) % d1 == 0) & ~((2 * cols.cpu()) % d2 == 0)
    factor = scaling / (d1 * d2)
    b = torch.cat([torch.cos(pu), torch.sin(pu[:, keep])], dim=1)
    a = torch.cat([(torch.cos(pv) * c).T, -(torch.sin(pv[:, keep]) * c[keep]).T], dim=0) * factor
    return b, a


def svd_factors(dw: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of ``dw`` (float64); ``rank=None``: its full numerical rank."""
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)
    if rank is None:
        rank = int((s > s[0] * max(dw.shape) * torch.finfo(torch.float64).eps).sum()) if s.numel() and s[0] > 0 else 1
    rank = max(1, min(rank, s.numel()))
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _layer_factors(layer: FourierFTLayer, adapter_name: str, rank: int | None):
    spectrum = layer.fourierft_spectrum[adapter_name].detach().cpu()
    rows, cols = (t.cpu() for t in layer.entries(adapter_name))
    d1, d2, scaling = layer.out_features, layer.in_features, layer.scaling(adapter_name)
    dw = delta_weight(spectrum, rows, cols, d1, d2, scaling, torch.float64)
    if rank is None:
        b, a = exact_factors(spectrum, rows, cols, d1, d2, scaling)
        if b.shape[1] > min(d1, d2):
            b, a = svd_factors(dw, None)
    else:
        b, a = svd_factors(dw, rank)
    b, a = b.float(), a.float()
    norm = dw.norm().item()
    err = (dw - b.double() @ a.double()).norm().item()
    return b, a, (err / norm if norm > 0 else err)


def _check_exportable(layer: FourierFTLayer, name: str, adapter_name: str) -> None:
    if layer.fourierft_spectrum[adapter_name].device.type == "meta":
        layer.get_delta_weight(adapter_name)  # raises the clear error (never loaded, low_cpu_mem_usage=True)
    base = layer.get_base_layer()
    if isinstance(base, torch.nn.Conv2d) and base.groups != 1:
        raise ValueError(f"layer {name!r} is a grouped Conv2d (groups={base.groups}): LoRA export needs groups=1")
    if not (isinstance(base, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)) or layer.fan_in_fan_out):
        raise ValueError(f"layer {name!r} is a {type(base).__name__}: LoRA export handles Linear, Conv1D, Conv2d "
                         "and Embedding layers")


def _lora_tensors(layer: FourierFTLayer, name: str, b: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
    """PEFT LoRA's tensors for ``dW = B @ A`` (``B`` ``(d1, r)``, ``A`` ``(r, d2)``) in the layer's LoRA layout."""
    base, key = layer.get_base_layer(), PREFIX + name
    if isinstance(base, torch.nn.Conv2d):  # lora_A: a kxk conv to r channels on the (in*kh*kw) view; lora_B: 1x1
        return {f"{key}.lora_A.weight": a.reshape(a.shape[0], *base.weight.shape[1:]).contiguous(),
                f"{key}.lora_B.weight": b.reshape(*b.shape, 1, 1).contiguous()}
    if isinstance(base, torch.nn.Embedding):  # PEFT: dW = (lora_embedding_B @ lora_embedding_A).T
        return {f"{key}.lora_embedding_A": b.T.contiguous(), f"{key}.lora_embedding_B": a.T.contiguous()}
    return {f"{key}.lora_A.weight": a.contiguous(), f"{key}.lora_B.weight": b.contiguous()}


def export_lora(peft_model, save_directory: str | os.PathLike, adapter_name: str = "default",
                rank: int | None = None) -> LoraExport:
    """Write adapter ``adapter_name`` of ``peft_model`` (a ``peft.PeftModel``) as a PEFT LoRA checkpoint in
    ``save_directory``; return ranks and errors.

    ``rank=None``: exact (rank ``<= 2n`` per layer). ``rank=r``: the best rank-``r`` truncation, error reported.
    Raises ``ValueError`` before writing anything for unknown adapters, bad ranks or unsupported layers.
    """
    from peft.utils import get_peft_model_state_dict

    tuner = getattr(peft_model, "base_model", None)
    if not hasattr(tuner, "fourierft_layers"):
        raise TypeError(f"export_lora takes a peft.PeftModel with FourierFT adapters, got {type(peft_model).__name__}")
    if adapter_name not in tuner.peft_config:
        raise ValueError(f"unknown adapter {adapter_name!r}; adapters: {sorted(tuner.peft_config)}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer or None (exact), got {rank!r}")
    config = tuner.peft_config[adapter_name]
    layers = [(n, layer) for n, layer in tuner.fourierft_layers() if adapter_name in layer.fourierft_spectrum]
    for name, layer in layers:
        _check_exportable(layer, name, adapter_name)
    report = LoraExport(os.fspath(save_directory))
    tensors: dict[str, torch.Tensor] = {}
    fan_in_fan_out = False
    for name, layer in layers:
        b, a, err = _layer_factors(layer, adapter_name, rank)
        tensors.update(_lora_tensors(layer, name, b, a))
        report.ranks[name], report.relative_errors[name] = a.shape[0], err
        fan_in_fan_out |= getattr(layer, "fan_in_fan_out", False)
    # modules_to_save copies and trained biases, under PEFT's generic keys
    for key, value in get_peft_model_state_dict(peft_model, adapter_name=adapter_name).items():
        if ".fourierft_" not in key:
            tensors[key] = value.detach().cpu().contiguous()
    r = Counter(report.ranks.values()).most_common(1)[0][0] if report.ranks else 1
    pattern = {re.escape(n): k for n, k in report.ranks.items() if k != r}
    lora_config = {
        "peft_type": "LORA", "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(report.ranks), "fan_in_fan_out": fan_in_fan_out, "bias": _LORA_BIAS[config.bias],
        "modules_to_save": config.modules_to_save, "task_type": config.task_type, "lora_dropout": 0.0,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": config.base_model_name_or_path, "revision": config.revision,
    }
    os.makedirs(save_directory, exist_ok=True)
    atomic_write(os.path.join(save_directory, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(lora_config, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(os.path.join(save_directory, "adapter_config.json"), text.encode())
    return report
