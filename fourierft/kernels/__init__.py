"""Ways to compute a FourierFT adapter's contribution ``x @ dW.T``, each equal to the one definition of ``dW``
(:func:`fourierft.spectral.delta_weight`).

Paths (each differentiable w.r.t. ``x`` and the spectrum, each tested against a float64 reference):

* ``dense``   PEFT's exact numerics: ``dW`` in float32 through a dense complex ``ifft2``, matmul in float32, cast back.
* ``gemm``    ``dW`` materialised (float32 ``ifft2``, cast to the compute dtype), one matmul in the compute dtype, a
              custom backward whose spectrum gradient is one ``rfft2`` of ``G = g^T x``; at inference ``dW`` is cached
              per spectrum version. Best when the layer is small next to the rank ``2n`` (BERT-sized layers).
* ``lowrank`` ``dW = Bu diag(w) Bv^T`` with cached cos/sin bases: two skinny tensor-core matmuls each way, no
              ``d1 x d2`` tensor anywhere. Best for large layers and moderate ``n`` (LLaMA-sized, n = 1000).
* ``factored`` the lowrank path's two products computed as a DFT split once (Cooley-Tukey, ``d = N1 N2``) into two
              stages of small batched matmuls, stage 1 on the real input's half spectrum: about
              ``d (2 N1 + 8 n / N1)`` flops per row instead of ``4 n d``. On an H200 the fastest path for every
              LLaMA-sized layer at n = 1000 (docs/benchmarks.md).
* ``fused``   the factored path with each transform one Triton kernel, no stage-1 tensor in memory (CUDA, fp16/bf16,
              Triton installed; refused elsewhere). Opt-in, not one of ``auto``'s candidates: on an H200 it is
              2.7-4.3x slower than ``factored`` (cuBLAS's two stages) on LLaMA-7B layers (docs/benchmarks.md).

``auto`` (the default) measures the candidates once per layer key on CUDA and uses a flop model elsewhere
(:mod:`fourierft.kernels.dispatch`; :func:`path_choices` shows what was chosen and why).

:func:`adapted_linear` is the whole adapted layer (frozen ``F.linear`` plus the adapter, the addition fused where a
path can). :func:`spectral_linear_mixed` serves a batch whose rows use different adapters that share their entries.

Caches (cos/sin bases, factored plans, and at inference what each path derives from the coefficients: gemm's
``dW``, factored's weighted inverse twiddles, lowrank's ``[c, -c]``) live as long as the tensors they were built from
and are rebuilt when the coefficients change (:mod:`fourierft.kernels._cache`); :func:`invalidate` drops one
spectrum's entries, :func:`clear_caches` all.
Within one forward of a PEFT model, layers that read the same input with the same column entries (``q_proj``,
``k_proj`` and ``v_proj``; ``gate_proj`` and ``up_proj``) transform it once and save one copy for their backward,
and under ``torch.no_grad`` share it at inference (:mod:`fourierft.kernels._reuse`; not for inference tensors, whose
in-place writes no version counter records).

``torch.compile``: ``spectral_linear`` traces without graph breaks on every path. ``lowrank``, ``factored`` and
``fused`` enter the graph as opaque custom ops whose bodies keep their caches (:mod:`.opaque`); ``gemm`` and
``dense`` are traced (``dW`` built in the graph); ``auto`` is a trace-time constant (the measured choice, else the
flop model).
"""

from __future__ import annotations

from typing import Literal

import torch

from ._cache import cache_sizes, clear_caches, invalidate
from .dispatch import Choice, choose_path, clear_path_choices, path_choices, resolve_path, tune
from .gemm import delta_weight_cached
from .mixed import spectral_linear_mixed
from .paths import CUDA_ONLY
from .paths import FUSED as _FUSED
from .paths import FROZEN as _FROZEN
from .paths import IMPLS as _IMPLS
from .opaque import OPAQUE, opaque_linear
from .timers import cuda_timer, host_timer

Path = Literal["auto", "dense", "gemm", "lowrank", "factored", "fused"]
PATHS: tuple[str, ...] = ("auto", "dense", "gemm", "lowrank", "factored", "fused")

