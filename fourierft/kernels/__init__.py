"""Ways to compute a FourierFT adapter's contribution ``x @ dW.T`` (all equal to :func:`fourierft.spectral.delta_weight`).

Paths (each differentiable w.r.t. ``x`` and the spectrum, each tested against a float64 reference):

* ``dense``   PEFT's exact numerics: ``dW`` in float32 through a dense complex ``ifft2``, matmul in float32, cast back.
* ``gemm``    ``dW`` materialised (float32 ``ifft2``, cast to the compute dtype), one matmul in the compute dtype, a
              custom backward whose spectrum gradient is one ``rfft2`` of ``G = g^T x``; at inference ``dW`` is cached
              per spectrum version. Best when the layer is small next to the rank ``2n`` (BERT-sized layers).
* ``lowrank`` ``dW = Bu diag(w) Bv^T`` with cached cos/sin bases: two skinny tensor-core matmuls each way, no
              ``d1 x d2`` tensor anywhere. Best for large layers and moderate ``n`` (LLaMA-sized, n = 1000).
* ``fft``     row FFTs, gathers and scatter-adds; never forms ``dW``; cost independent of ``n``: for very large ``n``.
* ``factored`` the lowrank path's two products computed as a DFT split once (Cooley-Tukey, ``d = N1 N2``) into two
              stages of small batched matmuls: ``d (4 N1 + 8 n / N1)`` flops per row instead of ``4 n d``. Best for
              training large layers with n from about 2000 (LLaMA-sized on the GPU; bench/NOTES.md, run 4).

``auto`` (the default) picks by a cost model in :func:`choose_path` (see its docstring for the measured constants).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..spectral import delta_weight
from ._cache import clear_caches
from .factored import factored_linear, split_cost
from .fft import fft_linear
from .gemm import delta_weight_cached, gemm_linear
from .lowrank import lowrank_linear

Path = Literal["auto", "dense", "gemm", "lowrank", "fft", "factored"]
PATHS: tuple[str, ...] = ("auto", "dense", "gemm", "lowrank", "fft", "factored")

__all__ = [
    "PATHS",
    "Path",
    "choose_path",
    "clear_caches",
    "delta_weight_cached",
    "spectral_linear",
]

# Cost of the fft path per row in "matmul-flop equivalents": K * (d1 + d2) + K_n * n. It is memory- and launch-bound
# (casts, gathers, scatter-adds over T x n), so it is fitted against the matmul paths' times per layer
# (bench/kernels.py; H100 bf16 and 2-core CPU fp32, bench/NOTES.md). On the H100 the gemm path beat it at every
# LLaMA shape and n measured, so it is picked only where d1 * d2 is huge next to d1 + d2 + 3 n.
_FFT_COST = {"cuda": (17_000.0, 48_000.0), "cpu": (3_000.0, 2_000.0)}
# Cost of the factored path per row: S * (its flops, ``d * split_cost``, per transform) + K * (d1 + d2). Its small
# batched matmuls run below the big GEMMs' rate (S) and each transform writes and reads a (T, 2d) stage-1 result
# (K, per element of a row). H100: fitted on bench/kernels.py at LLaMA shapes, n = 1000 / 3000 / 10000 (bf16,
# bench/NOTES.md): lowrank stays best at n = 1000, factored wins training from n ~ 2000 (1.1-2.1x over the next
# path), never inference (the cached-dW GEMM or lowrank do). CPU: a rough fit (2 cores, fp32, 1024^2 and 2048^2),
# where it runs about level with the fft path.
_FACTORED_COST = {"cuda": (2.0, 5_000.0), "cpu": (2.0, 3_000.0)}
# Training cost of the gemm path per row, in units of d1 d2: forward, input grad and G = g^T x are 6; on the H100 the
# dense complex ifft2 for dW and the rfft2 of G add about as much again (1.6 ms per 4096^2 layer against lowrank's
# 0.9 ms at n = 1000, bench/NOTES.md).
_GEMM_TRAIN = {"cuda": 10.0, "cpu": 6.0}


def choose_path(
    out_features: int,
    in_features: int,
    n: int,
    *,
    device_type: str,
    training: bool,
) -> str:
    """The fastest path by a flop model (per row of ``x``; ``d1, d2 = out_features, in_features``).

    * gemm: ``6 d1 d2`` training on CPU (forward, input grad, ``G = g^T x``; ``10 d1 d2`` on GPUs, ``_GEMM_TRAIN``),
      ``2 d1 d2`` inference (``dW`` cached);
    * lowrank: ``8 n (d1 + d2)`` training, ``4 n (d1 + d2)`` inference;
    * fft: ``K (d1 + d2) + K_n n`` either way (fitted per device type against the others, ``_FFT_COST``);
    * factored: ``S (d1 c(d1) + d2 c(d2)) + K (d1 + d2)`` inference, twice that training, ``c`` from
      :func:`~fourierft.kernels.factored.split_cost` (``_FACTORED_COST``).

    Measured on an H100 (bf16, 4096 rows, LLaMA shapes) this picks lowrank at n=1000, factored for training and gemm
    for inference at n=3000 and above; on CPU (fp32, BERT-sized 384 x 384, n=1000) gemm. Ties go to the first listed.
    """
    d1, d2 = out_features, in_features
    k, kn = _FFT_COST.get(device_type, _FFT_COST["cuda"])
    fft = k * (d1 + d2) + kn * n
    s, kf = _FACTORED_COST.get(device_type, _FACTORED_COST["cuda"])
    factored = s * (d1 * split_cost(d1, n)[1] + d2 * split_cost(d2, n)[1]) + kf * (d1 + d2)
    if training:
        gemm = _GEMM_TRAIN.get(device_type, _GEMM_TRAIN["cuda"]) * d1 * d2
        costs = {"lowrank": 8.0 * n * (d1 + d2), "gemm": gemm, "fft": fft, "factored": 2.0 * factored}
    else:
        costs = {"lowrank": 4.0 * n * (d1 + d2), "gemm": 2.0 * d1 * d2, "fft": fft, "factored": factored}
    return min(costs, key=costs.__getitem__)


def _dense(x, spectrum, rows, cols, out_features, in_features, scaling):
    dw = delta_weight(spectrum, rows, cols, out_features, in_features, scaling)
    return F.linear(x.to(dw.dtype), dw).to(x.dtype)


_IMPLS = {"dense": _dense, "gemm": gemm_linear, "lowrank": lowrank_linear, "fft": fft_linear,
          "factored": factored_linear}
# paths that can add the frozen layer's output inside their last GEMM
_FUSED = {"gemm": gemm_linear, "lowrank": lowrank_linear, "factored": factored_linear}


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
) -> torch.Tensor:
    """``x @ dW.T``: ``x`` is ``(..., in_features)``, the result ``(..., out_features)`` in ``x.dtype``.

    With ``base`` (the frozen layer's output, ``(..., out_features)``) it returns ``base + x @ dW.T`` in
    ``base.dtype``; lowrank and factored (always) and gemm (at inference) then fuse the addition into their last
    matmul (one pass over the output fewer), the other paths add afterwards. Layers should pass it.

    ``spectrum``: ``(n,)`` float32 coefficients; ``rows``, ``cols``: ``(n,)`` int64 entries on the same device.
    ``dW = scaling * Re(ifft2(S))`` (:func:`fourierft.spectral.delta_weight`). Differentiable w.r.t. ``x`` and
    ``spectrum`` on every path. The dense path is PEFT's: build ``dW`` in float32, run the matmul in float32, cast
    back. The other paths compute in ``x.dtype`` (matmuls; FFTs in float32); under autocast a float32 ``x`` is
    first cast to the autocast dtype, and the result comes back in that dtype, as ``F.linear`` would do.
    """
    if path not in _IMPLS and path != "auto":
        raise ValueError(f"unknown FourierFT kernel path {path!r}; allowed: {', '.join(PATHS)}")
    dev = x.device.type
    if path == "auto":
        training = torch.is_grad_enabled() and (spectrum.requires_grad or x.requires_grad)
        path = choose_path(out_features, in_features, spectrum.shape[0], device_type=dev, training=training)
    if path != "dense" and torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        if x.dtype == torch.float32 and dtype != torch.float32:
            x = x.to(dtype)
        with torch.autocast(dev, enabled=False):
            return _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base)
    return _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base)


def _run(path, x, spectrum, rows, cols, out_features, in_features, scaling, base):
    if base is not None and path in _FUSED and base.dtype == x.dtype and base.shape[:-1] == x.shape[:-1]:
        return _FUSED[path](x, spectrum, rows, cols, out_features, in_features, scaling, base=base)
    y = _IMPLS[path](x, spectrum, rows, cols, out_features, in_features, scaling)
    return y if base is None else base + y.to(base.dtype)
