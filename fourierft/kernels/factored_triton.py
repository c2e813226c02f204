"""The factored path's two primitives as fused Triton kernels (CUDA, fp16/bf16): each transform one launch.

Same math as :mod:`.factored` (its module docstring derives the split ``d = N1 N2``); the kernels read any
:class:`~.factored_plan.Plan`, and the ``fused`` path hands them full plans (one group per ``f1``: the paired plans
of the PyTorch version have twice the slots per group, more than a block's registers hold at LLaMA shapes). The
PyTorch version writes each transform's stage-1 result, a ``(T, d)`` tensor, to memory and reads it back, and
regroups rows with gathers between the stages. Here both stages of a transform run in one program per tile of rows
and the stage-1 result stays on chip; rows move between plans through the compact layout, never regrouped.

Compact layout: ``(2n, T)``, rows ``[Re X_0 .. Re X_{n-1}, Im X_0 .. Im X_{n-1}]``, what the backward saves.
``Plan.compact`` maps each grouped slot to its compact row (-1 on padding).

    analysis   x (T, d) -> X (2n, T)       per program: BT rows x G groups, stage 1 (2G, N1) @ (N1, BT BJ)
                                           per chunk of BJ columns j2, stage 2 accumulated over the chunks
    synthesis  Z (2n, T) -> y (T, d)       per program: BT rows x BI columns i2, stage 2 per block of G groups,
                                           stage 1 accumulated over the blocks; ``alpha`` and ``base`` applied
                                           to the fp32 accumulator

As in the PyTorch version, matmuls take the compute dtype with fp32 accumulation, the stage-1 result is rounded to
the compute dtype before stage 2, and the coefficients ride on the small matrix (``c_k`` times a twiddle, <= |c|),
so fp16 does not overflow where the unfused path does not.

Speed (H200, Triton 3.6, bench/factored_fused.py and bench/train_step.py, 2026-12-01): 2.7-4.3x slower per call
on LLaMA-7B layers than the PyTorch version, whose two stages are cuBLAS GEMMs (and which has since gained its
half-spectrum stage 1, 25-30% faster again); hence the ``fused`` path is opt-in.
The analysis kernel runs at about 37 TFLOP/s: its stage-1 products have 16 rows (one block of groups), so they run
as small ``mma.sync`` tiles, and each stage-1 result changes layout through shared memory before stage 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .factored_plan import Plan

try:
    import triton
    import triton.language as tl

    if not hasattr(tl, "permute"):  # the kernels need Triton 3 (tl.permute, 3-D tl.dot)
        triton = None
except ImportError:  # CPU installs: the PyTorch version in .factored runs
    triton = None

DTYPES = (torch.float16, torch.bfloat16)
_G = 8  # groups per block: 2G = 16 rows (re/im per group), tl.dot wants every dimension >= 16
# (rows per program, columns j2 / i2 per chunk, warps, pipeline stages), from bench/factored_fused.py's sweep on an
# H200. Spill-free (ptxas -v) and within shared memory for up to 128 slots per group (11008 = 32 x 344 at n = 1000:
# 136 and 115 registers, 89 and 76 KiB; Triton 3.6, sm_90a).
ANALYSIS_BLOCKS = (16, 16, 8, 2)
SYNTHESIS_BLOCKS = (16, 8, 8, 2)
MAX_SLOTS = 128  # 2m above this (n over about 2500 at LLaMA shapes) is refused: the factored path serves it


def fits(*plans: Plan) -> bool:
    """At most :data:`MAX_SLOTS` slots per group in every plan: a group's twiddle block must fit in shared memory."""
    return all(_pow2(2 * p.m) <= MAX_SLOTS for p in plans)


def supports(x: torch.Tensor, *plans: Plan) -> bool:
    """Whether the fused kernels serve ``x`` with ``plans``: a CUDA tensor in fp16/bf16, Triton installed, and
    :func:`fits`."""
    return triton is not None and x.is_cuda and x.dtype in DTYPES and fits(*plans)


def require(x: torch.Tensor, *plans: Plan) -> None:
    """Raise a ``ValueError`` that says why and what to do unless :func:`supports` serves ``x`` with ``plans``."""
    if not supports(x, *plans):
        raise ValueError(_refusal(x))


def _refusal(x: torch.Tensor) -> str:
    if triton is None:
        why = "Triton 3 or newer is not installed"
    elif not x.is_cuda or x.dtype not in DTYPES:
        why = f"it runs on CUDA in float16/bfloat16, got {x.device.type} {str(x.dtype).removeprefix('torch.')}"
    else:
        why = f"a layer has more than {MAX_SLOTS // 2} entries per frequency group (n too large for its width)"
    return f"compute path 'fused' cannot serve this layer: {why}; use 'factored' (the same math in PyTorch) or 'auto'"


