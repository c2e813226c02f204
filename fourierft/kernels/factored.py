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

stage 1 is an N1-point DFT of every row (a (2 N1, N1) matmul, ``4 N1 d`` flops), stage 2 one small matmul per
group of frequencies sharing ``f1`` (``8 m d`` flops, ``m`` = the largest group, about n / N1). Synthesis is the
same two stages transposed. With N1 near ``sqrt(2n)`` that is ``d (4 N1 + 8 m)``: ~8x fewer flops than lowrank at
n = 1000 and d = 4096, for any d with a divisor near there (no radix restriction: 11008 = 43 x 256). It is bound by
memory, not flops: each transform writes and reads one ``(T, 2d)`` stage-1 result (docs/benchmarks.md, H100 run 4). Matmuls
run in the input dtype with fp32 accumulation; ``scale`` is the last matmul's alpha, as in ``_mm.py``.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field

import torch

from . import factored_triton
from ._cache import cached
from ._mm import summed_products


@dataclass(frozen=True, eq=False)  # identity equality: plans are shared, and they key their ``moves``
class Plan:
    """How one (frequencies, size) pair is split; matrices in the compute dtype.

    ``n1 * n2 = d``, ``m`` slots per group. Transformed rows live in a *grouped* layout of ``n1 * 2m`` rows
    (group ``f1``, then ``m`` real parts, then ``m`` imaginary parts); ``row`` (2n,) gives the rows of
    ``[Re X_k; Im X_k]`` there. Padding rows hold zeros on the way out of :func:`analysis` and are ignored
    (zero weights) on the way into :func:`synthesis`.
    """

    n1: int
    n2: int
    m: int
    dft: torch.Tensor  # (2 n1, n1): rows (f1, re/im) of w_N1^{f1 j1}
    twiddle: torch.Tensor  # (n1, 2m, 2 n2): [[C, -S], [S, C]] per group, C[k, j2] = cos(2 pi f_k j2 / d), S = sin
    inv_twiddle: torch.Tensor  # (2, n1, 2m, n2): [[C], [-S]] (real part out) and [[S], [C]] (imaginary part out)
    inv_dft: torch.Tensor  # (n1, 2 n1): columns (re/im, f1) of [cos | -sin](2 pi f1 i1 / n1)
    row: torch.Tensor  # (2n,) int64
    compact: torch.Tensor  # (rows,) int32: the row of ``[Re X_k; Im X_k]`` each grouped row holds, -1 on padding
    moves: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)  # regroup's

    @property
    def rows(self) -> int:
        return self.n1 * 2 * self.m


# bf16/fp16 GEMMs on tensor cores want 16-byte aligned leading dimensions: stage 1 reads ``x`` as (n1, n2) blocks
# and multiplies by an (2 n1, n1) DFT, so n1 and n2 both multiples of 8 keep cuBLAS on its fast kernels. With
# 11008 = 43 x 256 the unaligned split (n1 = 43) fell back to sm75-era kernels taking 0.3 ms per call on an H200
# (bench/profile_step.py, docs/benchmarks.md); an aligned split is taken whenever d has one.
ALIGN = 8


