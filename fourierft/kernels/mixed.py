"""A batch whose rows use different adapters that share their entries: the bases' products once, per-row weights.

K adapters of one ``(d1, d2)`` weight that share their entries ``(u, v)`` (PEFT's default: every adapter of a shape
is drawn from ``random_loc_seed=777``) differ only in their coefficient vectors ``c_a`` and scalings ``s_a``. With the
lowrank factorisation ``dW_a = (s_a / (d1 d2)) Bu diag([c_a, -c_a]) Bv^T`` (:mod:`.lowrank`):

    Q      = x @ Bv                        (B, L, 2n)   one GEMM for the whole batch
    Z[b]   = Q[b] * w[a(b)]                (B, L, 2n)   w[a] = (s_a / d1) [c_a, -c_a]; w[K] = 0 (no adapter)
    y      = (Z @ Bu^T) / d2               (B, L, d1)   one GEMM for the whole batch

so the cost is one adapter's (``4 n (d1 + d2)`` flops per token) whatever K is. The ``1 / (d1 d2)`` is split between
the weights and the GEMM's alpha so that no fp16 value (forward or backward) becomes subnormal. The factored path
(:mod:`.factored`) does the same with its two-stage transforms: the per-row weights multiply the analysed
``(rows, T)`` result. Differentiable w.r.t. ``x`` and ``spectra`` through plain autograd (lowrank; the factored
form is inference-only).

Three steps, so that a caller serving the same adapters call after call (decoding) builds the weights once:
:func:`mixed_path` picks the path, :func:`mixed_weights` lays out the ``(K + 1, m)`` per-adapter weights (its last
row zero: row index ``K``, no adapter, reads it), :func:`mixed_linear` applies them. :func:`spectral_linear_mixed`
is the three in one call, with its inputs checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._cache import basis
from ._mm import scaled_mm
from ._reuse import reuse
from .dispatch import flop_costs
from .factored import analysis, plan, regroup, synthesis

MIXED_PATHS = ("auto", "lowrank", "factored")


def _check(x, spectra, row_adapter, rows, cols, in_features, scalings, path) -> torch.Tensor:
    if path not in MIXED_PATHS:
        raise ValueError(f"unknown mixed-batch path {path!r}; allowed: {', '.join(MIXED_PATHS)}")
    if spectra.dim() != 2 or spectra.shape[1] != rows.numel() or rows.shape != cols.shape:
        raise ValueError(
            f"spectra must be (K, n) with n = len(rows) = len(cols); got spectra {tuple(spectra.shape)}, rows "
            f"{tuple(rows.shape)}, cols {tuple(cols.shape)}: stack the coefficient vectors of adapters that share "
            f"their entries"
        )
    if x.dim() < 2 or x.shape[-1] != in_features:
        raise ValueError(f"x must be (B, ..., {in_features}); got {tuple(x.shape)}")
    if row_adapter.shape != (x.shape[0],) or row_adapter.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"row_adapter must be an integer tensor of shape ({x.shape[0]},) (one adapter index per batch row, -1 "
            f"for none); got {row_adapter.dtype} {tuple(row_adapter.shape)}"
        )
    scal = torch.as_tensor(scalings, dtype=torch.float64, device=spectra.device)
    if scal.shape != (spectra.shape[0],):
        raise ValueError(f"scalings must hold one value per adapter ({spectra.shape[0]}); got {tuple(scal.shape)}")
    if row_adapter.device.type == "cpu" and row_adapter.numel() and not torch.compiler.is_compiling():
        lo, hi = int(row_adapter.min()), int(row_adapter.max())
        if lo < -1 or hi >= spectra.shape[0]:
            raise ValueError(f"row_adapter values must lie in [-1, {spectra.shape[0]}); got [{lo}, {hi}]")
    return scal


# Flops a path may spend to save one launch's host time (``auto``): below this much saved, the factored path's seven
# launches cost more than lowrank's three. On an H200 decoding 64 rows x 1 token at 4096 x 4096, n = 1000, the
# factored mixed call took 2.7x lowrank's host time (531 against 199 us, bench/host_ab.py --modes mixed; the flop
# model prefers factored there from n ~ 1500 on); a launch is ~10 us of host, the GPU does ~1e10 flops in that.
# On the CPU an op costs a few us and the flops are real work.
_FLOPS_PER_LAUNCH = {"cuda": 1e10, "cpu": 1e5}


def mixed_path(path: str, out_features: int, in_features: int, n: int, device_type: str, needs_grad: bool,
               tokens: int = 0, measured: dict[str, float] | None = None) -> str:
    """``"lowrank"`` or ``"factored"`` for ``path`` in :data:`MIXED_PATHS`. ``"auto"`` is lowrank when a gradient
    is needed or under ``torch.compile``; else the faster of the two in ``measured`` (seconds per call of one
    adapter's paths on this layer's key, :func:`.dispatch.resolve_choice`: the mixed forms cost one adapter's
    call plus a per-row multiply), if it timed either; else lowrank when factored would save fewer flops over the
    call's ``tokens`` rows than its four extra launches are worth (decoding: a few rows per call), and otherwise
    the cheaper of the two by the flop model."""
    if path == "auto":
        if needs_grad or torch.compiler.is_compiling():
            return "lowrank"
        timed = [p for p in ("lowrank", "factored") if p in (measured or {})]
        if timed:
            return min(timed, key=measured.__getitem__)
        costs = flop_costs(out_features, in_features, n, device_type=device_type, training=False)
        saved = tokens * (costs["lowrank"] - costs["factored"])
        return "factored" if saved > 4 * _FLOPS_PER_LAUNCH.get(device_type, _FLOPS_PER_LAUNCH["cuda"]) else "lowrank"
    if path == "factored" and needs_grad:
        raise ValueError("the factored mixed path is inference-only; use path='lowrank' (or 'auto') to train")
    return path


def mixed_weights(spectra: torch.Tensor, scalings: torch.Tensor, rows: torch.Tensor, out_features: int,
                  dtype: torch.dtype, path: str) -> torch.Tensor:
    """The per-adapter weights :func:`mixed_linear` multiplies each row's transform by: ``(K + 1, m)`` in
    ``dtype``, row ``a`` from ``spectra[a]`` ``(n,)`` and ``scalings[a]`` (``(K,)`` float64), row ``K`` zero.

    lowrank: ``m = 2n``, ``(s_a / d1) [c_a, -c_a]``; factored: ``m`` = the rows of ``rows``' plan, ``s_a / d1 c_a``
    at both rows (Re, Im) of each frequency, zero on padding. Differentiable w.r.t. ``spectra``."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    k, n = spectra.shape
    c = spectra.to(work) * (scalings.to(work) / out_features)[:, None]  # (K, n), O(scaling / d1) values
    if path == "lowrank":
        return torch.cat([torch.cat([c, -c], 1), c.new_zeros(1, 2 * n)]).to(dtype)
    pu = plan(rows, out_features, dtype)
    at_rows = torch.nn.functional.pad(torch.cat([c, c], 1), (0, 0, 0, 1)).to(dtype)  # (K + 1, 2n), row K zero
    return at_rows.new_zeros(k + 1, pu.rows).index_copy(1, pu.row, at_rows)


