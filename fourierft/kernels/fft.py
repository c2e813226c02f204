"""The FFT path: ``x @ dW.T`` from 1-D real FFTs of activation rows; never forms ``dW`` or the dense spectrum.

Derivation (``scale = scaling / (d1 d2)``; ``R = rfft(x)``, ``(T, d2//2 + 1)``; real inputs, so
``fft(x)[v] = conj(R[d2 - v])`` for ``v > d2/2``):

    A[t, k]   = sum_l x[t, l] e^{+2 pi i l v_k / d2}            gathered from R at the half index of v_k
    y[t, j]   = scale * Re sum_k c_k A[t, k] e^{+2 pi i j u_k / d1}
              = scale * d1 * irfft(H)[t, j],   H[t, half(u_k)] += w(u_k) * c_k * (A or conj A)

where ``half(u) = min(u, d1 - u)``, conj is taken when ``u > d1/2`` (the partner bin), and ``w = 1`` on the
self-conjugate bins (0 and d1/2, where only the real part counts; the imaginary part is zeroed) else ``1/2``. With every sign folded in:

    H_re[:, hu_k] += c_k w_k Rx_re[:, hv_k]       H_im[:, hu_k] += c_k w_k m_k Rx_im[:, hv_k]
    grad_x  : the same with (u, d1) and (v, d2) swapped and R = rfft(g)
    grad_c_k = scale * sum_t (Rg_re[t, hu_k] Rx_re[t, hv_k] + m_k Rg_im[t, hu_k] Rx_im[t, hv_k])

with ``m_k = -s_u s_v`` (``s = +1`` if the index is at most d/2, else ``-1``). Cost O(T (d1 log d1 + d2 log d2) + T n),
independent of n beyond the gather: the path for large n. FFTs run in float32 (float64 for float64 inputs):
cuFFT's half precision needs power-of-two sizes.
"""

from __future__ import annotations

import torch


def half_spec(idx: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For frequencies ``idx`` in ``[0, d)``, each ``(n,)``: half-spectrum index (int64), sign ``s`` (+1 / -1),
    weight of the real part ``w`` and of the imaginary part ``w_im`` when scattered into a half spectrum.

    ``w_im`` is 0 on the self-conjugate bins (0 and d/2): their imaginary part must be exactly zero, because cuFFT's
    C2R transform (unlike pocketfft on CPU) does not ignore it there and returns wrong values for non-Hermitian input.
    """
    low = idx <= d // 2
    half = torch.where(low, idx, d - idx)
    sign = torch.where(low, 1.0, -1.0)
    selfconj = (idx == 0) | (2 * idx == d)
    weight = torch.where(selfconj, 1.0, 0.5)
    weight_im = torch.where(selfconj, 0.0, 0.5)
    return half, sign, weight, weight_im


def _spread(r: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, cre: torch.Tensor, cim: torch.Tensor, d_out: int):
    """``irfft(H, d_out)`` with ``H[:, dst] += cre * R_re[:, src] + i cim * R_im[:, src]``; r: (T, *) complex."""
    rr = torch.view_as_real(r)  # (T, h_in, 2)
    g = rr[:, src]  # (T, n, 2)
    g = g * torch.stack([cre, cim], -1)  # (T, n, 2)
    h = torch.zeros(r.shape[0], d_out // 2 + 1, 2, dtype=rr.dtype, device=rr.device)
    h.index_add_(1, dst, g)
    return torch.fft.irfft(torch.view_as_complex(h), n=d_out)


class FFTSpectralLinear(torch.autograd.Function):
    """``y = x @ dW.T`` through row FFTs. ``x``: ``(T, d2)`` any float dtype; FFTs in ``work``; y in x.dtype.

    Only the original ``x`` is saved (not its float32 copy or its spectrum): backward redoes one rfft.
    """

    @staticmethod
    def forward(ctx, x, spectrum, rows, cols, d1, d2, scale, work):  # noqa: D102
        hu, su, wu, wu_im = half_spec(rows, d1)
        hv, sv, _, _ = half_spec(cols, d2)
        c = spectrum.to(work)
        m = (-su * sv).to(work)
        rx = torch.fft.rfft(x.to(work))  # (T, d2//2 + 1)
        y = _spread(rx, hv, hu, c * wu, c * wu_im * m, d1) * (scale * d1)
        ctx.save_for_backward(x, spectrum, rows, cols)
        ctx.dims = (d1, d2, scale, work)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, spectrum, rows, cols = ctx.saved_tensors
        d1, d2, scale, work = ctx.dims
        hu, su, _, _ = half_spec(rows, d1)
        hv, sv, wv, wv_im = half_spec(cols, d2)
        g = g.to(work)
        c = spectrum.to(work)
        m = (-su * sv).to(work)
        rg = torch.fft.rfft(g)  # (T, d1//2 + 1)
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = (_spread(rg, hu, hv, c * wv, c * wv_im * m, d2) * (scale * d2)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            rx = torch.view_as_real(torch.fft.rfft(x.to(work)))[:, hv]  # (T, n, 2)
            gg = torch.view_as_real(rg)[:, hu]  # (T, n, 2)
            s = (gg * rx).sum(0)  # (n, 2)
            grad_c = ((s[:, 0] + m * s[:, 1]) * scale).to(spectrum.dtype)
        return grad_x, grad_c, None, None, None, None, None, None


def fft_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
) -> torch.Tensor:
    """``x @ dW.T`` for ``x`` of shape ``(..., in_features)``; FFTs in float32 (float64 for float64), result in x.dtype."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x2 = x.reshape(-1, in_features)
    if x2.shape[0] == 0:  # MKL and cuFFT reject empty transforms; keep the graph so the grads are zeros
        return x.new_zeros(*x.shape[:-1], out_features) + 0 * (spectrum.sum() + x.sum()).to(x.dtype)
    scale = scaling / (out_features * in_features)
    y = FFTSpectralLinear.apply(x2, spectrum, rows, cols, out_features, in_features, scale, work)
    return y.reshape(*x.shape[:-1], out_features)