__all__ = [
    "CUDA_ONLY",
    "PATHS",
    "adapted_linear",
    "Choice",
    "Path",
    "cache_sizes",
    "choose_path",
    "clear_caches",
    "clear_path_choices",
    "delta_weight_cached",
    "invalidate",
    "path_choices",
    "spectral_linear",
    "cuda_timer",
    "host_timer",
    "spectral_linear_mixed",
    "tune",
]


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def spectral_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    path: Path = "auto",
    *,
    base: torch.Tensor | None = None,
    consume_base: bool = False,
) -> torch.Tensor:
    """``x @ dW.T``: ``x`` is ``(..., in_features)``, the result ``(..., out_features)`` in ``x.dtype``.

    With ``base`` (the frozen layer's output, ``(..., out_features)``) it returns ``base + x @ dW.T`` in
    ``base.dtype``; lowrank and factored (always) and gemm (at inference) then fuse the addition into their last
    matmul (one pass over the output fewer), the other paths add afterwards. Layers should pass it. With
    ``consume_base`` the caller gives ``base`` up (a temporary of its own): outside autograd the sum may then be
    written into it and ``base`` itself returned.

    ``spectrum``: ``(n,)`` float32 coefficients; ``rows``, ``cols``: ``(n,)`` int64 entries on the same device.
    ``dW = scaling * Re(ifft2(S))`` (:func:`fourierft.spectral.delta_weight`). Differentiable w.r.t. ``x`` and
    ``spectrum`` on every path. The dense path is PEFT's: build ``dW`` in float32, run the matmul in float32, cast
    back. The other paths compute in ``x.dtype`` (matmuls; FFTs in float32); under autocast a float32 ``x`` is
    first cast to the autocast dtype, and the result comes back in that dtype, as ``F.linear`` would do.
    """
    if path not in _IMPLS and path != "auto":
        raise ValueError(f"unknown FourierFT kernel path {path!r}; allowed: {', '.join(PATHS)}")
    dev = x.device.type
    # a device-type tuple, not torch.amp.is_autocast_available: older dynamo versions break the graph on the latter
    if path != "dense" and dev in _AUTOCAST_DEVICES and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        if x.dtype == torch.float32 and dtype != torch.float32:
            x = x.to(dtype)
        with torch.autocast(dev, enabled=False):
            return _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base, consume_base)
    return _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base, consume_base)


def adapted_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    path: Path = "auto",
) -> torch.Tensor:
    """The adapted layer's output ``x @ W.T (+ bias) + x @ dW.T``: ``x`` ``(..., in_features)``, frozen ``weight``
    ``(out_features, in_features)`` (``nn.Linear``'s layout) and ``bias``, result ``(..., out_features)`` in the
    frozen layer's output dtype.

    Where autograd records and the path has its own autograd function (gemm, lowrank, factored, fused), the frozen
    layer runs inside it, instead of autograd adding two ``(..., in_features)`` input gradients afterwards (one pass
    over them and one launch fewer per call): lowrank and factored add the frozen output and ``g @ W`` inside their
    last matmuls; gemm in float32/float64 trains on ``W + dW`` (one GEMM each way instead of two and a sum).
    Elsewhere (dense, inference, autocast, ``torch.compile``, a weight in another dtype or one that trains) the
    frozen output is computed first and handed to :func:`spectral_linear` as ``base``."""
    if path not in _IMPLS and path != "auto":
        raise ValueError(f"unknown FourierFT kernel path {path!r}; allowed: {', '.join(PATHS)}")
    dev = x.device.type
    inside = (not weight.requires_grad and weight.dtype == x.dtype
              and (bias is None or (not bias.requires_grad and bias.dtype == x.dtype))
              and not (dev in _AUTOCAST_DEVICES and torch.is_autocast_enabled(dev))
              and not torch.compiler.is_compiling())
    if inside:
        return _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, None, False, (weight, bias))
    return spectral_linear(x, spectrum, rows, cols, out_features, in_features, scaling, path,
                           base=torch.nn.functional.linear(x, weight, bias), consume_base=True)


def _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base, consume_base, frozen=None):
    training = torch.is_grad_enabled() and (spectrum.requires_grad or x.requires_grad)
    if path == "auto":
        path = resolve_path(x, spectrum, rows, cols, out_features, in_features, scaling, training)
    if frozen is not None:
        if path in _FROZEN:  # each runs the frozen layer on x's rows, adding into that fresh output at inference
            return _FUSED[path](x, spectrum, rows, cols, out_features, in_features, scaling, frozen=frozen)
        base, consume_base = torch.nn.functional.linear(x, *frozen), True
    fusable = base is not None and base.dtype == x.dtype and base.shape[:-1] == x.shape[:-1]
    if path in OPAQUE and torch.compiler.is_compiling():  # one custom-op node: its caches, nothing rebuilt in-graph
        y = opaque_linear(path, x, spectrum, rows, cols, out_features, in_features, scaling, base if fusable else None)
        return y if base is None or fusable else base + y.to(base.dtype)
    if fusable and path in _FUSED:
        # A consumable frozen output (a fresh tensor from the base layer) takes the sum in place when no autograd
        # graph is recorded: cuBLAS adds into it (beta = 1) instead of first copying it into a new output, a
        # device-to-device copy per layer and call (0.7 ms of an all-linear LLaMA forward, H200,
        # bench/profile_step.py). Under autograd or torch.compile it stays out of place.
        into = (consume_base and not torch.is_grad_enabled() and not base.requires_grad and base.is_contiguous()
                and not torch.compiler.is_compiling())
        return _FUSED[path](x, spectrum, rows, cols, out_features, in_features, scaling, base=base, into_base=into)
    y = _IMPLS[path](x, spectrum, rows, cols, out_features, in_features, scaling)
    return y if base is None else base + y.to(base.dtype)
