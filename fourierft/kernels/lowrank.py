"""The low-rank cos/sin path: ``x @ dW.T`` as two skinny matmuls on the tensor cores.

With ``Bu = [cos(2 pi j u_k / d1) | sin(...)]`` of shape ``(d1, 2n)``, ``Bv`` likewise ``(d2, 2n)``,
``w = scale * [c, -c]`` of shape ``(2n,)``, ``scale = scaling / (d1 d2)``:

    dW        = Bu diag(w) Bv^T                       (exact: cos(a + b) = cos a cos b - sin a sin b)
    forward   Q = x @ Bv            (T, 2n);  y = (Q * w) @ Bu^T          (T, d1)
              (with ``base`` given: y = base + ..., fused into the second GEMM through ``addmm``)
    backward  P = g @ Bu            (T, 2n);  grad_x = (P * w) @ Bv^T     (T, d2)
              grad_c = scaling / (d1 d2) * (sum_t P Q)[:n] - (sum_t P Q)[n:]

Given the frozen layer itself (``frozen = (W, bias)``, see :func:`fourierft.kernels.adapted_linear`), the function
computes ``base = x W^T + bias`` and its backward adds the frozen input gradient ``g @ W`` inside grad_x's GEMM.

Cost per row: 4 n (d1 + d2) flops forward, the same backward, against 2 d1 d2 for a dense layer; it runs at
matmul speed in the input dtype (bf16/fp16 on GPU, fp32 accumulation inside the matmul; ``scale`` is applied as
the GEMM's alpha, see ``_mm.py``). Of the activations only ``Q`` is saved for backward (``x`` is not needed). The
bases depend on the entries only and are cached per (size, entries, device, dtype), so all layers of one shape share
them.
"""

from __future__ import annotations

import torch

from ._cache import basis, spectrum_cached
from ._mm import scaled_mm, summed_products
from ._reuse import reuse


def _coeffs(spectrum: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[c, -c]``, shape ``(2n,)``, in ``dtype``; O(1) values (the tiny ``scale`` goes into the GEMM's alpha)."""
    c = spectrum.to(dtype)
    return torch.cat([c, -c])


def lowrank_forward(x, spectrum, bu, bv, scale: float, base=None, into_base: bool = False, q=None, w=None):
    """``(y, q)``: ``y = base + x @ dW.T`` ``(T, d1)`` for ``x`` ``(T, d2)``, and ``q = x @ Bv`` ``(T, 2n)``
    (computed here unless given), all that the backward needs; ``w``: ``[c, -c]`` if at hand."""
    q = x @ bv if q is None else q  # (T, 2n)
    w = _coeffs(spectrum, q.dtype) if w is None else w
    # y = base + scale * (q [c, -c]) Bu^T in one GEMM: alpha = scale, beta = 1 adds the frozen output
    return scaled_mm(q * w, bu.T, scale, base, into_base), q


def lowrank_backward(g, q, spectrum, bu, bv, scale: float, need_x: bool, need_c: bool, weight=None, w=None):
    """``(grad_x (T, d2) or None, grad_c (n,) or None)`` for the upstream ``g`` ``(T, d1)``; with the frozen
    ``weight`` ``(d1, d2)``, grad_x includes the frozen layer's ``g @ W``; ``w``: the forward's ``[c, -c]``."""
    n = spectrum.shape[0]
    p = g.to(q.dtype) @ bu  # (T, 2n)
    grad_x = grad_c = None
    if need_x:
        base = None if weight is None else g @ weight  # (T, d2), a fresh tensor the GEMM adds into
        w = _coeffs(spectrum, p.dtype) if w is None else w
        grad_x = scaled_mm(p * w, bv.T, scale, base, into_base=True)  # (T, d2)
    if need_c:
        r = summed_products(p, q, 0)  # (2n,): over the T rows
        grad_c = ((r[:n] - r[n:]) * scale).to(spectrum.dtype)
    return grad_x, grad_c


class LowRankSpectralLinear(torch.autograd.Function):
    """``y = x @ dW.T`` through the cos/sin factorisation. ``x``: ``(T, d2)`` in the compute dtype (its gradient's
    way in; its values are read once, into ``q = x @ Bv``). With the frozen ``weight`` ``(d1, d2)`` (and ``bias``)
    instead of ``base``, ``y = x @ (W + dW).T + bias``, the frozen layer run here."""

    @staticmethod
    def forward(ctx, x, q, spectrum, bu, bv, scale, base=None, into_base=False, weight=None, bias=None):  # noqa: D102
        if weight is not None:
            base, into_base = torch.nn.functional.linear(x, weight, bias), True
        w = _coeffs(spectrum, q.dtype)  # (2n,): kept for the backward (two launches fewer there)
        y, _ = lowrank_forward(x, spectrum, bu, bv, scale, base, into_base, q, w)
        ctx.save_for_backward(q, spectrum, bu, bv, weight, w)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        q, spectrum, bu, bv, weight, w = ctx.saved_tensors
        need_x, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_x, grad_c = lowrank_backward(g, q, spectrum, bu, bv, ctx.scale, need_x, need_c, weight, w)
        grad_base = g if ctx.needs_input_grad[6] else None
        return grad_x, None, grad_c, None, None, None, grad_base, None, None, None


def lowrank_linear(
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
    """``x @ dW.T`` (plus ``base``, fused into the last GEMM, when given with ``x``'s dtype and shape ``(..., d1)``;
    written into ``base`` itself with ``into_base``) for ``x`` of shape ``(..., in_features)``; computed and returned
    in ``x.dtype``. ``frozen``: ``(W, bias)`` of the frozen layer in ``x``'s dtype, run here instead of a ``base``."""
    dtype = x.dtype
    bu = basis(rows, out_features, dtype)  # (d1, 2n)
    bv = basis(cols, in_features, dtype)  # (d2, 2n)
    scale = scaling / (out_features * in_features)
    x2 = x.reshape(-1, in_features)
    q = reuse(x, bv, lambda: x2 @ bv)  # shared with the layer before on the same input and entries: see _reuse
    b2 = None if base is None else base.reshape(-1, out_features)
    if not (torch.is_grad_enabled()
            and (x.requires_grad or spectrum.requires_grad or (base is not None and base.requires_grad))):
        if frozen is not None:
            b2, into_base = torch.nn.functional.linear(x2, *frozen), True
        # inference: [c, -c] is built once per version of the coefficients, not at every call (two launches)
        w = spectrum_cached("coefficients", spectrum, (dtype,), lambda: _coeffs(spectrum.detach(), dtype))
        y, _ = lowrank_forward(x2, spectrum, bu, bv, scale, b2, into_base, q, w)
    else:
        y = LowRankSpectralLinear.apply(x2, q, spectrum, bu, bv, scale, b2, into_base, *(frozen or (None, None)))
    return y.reshape(*x.shape[:-1], out_features)
