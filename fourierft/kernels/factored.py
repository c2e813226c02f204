"""The factored-DFT path: ``x @ dW.T`` through a DFT split once (Cooley-Tukey) and run as batched matmuls.

With ``w_d = e^{2 pi i / d}``, ``scale = scaling / (d1 d2)`` and
``dW[i, j] = scale Re sum_k c_k w_d1^{u_k i} w_d2^{v_k j}`` (:func:`fourierft.spectral.delta_weight`), everything is
two primitives: *analysis* ``X_k = sum_j x_j w_d^{f_k j}`` (n chosen frequencies of a row) and *synthesis*
``y_i = Re sum_k Z_k w_d^{f_k i}``:

    forward   X = analysis(x; v, d2)       y      = scale synthesis(c X; u, d1)
    backward  G = analysis(g; u, d1)       grad_x = scale synthesis(c G; v, d2)
              grad_c = scale sum_t Re(G X)

(X and G are ``(rows, T)``: Re and Im of every frequency in a plan's grouped layout, see :class:`Plan`.)
The lowrank path runs each primitive as one dense matmul with a (d, 2n) cos/sin basis: ``4 n d`` flops per row.
Here ``d = N1 N2``; with ``j = N2 j1 + j2`` and ``f1 = f mod N1``, ``w_d^{f j} = w_N1^{f1 j1} w_d^{f j2}``, so

    X_k = sum_{j2} w_d^{f_k j2} A[f1_k, j2],    A[f1, j2] = sum_{j1} w_N1^{f1 j1} x[N2 j1 + j2]

stage 1 is an N1-point DFT of every row, stage 2 one small matmul per group of frequencies sharing ``f1``. Rows of
``x`` are real, so ``A[N1 - f1] = conj A[f1]``: stage 1 needs only ``N1`` real rows per block of ``N2`` columns
(``A[0]``, ``A[N1/2]`` and the Re / Im parts of ``A[1 .. N1/2)``; an ``(N1, N1)`` matmul, ``2 N1 d`` flops, and a
``(T, d)`` result), and the groups ``f1`` and ``N1 - f1`` are served from one pair of rows (:func:`_pairing`; stage 2
``8 m d / 2`` flops for ``N1 / 2`` groups of ``m`` slots, about ``2n / N1`` each). Synthesis is the same two stages
transposed. With N1 near ``2 sqrt(n)`` that is ~12x fewer flops than lowrank at n = 1000 and d = 4096, for any d
with a divisor near there (no radix restriction: 11008 = 43 x 256). It is bound by memory, not flops: each transform
writes and reads one ``(T, d)`` stage-1 result (docs/benchmarks.md); stage 1 runs through :func:`.blockmm.blockmm`
(a Triton kernel on CUDA where it beats cuBLAS' batched GEMM). Only inference launches that kernel. A training step
is bound by the host (on an H200's host, 24-47 ms to issue an all-linear step of 43 ms of GPU work), and a Triton
launch costs the host more than a cuBLAS call: with stage 1 on cuBLAS the step was faster in 8 of 12 rounds, by
0.2-7.8 ms, and slower in 4, by 0.6-1.2 ms (bench/stage1_ab.py). Inference, bound by the GPU, was faster on the
kernel in 7 of 9 rounds. Matmuls run in the input dtype with fp32 accumulation; ``scale`` is the last matmul's
alpha, as in ``_mm.py``.
"""

from __future__ import annotations

import torch

from . import factored_triton
from ._mm import summed_products
from ._cache import spectrum_cached
from ._reuse import reuse
from .blockmm import blockmm
from .factored_plan import Plan, make_plan, plan, split_cost

__all__ = ["Plan", "analysis", "factored_linear", "fused_linear", "make_plan", "plan", "split_cost", "synthesis",
           "weighted_inverse"]


