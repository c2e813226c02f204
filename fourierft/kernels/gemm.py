"""The gemm path: materialise ``dW`` once per forward (or once per spectrum version at inference), one matmul.

    forward   dW = delta_weight(...) (float32 ifft2, the package's one definition), held unscaled (dW / scale, with
              scale = scaling / (d1 d2)) in the compute dtype; scale is the GEMMs' alpha (see ``_mm.py``)
              y  = x @ dW^T                                   (T, d1)
    backward  grad_x = g @ dW                                 (T, d2)
              grad_c = scaling / (d1 d2) * Re(fft2(G))[u, v],  G = g^T x  (d1, d2)

``Re(fft2(G))`` comes from the half spectrum ``rfft2(G)`` (G is real): for ``v > d2/2`` the entry is read at
``((d1 - u) % d1, d2 - v)``, whose real part is equal. Unlike PEFT's dense path (autograd through a complex
``d1 x d2`` scatter and ``ifft2``, matmul in float32), the matmuls run in the input dtype and the spectrum's
gradient needs one real FFT of ``G``. Costs ``d1 d2`` memory per layer (``dW`` is saved for backward): the path for
small layers (``d1 d2 <= 2 n (d1 + d2)``, e.g. BERT-sized on CPU) and for inference, where ``dW`` is cached per
spectrum version and reused until the spectrum changes.
"""

from __future__ import annotations

import torch

from ..spectral import delta_weight
from ._cache import spectrum_cached
from ._mm import scaled_mm


def half_column(rows: torch.Tensor, cols: torch.Tensor, d1: int, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where entry ``(u, v)`` of ``Re(fft2(G))`` sits in the half spectrum ``rfft2(G)`` ``(d1, d2//2 + 1)``:
    ``(u, v)`` for ``v <= d2/2``, else its conjugate partner ``((d1 - u) % d1, d2 - v)`` (same real part)."""
    low = cols <= d2 // 2
    return torch.where(low, rows, (d1 - rows) % d1), torch.where(low, cols, d2 - cols)


def delta_weight_cached(
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`fourierft.spectral.delta_weight` cast to ``dtype``, cached on the spectrum tensor.

    The cache entry is checked against ``spectrum._version`` (in-place edits bump it; optimizer steps are seen too),
    the entries' contents, shape, scaling, device and dtype on every call, and dies with the spectrum
    (:func:`._cache.spectrum_cached`). Returns a detached ``(out_features, in_features)`` tensor, for inference.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return spectrum_cached("dense", spectrum, (rows, cols, out_features, in_features, float(scaling), dtype),
                           lambda: delta_weight(spectrum.detach(), rows, cols, out_features, in_features, scaling,
                                                dtype=work).to(dtype))


class GemmSpectralLinear(torch.autograd.Function):
    """``y = scale * x @ dWu.T`` with the unscaled ``dWu = dW / scale`` given (``(d1, d2)``, compute dtype; O(sqrt n)
    entries, so fp16 neither underflows nor loses digits; ``scale`` is the GEMMs' alpha); ``x``: ``(T, d2)``.

    With the frozen ``weight`` ``(d1, d2)`` (and ``bias``) of a float32/float64 layer: ``y = x @ (W + dW).T + bias``
    through one GEMM each way on the summed matrix (its rounding, eps ``|W|``, is of the order of the output's own);
    the spectrum's gradient still comes from ``G = g^T x`` alone."""

    @staticmethod
    def forward(ctx, x, spectrum, dwu, rows, cols, scale, weight=None, bias=None):  # noqa: D102
        ctx.scale, ctx.merged = scale, weight is not None
        ctx.spectrum_dtype = spectrum.dtype
        if ctx.merged:
            merged = torch.add(weight, dwu, alpha=scale)  # W + dW, (d1, d2)
            ctx.save_for_backward(x, merged, rows, cols)
            return torch.nn.functional.linear(x, merged, bias)
        ctx.save_for_backward(x, dwu, rows, cols)
        return scaled_mm(x, dwu.T, scale)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, w, rows, cols = ctx.saved_tensors  # w: W + dW (merged) or dWu
        d1, d2 = w.shape
        g = g.to(x.dtype)
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ w if ctx.merged else scaled_mm(g, w, ctx.scale)
        if ctx.needs_input_grad[1]:
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            rows_t = max(x.shape[0], 1)
            # G = sum_t g_t x_t^T, (d1, d2); the mean (alpha = 1/T) cannot overflow fp16, the sum is restored in fp32
            big = scaled_mm(g.T, x, 1.0 / rows_t).to(work) * rows_t
            spec = torch.fft.rfft2(big)  # (d1, d2//2 + 1)
            u, v = half_column(rows, cols, d1, d2)
            grad_c = (spec.real[u, v] * ctx.scale).to(ctx.spectrum_dtype)
        return grad_x, grad_c, None, None, None, None, None, None


def gemm_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    base: torch.Tensor | None = None,
    into_base: bool = False,
    frozen: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """``x @ dW.T`` (``+ base``) for ``x`` of shape ``(..., in_features)``; matmul in ``x.dtype``.

    At inference a ``base`` of ``x``'s dtype is added inside the GEMM (``addmm``, beta = 1; into ``base`` itself
    with ``into_base``); in training it is added afterwards. ``frozen``: ``(W, bias)`` of the frozen layer in
    ``x``'s dtype instead of a ``base``: training in float32/float64 runs ``x @ (W + dW).T`` (one GEMM each way,
    not two and a sum), elsewhere ``base = x @ W.T + bias`` first."""
    d1, d2 = out_features, in_features
    x2 = x.reshape(-1, d2)
    scale = scaling / (d1 * d2)
    unscaled = float(d1 * d2)  # delta_weight(scaling = d1 d2) = dW / scale = Re(sum_k c_k e^{...})
    training = torch.is_grad_enabled() and (spectrum.requires_grad or x.requires_grad)
    if frozen is not None and not (training and x.dtype in (torch.float32, torch.float64)):
        # half precision keeps W and dW apart: W + dW rounded to 8 or 11 bits would bury dW
        base, into_base, frozen = torch.nn.functional.linear(x, *frozen), not training, None
    if training:
        # training: dW changes every step, so build it fresh (no cache: it would hold stale memory)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        dwu = delta_weight(spectrum.detach(), rows, cols, d1, d2, unscaled, dtype=work).to(x.dtype)
        if frozen is not None:
            y = GemmSpectralLinear.apply(x2, spectrum, dwu, rows, cols, scale, *frozen)
            return y.reshape(*x.shape[:-1], d1)
        y = GemmSpectralLinear.apply(x2, spectrum, dwu, rows, cols, scale)
    else:
        dwu = delta_weight_cached(spectrum, rows, cols, d1, d2, unscaled, dtype=x.dtype)
        if base is not None:
            return scaled_mm(x2, dwu.T, scale, base.reshape(-1, d1), into_base).reshape(*x.shape[:-1], d1)
        y = scaled_mm(x2, dwu.T, scale)
    y = y.reshape(*x.shape[:-1], d1)
    return y if base is None else base + y