def mixed_linear(x: torch.Tensor, weights: torch.Tensor, row_adapter: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor, out_features: int, in_features: int, path: str,
                 base: torch.Tensor | None = None, into_base: bool = False) -> torch.Tensor:
    """``base + y`` with ``y[b] = x[b] @ dW_{row_adapter[b]}.T``, given :func:`mixed_weights` ``(K + 1, m)`` for
    ``path`` (``"lowrank"`` or ``"factored"``) and ``x``'s dtype; ``row_adapter`` ``(B,)`` integers in ``[0, K]``
    on ``x``'s device (``K`` picks the zero row; not checked here, see :func:`spectral_linear_mixed`).

    ``x``: ``(B, ..., d2)``; ``base`` (optional): ``(B, ..., d1)`` in ``x``'s dtype, added inside the last matmul
    (written into itself, contiguous, with ``into_base``). Returns ``(B, ..., d1)`` in ``x``'s dtype."""
    d1, d2 = out_features, in_features
    x2 = x.reshape(-1, d2)  # (T, d2), T = B * L
    b = x.shape[0]
    per_row = x2.shape[0] // max(b, 1)  # L
    # each batch row's weights, broadcast over its L tokens: a (B, m) gather, not a (T, m) one (at a prefill of
    # 64 x 256 tokens and m ~ 2000, 65 MB written and read again)
    w = weights.index_select(0, row_adapter)  # (B, m); index_select: a few us less host time than weights[...]
    b2 = None if base is None else base.reshape(-1, d1)
    grad_x = torch.is_grad_enabled() and x.requires_grad
    if path == "lowrank":
        bv = basis(cols, d2, x.dtype)  # (d2, 2n)
        # without a gradient to x, shared with the layer before on the same input and entries (q_proj, v_proj)
        q = x2 @ bv if grad_x else reuse(x, bv, lambda: x2 @ bv)  # (T, 2n)
        z = q * w if per_row == 1 else (q.view(b, per_row, q.shape[1]) * w.unsqueeze(1)).view(q.shape)  # (T, 2n)
        y = scaled_mm(z, basis(rows, d1, x.dtype).T, 1.0 / d2, b2, into_base)  # (T, d1)
    else:
        pu, pv = plan(rows, d1, x.dtype), plan(cols, d2, x.dtype)
        idx = regroup(pv, pu)  # one object per plan pair: the key of a reused transform, as in factored_linear
        xu = reuse(x, idx, lambda: analysis(x2.contiguous(), pv).index_select(0, idx))  # (pu.rows, T)
        wt = w.T  # (m, B)
        z = xu * wt if per_row == 1 else (xu.view(xu.shape[0], b, per_row) * wt.unsqueeze(2)).view(xu.shape)
        # the weights are on z already: synthesis' inverse twiddles are the plain ones
        y = synthesis(z, pu, pu.inv_twiddle, 1.0 / d2, b2, into_base)  # (T, d1)
    return y.reshape(*x.shape[:-1], d1)