def analysis(x: torch.Tensor, p: Plan, conj: bool = False, kernel: bool = True) -> torch.Tensor:
    """``X[k, t] = sum_j x[t, j] w_d^{f_k j}`` for ``x`` ``(T, d)``, as ``(p.rows, T)`` in ``p``'s grouped layout
    (``[Re X; Im X]`` per group; ``conj``: ``[Re X; -Im X]``, the same products through ``p.inv_twiddle``).
    ``kernel``: whether stage 1 may launch the Triton kernel (:func:`.blockmm.blockmm`; training passes False)."""
    t = x.shape[0]
    # Views are taken once each, as as_strided where two would do: each is a trip through the dispatcher, and an
    # all-linear step is bound by the host (docs/benchmarks.md, step_spread)
    a = blockmm(p.dft, x, kernel=kernel)  # (T, 2G n2): stage 1 on each row's (n1, n2) block, rows (g, R/I, j2)
    a = a.as_strided((p.groups, 2 * p.n2, t), (2 * p.n2, 1, a.stride(0)))  # (G, 2 n2, T): [R; I] per group
    return torch.bmm(p.inv_twiddle if conj else p.twiddle, a).view(p.rows, t)  # stage 2: (G, 2m, T)


def regroup(src: Plan, dst: Plan) -> torch.Tensor:
    """``(dst.rows,)`` indices into ``src``'s grouped rows that put each frequency where ``dst`` wants it; built once
    per plan pair (two launches fewer per call) and kept on ``src`` for as long as ``dst`` lives."""
    idx = src.moves.get(dst)
    if idx is None:
        idx = torch.zeros(dst.rows, dtype=torch.int64, device=dst.row.device)  # padding reads row 0, weighted 0
        idx = src.moves[dst] = idx.index_put_((dst.row,), src.row)
    return idx


def weighted_inverse(spectrum: torch.Tensor, p: Plan, conj: bool = False) -> torch.Tensor:
    """``p.inv_twiddle`` with the rows of frequency k times ``c_k`` (``spectrum`` ``(n,)``, any float dtype; each
    product rounded once, to the plan's dtype): ``(G, 2m, 2 n2)``, what :func:`synthesis` multiplies by. The
    coefficients ride on this small matrix, not on the ``(rows, T)`` transform; padding rows stay zero. ``conj``:
    ``p.twiddle`` instead, for a ``z`` given as ``[Re Z; -Im Z]`` (``analysis(..., conj=True)``)."""
    tw = p.twiddle if conj else p.inv_twiddle
    w = torch.take(spectrum, p.coef)  # (G, 2m, 1): c_k at both rows of frequency k; some c on padding (rows 0)
    return torch.mul(tw, w, out=torch.empty_like(tw))


def inference_inverse(spectrum: torch.Tensor, p: Plan) -> torch.Tensor:
    """:func:`weighted_inverse`, cached on ``spectrum`` until its coefficients change (:func:`._cache.spectrum_cached`):
    at inference the two launches that build it run once, not at every call. The key is the plan itself (plans
    are shared per entries' contents, size, device, dtype and layout, and compare by identity): no content hash
    of the entries per call."""
    return spectrum_cached("weighted", spectrum, (p,), lambda: weighted_inverse(spectrum.detach(), p))


def synthesis(
    z: torch.Tensor, p: Plan, inv: torch.Tensor, alpha: float, base: torch.Tensor | None = None,
    into_base: bool = False, kernel: bool = True,
) -> torch.Tensor:
    """``base + alpha Re(sum_k c_k Z_k w_d^{f_k i})`` of shape ``(T, d)`` for ``z`` ``(p.rows, T)`` grouped and the
    weighted inverse twiddles ``inv`` (:func:`weighted_inverse`; ``p.inv_twiddle`` itself for all ``c_k = 1``);
    ``base``: ``(T, d)``, written into itself (contiguous) with ``into_base``; ``kernel`` as in :func:`analysis`."""
    t = z.shape[1]
    z = z.contiguous()  # (rows, T); as_strided below reads it by its layout
    zg = z.as_strided((p.groups, t, 2 * p.m), (2 * p.m * t, 1, t))  # (G, T, 2m)
    b = z.new_empty(t, p.groups * 2 * p.n2)  # rows (g, R/I, i2) per token: what inv_dft's columns read
    torch.bmm(zg, inv, out=b.as_strided((p.groups, t, 2 * p.n2), (2 * p.n2, b.stride(0), 1)))  # stage 2
    return blockmm(p.inv_dft, b, alpha, base, out=base if into_base else None, kernel=kernel)  # stage 1: (T, d)