def _pow2(v: int) -> int:
    return max(16, 1 << (int(v) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _analysis_kernel(x_ptr, dft_ptr, tw_ptr, dest_ptr, out_ptr, T, stride_x,
                         N1: tl.constexpr, N2: tl.constexpr, NG: tl.constexpr, M2: tl.constexpr,
                         BN1: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr,
                         BM: tl.constexpr):
        t = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,) rows of x
        g = tl.program_id(1) * G + tl.arange(0, G)  # (G,) groups
        r = tl.program_id(1) * 2 * G + tl.arange(0, 2 * G)  # (2G,) their stage-1 rows (g, R/I), the plan's order
        j1 = tl.arange(0, BN1)
        s = tl.arange(0, BM)  # slots of a group: m real parts, then m imaginary parts
        q = tl.arange(0, 2 * BJ)  # stage 2's contraction index (re/im, j2 in the chunk)
        g_ok, t_ok, s_ok = g < NG, t < T, s < M2
        dft = tl.load(dft_ptr + r[:, None] * N1 + j1[None, :], mask=(r < 2 * NG)[:, None] & (j1 < N1)[None, :],
                      other=0.0)  # (2G, BN1)
        acc = tl.full((G, BT, BM), 0.0, tl.float32)
        for j0 in range(0, N2, BJ):
            j2 = j0 + tl.arange(0, BJ)
            xp = x_ptr + t[None, :, None] * stride_x + j1[:, None, None] * N2 + j2[None, None, :]
            xm = (j1 < N1)[:, None, None] & t_ok[None, :, None] & (j2 < N2)[None, None, :]
            xc = tl.reshape(tl.load(xp, mask=xm, other=0.0), (BN1, BT * BJ))  # x[t, N2 j1 + j2] as (j1, (t, j2))
            a = tl.dot(dft, xc).to(xc.dtype)  # stage 1: A[(g, R/I), (t, j2)], rounded as the PyTorch path does
            a = tl.reshape(tl.permute(tl.reshape(a, (G, 2, BT, BJ)), (0, 2, 1, 3)), (G, BT, 2 * BJ))
            # stage 2: X[g, t, slot] += sum_(R/I, j2) A[g, t, (R/I, j2)] tw[g, slot, R/I N2 + j2]
            jq = j0 + q % BJ
            twp = tw_ptr + g[:, None, None] * (M2 * 2 * N2) + s[None, None, :] * (2 * N2) + \
                ((q // BJ) * N2 + jq)[None, :, None]
            twm = g_ok[:, None, None] & (jq < N2)[None, :, None] & s_ok[None, None, :]
            acc = tl.dot(a, tl.load(twp, mask=twm, other=0.0), acc)  # (G, BT, 2BJ) @ (G, 2BJ, BM)
        dest = tl.load(dest_ptr + g[:, None] * M2 + s[None, :], mask=g_ok[:, None] & s_ok[None, :], other=-1)
        op = out_ptr + dest[:, None, :].to(tl.int64) * T + t[None, :, None]  # (G, BT, BM) -> compact rows
        tl.store(op, acc.to(out_ptr.dtype.element_ty), mask=(dest >= 0)[:, None, :] & t_ok[None, :, None])

    @triton.jit
    def _synthesis_kernel(z_ptr, src_ptr, spec_ptr, inv_ptr, idft_ptr, base_ptr, y_ptr, T, n, alpha,
                          stride_b, stride_y,
                          N1: tl.constexpr, N2: tl.constexpr, NG: tl.constexpr, M2: tl.constexpr,
                          BN1: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, BI: tl.constexpr,
                          BM: tl.constexpr, HAS_BASE: tl.constexpr):
        t = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,) rows of y
        i2 = tl.program_id(1) * BI + tl.arange(0, BI)  # (BI,) columns i2 of each block i1
        i1 = tl.arange(0, BN1)
        s = tl.arange(0, BM)
        q = tl.arange(0, 2 * BI)  # stage 2's output columns (R/I, i2)
        qi = tl.program_id(1) * BI + q % BI
        p = tl.arange(0, 2 * G)  # stage 1's contraction index (g in the block, R/I)
        t_ok, i2_ok, i1_ok, s_ok = t < T, i2 < N2, i1 < N1, s < M2
        acc = tl.full((BN1, BT * BI), 0.0, tl.float32)
        for g0 in range(0, NG, G):
            g = g0 + tl.arange(0, G)
            g_ok = g < NG
            src = tl.load(src_ptr + g[:, None] * M2 + s[None, :], mask=g_ok[:, None] & s_ok[None, :], other=-1)
            valid = src >= 0  # (G, BM)
            w = tl.load(spec_ptr + src % n, mask=valid, other=0.0).to(tl.float32)  # c_k on both its slots
            zp = z_ptr + src[:, None, :].to(tl.int64) * T + t[None, :, None]
            zg = tl.load(zp, mask=valid[:, None, :] & t_ok[None, :, None], other=0.0)  # (G, BT, BM)
            ip = inv_ptr + g[:, None, None] * (M2 * 2 * N2) + s[None, :, None] * (2 * N2) + \
                ((q // BI) * N2 + qi)[None, None, :]  # (G, BM, 2BI): inv_twiddle[g, slot, (R/I, i2)]
            im = g_ok[:, None, None] & s_ok[None, :, None] & (qi < N2)[None, None, :]
            inv = (tl.load(ip, mask=im, other=0.0).to(tl.float32) * w[:, :, None]).to(zg.dtype)
            b = tl.dot(zg, inv).to(zg.dtype)  # stage 2: B[g, t, (R/I, i2)]
            b = tl.reshape(tl.permute(tl.reshape(b, (G, BT, 2, BI)), (0, 2, 1, 3)), (2 * G, BT * BI))
            gp = g0 + p // 2
            c = tl.load(idft_ptr + i1[:, None] * (2 * NG) + (2 * g0 + p)[None, :],
                        mask=i1_ok[:, None] & (gp < NG)[None, :], other=0.0)  # (BN1, 2G): the plan's inv_dft
            acc = tl.dot(c, b, acc)  # stage 1: y[i1, (t, i2)] += inv_dft[i1, (g, R/I)] B[(g, R/I), (t, i2)]
        acc = tl.reshape(acc, (BN1, BT, BI)) * alpha
        col = i1[:, None, None] * N2 + i2[None, None, :]
        ym = i1_ok[:, None, None] & t_ok[None, :, None] & i2_ok[None, None, :]
        if HAS_BASE:
            acc += tl.load(base_ptr + t[None, :, None] * stride_b + col, mask=ym, other=0.0).to(tl.float32)
        tl.store(y_ptr + t[None, :, None] * stride_y + col, acc.to(y_ptr.dtype.element_ty), mask=ym)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a ``(T, d)`` tensor whose rows are contiguous (the kernels take a row stride)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def analysis(x: torch.Tensor, p: Plan, n: int) -> torch.Tensor:
    """``X_k = sum_j x[t, j] w_d^{f_k j}`` for ``x`` ``(T, d)``: ``(2n, T)`` in the compact layout, ``x.dtype``."""
    x = _rows(x)
    t = x.shape[0]
    out = x.new_empty(2 * n, t)
    bt, bj, warps, stages = ANALYSIS_BLOCKS
    bj = min(bj, _pow2(p.n2))
    grid = (triton.cdiv(t, bt), triton.cdiv(p.groups, _G))
    _analysis_kernel[grid](x, p.dft, p.twiddle, p.compact, out, t, x.stride(0),
                           p.n1, p.n2, p.groups, 2 * p.m, _pow2(p.n1), _G, bt, bj, _pow2(2 * p.m), num_warps=warps,
                           num_stages=stages)
    return out


def synthesis(z: torch.Tensor, p: Plan, spectrum: torch.Tensor, alpha: float, base: torch.Tensor | None = None,
              into_base: bool = False) -> torch.Tensor:
    """``base + alpha Re(sum_k c_k Z_k w_d^{f_k i})`` ``(T, d)`` for ``z`` ``(2n, T)`` compact, ``spectrum`` ``(n,)``
    (the ``c_k``); written into ``base`` itself with ``into_base``."""
    t = z.shape[1]
    d = p.n1 * p.n2
    y = base if into_base and base is not None else z.new_empty(t, d)
    b = y if base is None else _rows(base)
    if into_base and b is not y:
        raise ValueError("into_base needs a base whose rows are contiguous")
    bt, bi, warps, stages = SYNTHESIS_BLOCKS
    bi = min(bi, _pow2(p.n2))
    grid = (triton.cdiv(t, bt), triton.cdiv(p.n2, bi))
    _synthesis_kernel[grid](z, p.compact, spectrum, p.inv_twiddle, p.inv_dft, b, y, t, spectrum.shape[0],
                            float(alpha), b.stride(0), y.stride(0),
                            p.n1, p.n2, p.groups, 2 * p.m, _pow2(p.n1), _G, bt, bi, _pow2(2 * p.m), base is not None,
                            num_warps=warps, num_stages=stages)
    return y
