"""Stage 1 of the factored transforms: one small matrix times every row's block, ``out[t] = alpha L @ R[t] + base[t]``.

Shapes: ``L`` ``(M, K)``, ``R`` ``(T, K, N)``, ``base`` and the result ``(T, M, N)``; in the factored path
(:mod:`.factored`) ``L`` is a plan's stage-1 DFT ``(2G, N1)`` or its transpose, ``K, M <= 2 sqrt(n)`` (64 at
n = 1000), and ``T`` is the number of tokens. Every block of ``R`` is read once and every block of the result
written once, so the product is bound by memory, not flops.

cuBLAS runs it as a strided batched GEMM of ``T`` tiny matrices (one per token): at LLaMA-7B's 4096 = 64 x 64 split
that reaches 30-37% of an H200's memory bandwidth (bench/blockmm.py). The Triton kernel here reads ``L`` once per
program and treats ``BT`` tokens' blocks as the columns of one product, ``L @ [R[t0] .. R[t0 + BT)]``, so each
program streams whole rows of ``R`` and of the result. CPU tensors, float32/float64 and machines without Triton
take :func:`reference` (``torch.baddbmm``).

As in cuBLAS: operands in the input dtype, an fp32 accumulator, ``alpha`` and ``base`` applied to it in fp32, one
rounding to the output dtype.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: reference() runs
    triton = None

DTYPES = (torch.float16, torch.bfloat16)
MAX_DIM = 128  # M and K up to this (padded to a power of two) fit one program's registers; larger take reference()
# Measured on an H200 (bench/blockmm.py and a sweep of the settings below, 2026-12-01): at 4096 = 64 x 64 the kernel
# takes 0.82x cuBLAS' time for analysis and 0.43x for synthesis' last stage (which also reads the frozen output);
# at 11008 = 32 x 344, 0.83x for synthesis but 1.4x for analysis. So rows wider than MAX_N columns are served only
# when a ``base`` is read.
MAX_N = 128


def reference(l: torch.Tensor, r: torch.Tensor, alpha: float = 1.0, base: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha L @ R[t] (+ base[t])`` for every ``t`` through ``torch.baddbmm`` (written into ``out`` if given)."""
    lb = l.expand(r.shape[0], -1, -1)
    if base is not None:
        return torch.baddbmm(base, lb, r, alpha=alpha, out=out)
    if out is not None:
        return torch.baddbmm(out, lb, r, beta=0.0, alpha=alpha, out=out)
    if torch.compiler.is_compiling():  # traced: a broadcast zero, never read (beta = 0), as _mm does
        return torch.baddbmm(r.new_zeros(()), lb, r, beta=0.0, alpha=alpha)
    # beta = 0: the fresh output is never read (no zero fill first)
    return r.new_empty(r.shape[0], l.shape[0], r.shape[2]).baddbmm_(lb, r, beta=0.0, alpha=alpha)


def _cols(l: torch.Tensor, r: torch.Tensor) -> int:
    """``N``: ``R``'s last dimension, or its rows' length over ``K`` for rows ``(T, K N)``."""
    return r.shape[2] if r.dim() == 3 else r.shape[1] // l.shape[1]


def supports(l: torch.Tensor, r: torch.Tensor, base: torch.Tensor | None = None) -> bool:
    """Whether the Triton kernel serves these operands: CUDA fp16/bf16, unit stride along ``N``, ``M, K <=``
    :data:`MAX_DIM`, ``N <=`` :data:`MAX_N` unless a ``base`` is read, and Triton installed."""
    return (triton is not None and r.is_cuda and r.dtype in DTYPES and l.dtype == r.dtype and r.stride(-1) == 1
            and max(l.shape) <= MAX_DIM and (_cols(l, r) <= MAX_N or base is not None))


def blockmm(l: torch.Tensor, r: torch.Tensor, alpha: float = 1.0, base: torch.Tensor | None = None,
            out: torch.Tensor | None = None, kernel: bool = True) -> torch.Tensor:
    """``out[t] = alpha L @ R[t] (+ base[t])``: ``L`` ``(M, K)``, ``R`` ``(T, K, N)`` (any strides), ``base`` and the
    result ``(T, M, N)``; written into ``out`` (which may be ``base`` itself) when given. ``R`` may also be given as
    its rows ``(T, K N)`` (unit stride along them); ``base``, ``out`` and the result are then rows ``(T, M N)`` too,
    and the Triton path takes no view of them (each view is a trip through the dispatcher for the host). The
    Triton kernel where :func:`supports` says so and ``kernel`` allows it, else :func:`reference`: a Triton launch
    costs the host more than a cuBLAS call, so callers bound by the host pass ``kernel=False``."""
    rows = r.dim() == 2
    if not kernel or torch.compiler.is_compiling() or not supports(l, r, base) or r.shape[0] == 0:  # 0 tokens: none
        return _reference_rows(l, r, alpha, base, out) if rows else reference(l, r, alpha, base, out)
    n = _cols(l, r)
    if out is None:
        out = r.new_empty(r.shape[0], l.shape[0] * n) if rows else r.new_empty(r.shape[0], l.shape[0], n)
    if out.stride(-1) != 1 or (base is not None and base.stride(-1) != 1):
        return _reference_rows(l, r, alpha, base, out) if rows else reference(l, r, alpha, base, out)
    _launch(l.contiguous(), r, n, alpha, base, out)
    return out


