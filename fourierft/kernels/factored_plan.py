"""The factored path's split plans: how ``d = N1 N2`` is chosen and the small matrices of each stage.

:mod:`.factored` derives the split and runs the transforms; a :class:`Plan` holds everything they need for one
(frequencies, size, dtype): the stage-1 DFT and its transpose, the per-group twiddles and their transposes, and
where each frequency sits in the grouped layout. Plans are cached per content of the frequencies
(:func:`plan`), so all layers of one shape share one.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field

import torch

from ._cache import cached


@dataclass(frozen=True, eq=False)  # identity equality: plans are shared, and they key their ``moves``
class Plan:
    """How one (frequencies, size) pair is split; matrices in the compute dtype.

    ``n1 * n2 = d``; stage 1 yields ``groups`` pairs of real rows ``(R_g, I_g)`` per block of ``n2`` columns, and
    each frequency reads one pair: ``A[f1] = alpha R_g + beta I_g`` (see :func:`make_plan`). Transformed rows live in
    a *grouped* layout of ``groups * 2m`` rows (group ``g``, then ``m`` real parts, then ``m`` imaginary parts);
    ``row`` (2n,) gives the rows of ``[Re X_k; Im X_k]`` there. Padding rows hold zeros on the way out of
    :func:`~.factored.analysis` and are ignored on the way into :func:`~.factored.synthesis` (their ``twiddle`` and
    ``inv_twiddle`` rows are zero).
    """

    n1: int
    n2: int
    groups: int
    m: int
    dft: torch.Tensor  # (2 groups, n1): rows (g, R/I) of stage 1
    twiddle: torch.Tensor  # (groups, 2m, 2 n2): [Re X; Im X] of each slot from [R_g; I_g]
    inv_twiddle: torch.Tensor  # (groups, 2m, 2 n2): ``twiddle`` with its Im slots negated (synthesis' stage 2)
    inv_dft: torch.Tensor  # (n1, 2 groups): the transpose of ``dft``, columns (g, R/I)
    row: torch.Tensor  # (2n,) int64
    compact: torch.Tensor  # (rows,) int32: the row of ``[Re X_k; Im X_k]`` each grouped row holds, -1 on padding
    take: torch.Tensor  # (rows,) int64: ``compact`` with padding reading row 0 (weighted 0), for gathers
    coef: torch.Tensor  # (groups, 2m, 1) int64: the entry k of each grouped row (padding: 0; its inv_twiddle
    # rows are 0), shaped as the rows of ``inv_twiddle`` so that one ``take`` lays the coefficients on them
    moves: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)  # regroup's

    @property
    def rows(self) -> int:
        return self.groups * 2 * self.m


# bf16/fp16 GEMMs on tensor cores want 16-byte aligned leading dimensions: stage 1 reads ``x`` as (n1, n2) blocks
# and multiplies them by the (2 groups, n1) stage-1 matrix, so n1 and n2 both multiples of 8 keep cuBLAS on its fast
# kernels. With
# 11008 = 43 x 256 the unaligned split (n1 = 43) fell back to sm75-era kernels taking 0.3 ms per call on an H200
# (bench/profile_step.py, docs/benchmarks.md); an aligned split is taken whenever d has one.
ALIGN = 8


def _groups(n1: int, half: bool) -> int:
    return (n1 + 1) // 2 if half else n1


@functools.lru_cache(maxsize=256)
def split_cost(d: int, n: int, half: bool = True) -> tuple[int, float]:
    """The divisor ``N1`` of ``d`` minimising the flops per element of a row, ``4 G / N1 * (N1 + 2m)`` for ``G``
    groups of ``m`` slots (``m`` the expected largest group of n uniform frequencies: mean plus 3 standard
    deviations), and that cost. Splits with ``N1`` and ``d / N1`` both multiples of :data:`ALIGN` are preferred
    whenever ``d`` has one."""
    best = {True: (1, 4.0 + 8.0 * n), False: (1, 4.0 + 8.0 * n)}  # aligned -> best so far
    for n1 in range(2, d // 2 + 1):
        if d % n1:
            continue
        g = _groups(n1, half)
        mean = n / g
        cost = 4.0 * g / n1 * (n1 + 2.0 * (mean + 3.0 * math.sqrt(mean) + 1.0))
        aligned = n1 % ALIGN == 0 and (d // n1) % ALIGN == 0
        if cost < best[aligned][1]:
            best[aligned] = (n1, cost)
    return best[True] if best[True][0] > 1 else best[False]


def _cos_sin(m: torch.Tensor, d: int, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    angle = (m % d).to(work) * (2 * math.pi / d)  # exact integer phase first, as in _cache.make_basis
    return torch.cos(angle), torch.sin(angle)


def _pairing(f1: torch.Tensor, n1: int, half: bool) -> tuple[torch.Tensor, ...]:
    """Each frequency's group ``g`` and the weights of ``A[f1] = alpha R_g + (beta_re + i beta_im) I_g``.

    Full: ``R_g, I_g = Re, Im A[g]``, one group per ``f1``. Half (x is real, so ``A[N1 - f1] = conj A[f1]``, the
    real-input symmetry of the DFT): group ``g`` serves ``f1 = g`` (``A = R + i I``) and ``f1 = N1 - g``
    (``A = R - i I``); group 0 holds the two real rows ``A[0]`` and ``A[N1 / 2]`` (zeros for odd ``N1``). Stage 1
    then writes ``N1`` rows per block instead of ``2 N1``: half the intermediate and half the stage-1 flops."""
    one, zero = torch.ones_like(f1), torch.zeros_like(f1)
    if not half:
        return f1, one, zero, one
    upper = 2 * f1 > n1
    nyquist = 2 * f1 == n1
    g = torch.where(upper, n1 - f1, f1).masked_fill(nyquist, 0)
    alpha = (~nyquist).to(f1.dtype)
    beta_im = torch.where(upper, -one, one).masked_fill(nyquist | (f1 == 0), 0)
    return g, alpha, nyquist.to(f1.dtype), beta_im


def _stage1(n1: int, groups: int, half: bool, work: torch.dtype, dev) -> torch.Tensor:
    """``(2 groups, n1)``: rows ``(g, R/I)``; ``R_g = sum_j1 cos(2 pi g j1 / n1) x_j1``, ``I_g`` with sin (half:
    group 0's second row is ``A[n1 / 2]``, ``(-1)^j1``, or zeros for odd ``n1``)."""
    g, j1 = torch.arange(groups, device=dev), torch.arange(n1, device=dev)
    c, s = _cos_sin(g[:, None] * j1[None, :], n1, work)  # (groups, n1)
    if half:
        s[0] = torch.zeros_like(c[0]) if n1 % 2 else torch.cos(j1.to(work) * math.pi)
    return torch.stack([c, s], 1).reshape(2 * groups, n1)


@torch.compiler.disable
def make_plan(idx: torch.Tensor, d: int, dtype: torch.dtype, half: bool = True) -> Plan:
    """The split and matrices for frequencies ``idx`` ``(n,)`` of a length-``d`` transform (``half``: paired
    groups, see :func:`_pairing`)."""
    n = idx.shape[0]
    dev = idx.device
    work = torch.float64 if dtype == torch.float64 else torch.float32
    n1, _ = split_cost(d, n, half)
    n2, groups = d // n1, _groups(n1, half)
    f = idx.to(torch.int64)
    g, *weights_ = _pairing(f % n1, n1, half)
    a, br, bi = (t.to(work)[:, None] for t in weights_)  # (n, 1) each
    order = torch.argsort(g, stable=True)
    counts = torch.bincount(g, minlength=groups)
    m = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(f)
    slot[order] = torch.arange(n, device=dev) - starts[g[order]]

    dft = _stage1(n1, groups, half, work, dev)
    c, s = _cos_sin(f[:, None] * torch.arange(n2, device=dev)[None, :], d, work)  # (n, n2) [k, j2]
    # X_k = sum_j2 (c + i s)(alpha R + beta I): its real and imaginary parts' weights on [R; I]
    tw = torch.zeros(groups, 2 * m, 2 * n2, dtype=work, device=dev)
    tw[g, slot] = torch.cat([a * c, br * c - bi * s], 1)
    tw[g, m + slot] = torch.cat([a * s, br * s + bi * c], 1)
    # synthesis is analysis transposed: Re sum_k Z_k w^(f_k i) = sum_k (Re Z_k cos - Im Z_k sin), hence the sign
    sign = torch.cat([torch.ones(m, dtype=work, device=dev), -torch.ones(m, dtype=work, device=dev)])
    inv = tw * sign[:, None]  # (groups, 2m, 2 n2): slot -> [R; I] of its group
    inv_dft = dft.T  # (n1, 2 groups)
    row = torch.cat([g * 2 * m + slot, g * 2 * m + m + slot])
    compact = torch.full((groups * 2 * m,), -1, dtype=torch.int32, device=dev)
    compact[row] = torch.arange(2 * n, dtype=torch.int32, device=dev)
    cast = lambda t: t.to(dtype).contiguous()  # noqa: E731
    take = compact.clamp(min=0).to(torch.int64)
    coef = (take % n).view(groups, 2 * m, 1)
    return Plan(n1, n2, groups, m, cast(dft), cast(tw), cast(inv), cast(inv_dft), row, compact, take, coef)


def _make_full_plan(idx: torch.Tensor, d: int, dtype: torch.dtype) -> Plan:
    return make_plan(idx, d, dtype, half=False)


def plan(idx: torch.Tensor, d: int, dtype: torch.dtype, half: bool = True) -> Plan:
    """Cached :func:`make_plan` (per content of ``idx``, ``d``, device, dtype and layout)."""
    return cached("plan", idx, d, dtype, make_plan) if half else cached("full-plan", idx, d, dtype, _make_full_plan)