def transform_input(x: torch.Tensor, pv: Plan, n: int, fused: bool = False) -> torch.Tensor:
    """``xk`` ``(2n, T)``: the ``[Re X_k; Im X_k]`` of ``x`` ``(T, d2)`` at the entries' column frequencies."""
    if fused:
        return factored_triton.analysis(x, pv, n)
    return analysis(x, pv, kernel=False).index_select(0, pv.row)  # saved for a backward: training


def factored_forward(x, spectrum, pu: Plan, pv: Plan, scale: float, base=None, into_base: bool = False,
                     fused: bool = False, xk: torch.Tensor | None = None):
    """``(y, xk)``: ``y = base + x @ dW.T`` ``(T, d1)`` for ``x`` ``(T, d2)``, and ``xk`` (:func:`transform_input`,
    computed here unless given), all that the backward needs. ``fused``: each transform one Triton kernel
    (:mod:`.factored_triton`; the caller checked ``supports``)."""
    if xk is None:
        xk = transform_input(x, pv, spectrum.shape[0], fused)
    if fused:
        return factored_triton.synthesis(xk, pu, spectrum, scale, base, into_base), xk
    xu = xk.index_select(0, pu.take)  # X in u's grouped layout: (pu.rows, T)
    return synthesis(xu, pu, weighted_inverse(spectrum, pu), scale, base, into_base, kernel=False), xk  # (T, d1)


def factored_inference(x, x2, spectrum, pu: Plan, pv: Plan, scale: float, base=None, into_base: bool = False,
                       fused: bool = False):
    """:func:`factored_forward`'s ``y`` ``(T, d1)`` alone, for ``x`` ``(..., d2)`` (the caller's tensor, the key of
    the reused transform) and its rows ``x2`` ``(T, d2)``, when nothing is saved for a backward: the analysis goes
    straight into u's grouped layout (one gather, not two through ``xk``), shared with the layer before that read
    the same ``x`` through the same plans (:func:`._reuse.reuse`: ``k_proj`` and ``v_proj`` take ``q_proj``'s),
    and pu's weighted inverse twiddles come from the inference cache."""
    if fused:
        xk = reuse(x, pv, lambda: transform_input(x2.contiguous(), pv, spectrum.shape[0], True))  # training's layout
        return factored_triton.synthesis(xk, pu, spectrum, scale, base, into_base)
    idx = regroup(pv, pu)  # one object per plan pair: the key of the reused transform
    xu = reuse(x, idx, lambda: analysis(x2.contiguous(), pv).index_select(0, idx))  # (pu.rows, T)
    inv = inference_inverse(spectrum, pu)
    return synthesis(xu, pu, inv, scale, base, into_base)


def factored_backward(g, xk, spectrum, pu: Plan, pv: Plan, scale: float, need_x: bool, need_c: bool,
                      fused: bool = False, weight: torch.Tensor | None = None):
    """``(grad_x (T, d2) or None, grad_c (n,) or None)`` for the upstream ``g`` ``(T, d1)``; with the frozen
    ``weight`` ``(d1, d2)``, grad_x includes the frozen layer's ``g @ W`` (added inside the last stage)."""
    g = g.to(xk.dtype).contiguous()
    grad_x = grad_c = None
    base = g @ weight if need_x and weight is not None else None  # (T, d2), a fresh tensor to add into
    if fused:
        gk = factored_triton.analysis(g, pu, spectrum.shape[0])  # (2n, T)
        if need_x:
            grad_x = factored_triton.synthesis(gk, pv, spectrum, scale, base, into_base=True)
    else:
        # [Re G; -Im G]: the sign of Re(G X) = Gr Xr - Gi Xi rides on the twiddles, so grad_c is one sum of products
        gu = analysis(g, pu, conj=True, kernel=False)  # (pu.rows, T)
        if need_x:
            gv = gu.index_select(0, regroup(pu, pv))
            grad_x = synthesis(gv, pv, weighted_inverse(spectrum, pv, conj=True), scale, base, into_base=True,
                               kernel=False)
        gk = gu.index_select(0, pu.row) if need_c else None
    if need_c:
        n, t = spectrum.shape[0], xk.shape[1]
        if fused:  # gk = [Re G; Im G]
            r = summed_products(gk, xk, 1)  # (2n,): over the T rows
            grad_c = ((r[:n] - r[n:]) * scale).to(spectrum.dtype)
        else:  # over the T rows and both halves
            grad_c = (summed_products(gk, xk, (0, 2), (2, n, t)) * scale).to(spectrum.dtype)
    return grad_x, grad_c


