"""A batch whose rows use different adapters that share their entries: the bases' products once, per-row weights.

K adapters of one ``(d1, d2)`` weight that share their entries ``(u, v)`` (PEFT's default: every adapter of a shape
is drawn from ``random_loc_seed=777``) differ only in their coefficient vectors ``c_a`` and scalings ``s_a``. With the
lowrank factorisation ``dW_a = (s_a / (d1 d2)) Bu diag([c_a, -c_a]) Bv^T`` (:mod:`.lowrank`):

    Q      = x @ Bv                        (B, L, 2n)   one GEMM for the whole batch
    Z[b]   = Q[b] * w[a(b)]                (B, L, 2n)   w[a] = (s_a / d1) [c_a, -c_a]; w[-1] = 0 (no adapter)
    y      = (Z @ Bu^T) / d2               (B, L, d1)   one GEMM for the whole batch

so the cost is one adapter's (``4 n (d1 + d2)`` flops per token) whatever K is. The ``1 / (d1 d2)`` is split between
the weights and the GEMM's alpha so that no fp16 value (forward or backward) becomes subnormal. The factored path
(:mod:`.factored`) does the same with its two-stage transforms: the per-row weights multiply the analysed
``(rows, T)`` result. Differentiable w.r.t. ``x`` and ``spectra`` through plain autograd (lowrank; the factored
form is inference-only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._cache import basis
from ._mm import scaled_mm
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
        path: ``"lowrank"``, ``"factored"`` (inference only) or ``"auto"`` (lowrank when a gradient is needed or
            under ``torch.compile``, else the cheaper of the two by the flop model).

    Returns:
        ``(B, ..., out_features)`` in ``x.dtype``; ``dW_a`` is :func:`fourierft.spectral.delta_weight` of adapter a.
    """
    scal = _check(x, spectra, row_adapter, rows, cols, in_features, scalings, path)
    d1, d2, n = out_features, in_features, rows.numel()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or spectra.requires_grad)
    if path == "auto":
        path = "lowrank"
        if not needs_grad and not torch.compiler.is_compiling():
            costs = flop_costs(d1, d2, n, device_type=x.device.type, training=False)
            path = "factored" if costs["factored"] < costs["lowrank"] else "lowrank"
    if path == "factored" and needs_grad:
        raise ValueError("the factored mixed path is inference-only; use path='lowrank' (or 'auto') to train")
    dt = x.dtype
    b = x.shape[0]
    x2 = x.reshape(-1, d2)  # (T, d2), T = B * L
    per_row = x2.shape[0] // max(b, 1)
    # the adapter of every token; -1 -> the zero row K
    k = spectra.shape[0]
    idx = torch.where(row_adapter < 0, k, row_adapter).to(x.device, torch.int64)
    idx = idx.repeat_interleave(per_row) if per_row != 1 else idx  # (T,)
    work = torch.float64 if dt == torch.float64 else torch.float32
    c = spectra.to(work) * (scal.to(work) / d1)[:, None]  # (K, n), O(scaling / d1) values
    if path == "lowrank":
        w = torch.cat([torch.cat([c, -c], 1), c.new_zeros(1, 2 * n)]).to(dt)  # (K + 1, 2n)
        q = x2 @ basis(cols, d2, dt)  # (T, 2n)
        y = scaled_mm(q * w[idx], basis(rows, d1, dt).T, 1.0 / d2)  # (T, d1)
        return y.reshape(*x.shape[:-1], d1)
    pu, pv = plan(rows, d1, dt), plan(cols, d2, dt)
    wtab = torch.zeros(k + 1, pu.rows, dtype=dt, device=x.device)
    wtab[:k, pu.row] = torch.cat([c, c], 1).to(dt)  # c_a at both rows (Re, Im) of each frequency; 0 on padding
    xu = analysis(x2.contiguous(), pv).index_select(0, regroup(pv, pu))  # (pu.rows, T)
    y = synthesis(xu * wtab[idx].T, pu, pu.inv_twiddle, 1.0 / d2)  # (T, d1): the weights are on xu already
    return y.reshape(*x.shape[:-1], d1)