def spectral_linear_mixed(
    x: torch.Tensor,
    spectra: torch.Tensor,
    row_adapter: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scalings: torch.Tensor | Sequence[float],
    path: str = "auto",
) -> torch.Tensor:
    """``y[b] = x[b] @ dW_{row_adapter[b]}.T`` for a batch mixing K adapters that share entries ``(rows, cols)``.

    Args:
        x: ``(B, ..., in_features)``, any float dtype (the computation runs in it).
        spectra: ``(K, n)`` the adapters' coefficients (float32 by contract).
        row_adapter: ``(B,)`` int64 in ``[-1, K)``: the adapter of each batch row; ``-1`` rows get zeros. On the
            CPU its values are checked (a clear error); on ``x``'s device it costs no copy (a bad value then fails
            as a device-side index error).
        rows, cols: ``(n,)`` int64 entries shared by the K adapters, on ``x``'s device.
        out_features, in_features: ``d1, d2``.
        scalings: ``(K,)`` each adapter's scaling (a tensor on ``spectra``'s device avoids a host-to-device copy
            per call; floats are accepted).
        path: ``"lowrank"``, ``"factored"`` (inference only) or ``"auto"`` (:func:`mixed_path`).

    Returns:
        ``(B, ..., out_features)`` in ``x.dtype``; ``dW_a`` is :func:`fourierft.spectral.delta_weight` of adapter a.
    """
    scal = _check(x, spectra, row_adapter, rows, cols, in_features, scalings, path)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or spectra.requires_grad)
    path = mixed_path(path, out_features, in_features, rows.numel(), x.device.type, needs_grad,
                      x.numel() // max(in_features, 1))
    weights = mixed_weights(spectra, scal, rows, out_features, x.dtype, path)
    ra = row_adapter.to(x.device, torch.int64)
    ra = torch.where(ra < 0, spectra.shape[0], ra)  # -1 (no adapter): the zero row K
    return mixed_linear(x, weights, ra, rows, cols, out_features, in_features, path)