class FactoredSpectralLinear(torch.autograd.Function):
    """``y = base + x @ dW.T`` through the factored DFT. ``x``: ``(T, d2)`` (its gradient's way in; its values are
    read once, into ``xk`` ``(2n, T)``, :func:`transform_input`); ``how``: ``(pu, pv, scale, into_base, fused)``,
    the plans for (u, d1) and (v, d2) and the rest of :func:`factored_forward`'s arguments, in one tuple (every
    argument costs ``apply`` host time). With the frozen ``weight`` ``(d1, d2)`` (and ``bias``) instead of ``base``,
    ``y = x @ (W + dW).T + bias``, the frozen layer run here."""

    @staticmethod
    def forward(ctx, x, xk, spectrum, base, weight, bias, how):  # noqa: D102
        pu, pv, scale, into_base, fused = how
        if weight is not None:
            base, into_base = torch.nn.functional.linear(x, weight, bias), True
        y, _ = factored_forward(x, spectrum, pu, pv, scale, base, into_base, fused, xk)
        ctx.save_for_backward(xk, spectrum, weight)
        ctx.how = how
        return y

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        xk, spectrum, weight = ctx.saved_tensors
        pu, pv, scale, _, fused = ctx.how
        need = ctx.needs_input_grad
        grad_x, grad_c = factored_backward(g, xk, spectrum, pu, pv, scale, need[0], need[2], fused, weight)
        return grad_x, None, grad_c, (g if need[3] else None), None, None, None


def factored_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    base: torch.Tensor | None = None,
    into_base: bool = False,
    fused: bool = False,
    frozen: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """``x @ dW.T`` (plus ``base`` ``(..., d1)`` in ``x``'s dtype, fused into the last matmul; written into ``base``
    itself with ``into_base``) for ``x`` of shape ``(..., in_features)``; computed and returned in ``x.dtype``.
    ``fused``: each transform one Triton kernel (CUDA, fp16/bf16; a clear error elsewhere). ``frozen``: ``(W, bias)``
    of the frozen layer in ``x``'s dtype, run here instead of a ``base``."""
    pu = plan(rows, out_features, x.dtype, half=not fused)  # the kernels keep one group per f1 (see fits)
    pv = plan(cols, in_features, x.dtype, half=not fused)
    if fused:
        factored_triton.require(x, pu, pv)
    scale = scaling / (out_features * in_features)
    x2 = x.reshape(-1, in_features)
    b2 = None if base is None else base.reshape(-1, out_features)
    if not (torch.is_grad_enabled()
            and (x.requires_grad or spectrum.requires_grad or (base is not None and base.requires_grad))):
        if frozen is not None:
            b2, into_base = torch.nn.functional.linear(x2, *frozen), True
        y = factored_inference(x, x2, spectrum, pu, pv, scale, b2, into_base, fused)
    else:
        # the layer before with the same input and column entries (q, k, v) already transformed it: see _reuse
        xk = reuse(x, pv, lambda: transform_input(x2.contiguous(), pv, spectrum.shape[0], fused))
        weight, bias = frozen or (None, None)
        y = FactoredSpectralLinear.apply(x2, xk, spectrum, b2, weight, bias, (pu, pv, scale, into_base, fused))
    return y.reshape(*x.shape[:-1], out_features)


def fused_linear(x, spectrum, rows, cols, out_features, in_features, scaling, base=None, into_base=False,
                 frozen=None):
    """The ``fused`` path: :func:`factored_linear` with each transform one Triton kernel."""
    return factored_linear(x, spectrum, rows, cols, out_features, in_features, scaling, base, into_base, fused=True,
                           frozen=frozen)