@functools.lru_cache(maxsize=256)
def split_cost(d: int, n: int) -> tuple[int, float]:
    """The divisor ``N1`` of ``d`` minimising ``4 N1 + 8 m`` with ``m`` the expected largest group of n uniform
    frequencies in N1 groups (mean plus 3 standard deviations), and that cost per element of a row. Splits with
    ``N1`` and ``d / N1`` both multiples of :data:`ALIGN` are preferred whenever ``d`` has one."""
    best = {True: (1, 4.0 + 8.0 * n), False: (1, 4.0 + 8.0 * n)}  # aligned -> best so far
    for n1 in range(2, d // 2 + 1):
        if d % n1:
            continue
        mean = n / n1
        cost = 4.0 * n1 + 8.0 * (mean + 3.0 * math.sqrt(mean) + 1.0)
        aligned = n1 % ALIGN == 0 and (d // n1) % ALIGN == 0
        if cost < best[aligned][1]:
            best[aligned] = (n1, cost)
    return best[True] if best[True][0] > 1 else best[False]


def _cos_sin(m: torch.Tensor, d: int, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    angle = (m % d).to(work) * (2 * math.pi / d)  # exact integer phase first, as in _cache.make_basis
    return torch.cos(angle), torch.sin(angle)


@torch.compiler.disable
def make_plan(idx: torch.Tensor, d: int, dtype: torch.dtype) -> Plan:
    """The split and matrices for frequencies ``idx`` ``(n,)`` of a length-``d`` transform."""
    n = idx.shape[0]
    dev = idx.device
    work = torch.float64 if dtype == torch.float64 else torch.float32
    n1, _ = split_cost(d, n)
    n2 = d // n1
    f = idx.to(torch.int64)
    f1 = f % n1
    order = torch.argsort(f1, stable=True)
    counts = torch.bincount(f1, minlength=n1)
    m = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(f)
    slot[order] = torch.arange(n, device=dev) - starts[f1[order]]

    a = torch.arange(n1, device=dev)
    c1, s1 = _cos_sin(a[:, None] * a[None, :], n1, work)  # (n1, n1) [f1, j1], symmetric
    dft = torch.stack([c1, s1], 1).reshape(2 * n1, n1)
    inv_dft = torch.cat([c1, -s1], 1)

    c, s = _cos_sin(f[:, None] * torch.arange(n2, device=dev)[None, :], d, work)  # (n, n2) [k, j2]
    tw = torch.zeros(n1, 2 * m, 2 * n2, dtype=work, device=dev)
    tw[f1, slot, :n2], tw[f1, slot, n2:] = c, -s  # Re X = C A_re - S A_im
    tw[f1, m + slot, :n2], tw[f1, m + slot, n2:] = s, c  # Im X = S A_re + C A_im
    inv = torch.zeros(2, n1, 2 * m, n2, dtype=work, device=dev)
    inv[0, f1, slot], inv[0, f1, m + slot] = c, -s  # Re B = C Z_re - S Z_im
    inv[1, f1, slot], inv[1, f1, m + slot] = s, c  # Im B = S Z_re + C Z_im
    row = torch.cat([f1 * 2 * m + slot, f1 * 2 * m + m + slot])
    compact = torch.full((n1 * 2 * m,), -1, dtype=torch.int32, device=dev)
    compact[row] = torch.arange(2 * n, dtype=torch.int32, device=dev)
    cast = lambda t: t.to(dtype).contiguous()  # noqa: E731
    return Plan(n1, n2, m, cast(dft), cast(tw), cast(inv), cast(inv_dft), row, compact)


def plan(idx: torch.Tensor, d: int, dtype: torch.dtype) -> Plan:
    """Cached :func:`make_plan` (per content of ``idx``, ``d``, device, dtype)."""
    return cached("plan", idx, d, dtype, make_plan)


def analysis(x: torch.Tensor, p: Plan) -> torch.Tensor:
    """``X[k, t] = sum_j x[t, j] w_d^{f_k j}`` for ``x`` ``(T, d)``, as ``(p.rows, T)`` in ``p``'s grouped layout."""
    t = x.shape[0]
    a = torch.bmm(p.dft.expand(t, -1, -1), x.view(t, p.n1, p.n2))  # (T, 2 n1, n2): stage 1, rows (f1, re/im)
    a = a.view(t, p.n1, 2 * p.n2).permute(1, 2, 0)  # (n1, 2 n2, T): [A_re; A_im] per group (a strided view)
    return torch.bmm(p.twiddle, a).view(p.rows, t)  # stage 2: (n1, 2m, T)


def regroup(src: Plan, dst: Plan) -> torch.Tensor:
    """``(dst.rows,)`` indices into ``src``'s grouped rows that put each frequency where ``dst`` wants it; built once
    per plan pair (two launches fewer per call) and kept on ``src`` for as long as ``dst`` lives."""
    idx = src.moves.get(dst)
    if idx is None:
        idx = torch.zeros(dst.rows, dtype=torch.int64, device=dst.row.device)  # padding reads row 0, weighted 0
        idx = src.moves[dst] = idx.index_put_((dst.row,), src.row)
    return idx


def weights(spectrum: torch.Tensor, p: Plan, dtype: torch.dtype) -> torch.Tensor:
    """``c_k`` at both rows of frequency k in ``p``'s grouped layout, 0 on padding: ``(p.rows,)``."""
    c = spectrum.to(dtype)
    return c.new_zeros(p.rows).index_put_((p.row,), torch.cat([c, c]))


def synthesis(
    z: torch.Tensor, p: Plan, w: torch.Tensor, alpha: float, base: torch.Tensor | None = None,
    into_base: bool = False,
) -> torch.Tensor:
    """``base + alpha Re(sum_k w_k Z_k w_d^{f_k i})`` of shape ``(T, d)`` for ``z`` ``(p.rows, T)`` grouped;
    written into ``base`` (contiguous) itself with ``into_base``."""
    t = z.shape[1]
    zg = z.view(p.n1, 2 * p.m, t).transpose(1, 2)  # (n1, T, 2m), a strided view
    inv = p.inv_twiddle * w.view(1, p.n1, 2 * p.m, 1)  # the coefficients ride on the small matrix, not on z
    b = z.new_empty(2, p.n1, t, p.n2)
    torch.bmm(zg, inv[0], out=b[0])  # stage 2: Re B (n1, T, n2)
    torch.bmm(zg, inv[1], out=b[1])  # Im B
    b = b.view(2 * p.n1, t, p.n2).transpose(0, 1)  # (T, 2 n1, n2): rows (re/im, f1), a strided view
    inp = z.new_zeros(()) if base is None else base.reshape(t, p.n1, p.n2)
    y = torch.baddbmm(inp, p.inv_dft.expand(t, -1, -1), b, beta=0.0 if base is None else 1.0, alpha=alpha,
                      out=inp if into_base and base is not None else None)
    return y.view(t, p.n1 * p.n2)  # stage 1


def factored_forward(x, spectrum, pu: Plan, pv: Plan, scale: float, base=None, into_base: bool = False,
                     fused: bool = False):
    """``(y, xk)``: ``y = base + x @ dW.T`` ``(T, d1)`` for ``x`` ``(T, d2)``, and ``xk`` ``(2n, T)``, the
    ``[Re X_k; Im X_k]`` of ``x`` at the entries' column frequencies, all that the backward needs. ``fused``: each
    transform one Triton kernel (:mod:`.factored_triton`; the caller checked ``supports``)."""
    if fused:
        xk = factored_triton.analysis(x, pv, spectrum.shape[0])
        return factored_triton.synthesis(xk, pu, spectrum, scale, base, into_base), xk
    xu = analysis(x, pv).index_select(0, regroup(pv, pu))  # X in u's grouped layout: (pu.rows, T)
    y = synthesis(xu, pu, weights(spectrum, pu, xu.dtype), scale, base, into_base)  # (T, d1)
    return y, xu.index_select(0, pu.row)


def factored_backward(g, xk, spectrum, pu: Plan, pv: Plan, scale: float, need_x: bool, need_c: bool,
                      fused: bool = False):
    """``(grad_x (T, d2) or None, grad_c (n,) or None)`` for the upstream ``g`` ``(T, d1)``."""
    g = g.to(xk.dtype)
    grad_x = grad_c = None
    if fused:
        gk = factored_triton.analysis(g, pu, spectrum.shape[0])  # (2n, T)
        if need_x:
            grad_x = factored_triton.synthesis(gk, pv, spectrum, scale)
    else:
        gu = analysis(g.contiguous(), pu)  # (pu.rows, T)
        if need_x:
            gv = gu.index_select(0, regroup(pu, pv))
            grad_x = synthesis(gv, pv, weights(spectrum, pv, gv.dtype), scale)
        gk = gu.index_select(0, pu.row) if need_c else None
    if need_c:
        r = summed_products(gk, xk, 1)  # (2n,): over the T rows
        n = spectrum.shape[0]
        grad_c = ((r[:n] - r[n:]) * scale).to(spectrum.dtype)  # Re(G X) = Gr Xr - Gi Xi
    return grad_x, grad_c


class FactoredSpectralLinear(torch.autograd.Function):
    """``y = base + x @ dW.T`` through the factored DFT. ``x``: ``(T, d2)``; plans for (u, d1) and (v, d2)."""

    @staticmethod
    def forward(ctx, x, spectrum, pu, pv, scale, base=None, into_base=False, fused=False):  # noqa: D102 (module doc)
        y, xk = factored_forward(x, spectrum, pu, pv, scale, base, into_base, fused)
        ctx.save_for_backward(xk, spectrum)
        ctx.plans, ctx.scale, ctx.fused = (pu, pv), scale, fused
        return y

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        xk, spectrum = ctx.saved_tensors
        grad_x, grad_c = factored_backward(g, xk, spectrum, *ctx.plans, ctx.scale, *ctx.needs_input_grad[:2],
                                           ctx.fused)
        grad_base = g if ctx.needs_input_grad[5] else None
        return grad_x, grad_c, None, None, None, grad_base, None, None


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
) -> torch.Tensor:
    """``x @ dW.T`` (plus ``base`` ``(..., d1)`` in ``x``'s dtype, fused into the last matmul; written into ``base``
    itself with ``into_base``) for ``x`` of shape ``(..., in_features)``; computed and returned in ``x.dtype``.
    ``fused``: each transform one Triton kernel (CUDA, fp16/bf16; a clear error elsewhere)."""
    pu = plan(rows, out_features, x.dtype)
    pv = plan(cols, in_features, x.dtype)
    if fused:
        factored_triton.require(x, pu, pv)
    scale = scaling / (out_features * in_features)
    x2 = x.reshape(-1, in_features).contiguous()
    b2 = None if base is None else base.reshape(-1, out_features)
    y = FactoredSpectralLinear.apply(x2, spectrum, pu, pv, scale, b2, into_base, fused)
    return y.reshape(*x.shape[:-1], out_features)


def fused_linear(x, spectrum, rows, cols, out_features, in_features, scaling, base=None, into_base=False):
    """The ``fused`` path: :func:`factored_linear` with each transform one Triton kernel."""
    return factored_linear(x, spectrum, rows, cols, out_features, in_features, scaling, base, into_base, fused=True)