def _reference_rows(l, r, alpha, base, out):
    """:func:`reference` for rows ``(T, K N)``: viewed as blocks, the result as rows again."""
    t, (m, k), n = r.shape[0], l.shape, _cols(l, r)
    y = reference(l, r.reshape(t, k, n), alpha, None if base is None else base.reshape(t, m, n),
                  None if out is None else out.view(t, m, n))
    return y.view(t, m * n) if out is None else out


def _pow2(v: int) -> int:
    return max(16, 1 << (int(v) - 1).bit_length())


def _config(n: int, has_base: bool) -> tuple[int, int, int, int, int]:
    """(tokens per step, columns per step, steps per program, warps, pipeline stages) for rows of ``n`` columns:
    the best of ``bench/blockmm.py --sweep`` (H200, 2026-12-02): one step of 128 columns per program (the blocks of
    its tokens side by side), with or without a ``base``; walking 4 steps per program took 1.3x as long on
    analysis."""
    bn = min(_pow2(n), 128)
    return max(1, 128 // bn), bn, 1, 4 if n <= MAX_N or not has_base else 8, 1


def _strides(v: torch.Tensor, n: int) -> tuple[int, int]:
    """(token, row) strides of blocks ``(T, rows, n)`` or of their rows ``(T, rows n)``."""
    return (v.stride(0), v.stride(1)) if v.dim() == 3 else (v.stride(0), n)


def _launch(l, r, n, alpha, base, out) -> None:
    t = r.shape[0]
    m, k = l.shape
    bt, bn, steps, warps, stages = _config(n, base is not None)
    b = out if base is None else base
    grid = (triton.cdiv(t, bt * steps), triton.cdiv(n, bn))
    _blockmm_kernel[grid](l, r, b, out, t, m, k, n, float(alpha), *_strides(r, n), *_strides(b, n), *_strides(out, n),
                          _pow2(m), _pow2(k), bt, bn, steps, base is not None, stages, num_warps=warps)


if triton is not None:

    @triton.jit
    def _blockmm_kernel(l_ptr, r_ptr, base_ptr, out_ptr, T, M, K, N, alpha,
                        srt, srk, sbt, sbm, sot, som,
                        BM: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                        STEPS: tl.constexpr, HAS_BASE: tl.constexpr, STAGES: tl.constexpr):
        j = tl.program_id(1) * BN + tl.arange(0, BN)  # (BN,) columns of each block
        i = tl.arange(0, BM)
        kk = tl.arange(0, BK)
        j_ok, i_ok, k_ok = j < N, i < M, kk < K
        lt = tl.load(l_ptr + i[:, None] * K + kk[None, :], mask=i_ok[:, None] & k_ok[None, :], other=0.0)  # (BM, BK)
        for step in tl.range(0, STEPS, num_stages=STAGES):
            t = (tl.program_id(0) * STEPS + step) * BT + tl.arange(0, BT)  # (BT,) tokens
            t_ok = t < T
            rp = r_ptr + t[None, :, None].to(tl.int64) * srt + kk[:, None, None] * srk + j[None, None, :]
            rm = k_ok[:, None, None] & t_ok[None, :, None] & j_ok[None, None, :]
            rt = tl.reshape(tl.load(rp, mask=rm, other=0.0), (BK, BT * BN))  # R[t, k, j] as (k, (t, j))
            acc = tl.reshape(tl.dot(lt, rt), (BM, BT, BN)) * alpha  # (BM, BT, BN) fp32
            om = i_ok[:, None, None] & t_ok[None, :, None] & j_ok[None, None, :]
            if HAS_BASE:
                bp = base_ptr + t[None, :, None].to(tl.int64) * sbt + i[:, None, None] * sbm + j[None, None, :]
                acc += tl.load(bp, mask=om, other=0.0).to(tl.float32)
            op = out_ptr + t[None, :, None].to(tl.int64) * sot + i[:, None, None] * som + j[None, None, :]
            tl.store(op, acc.to(out_ptr.dtype.element_ty), mask=om)
