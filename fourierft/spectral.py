"""The one definition of the FourierFT weight update.

FourierFT (Gao et al., ICML 2024, arXiv 2405.03003, Eq. 2-3) places ``n`` trainable real coefficients ``c`` at ``n``
entries ``(rows[k], cols[k])`` of an otherwise zero ``d1 x d2`` spectrum ``S`` and adapts a frozen weight ``W`` of
shape ``(d1, d2) = (out_features, in_features)`` by

    dW = scaling * Re(ifft2(S))
    dW[j, l] = scaling / (d1 * d2) * sum_k c_k * cos(2 pi (j * rows[k] / d1 + l * cols[k] / d2))

``torch.fft.ifft2`` uses the "backward" norm (it divides by ``d1 * d2``), exactly as Hugging Face PEFT does.
Every other path in this package (forward, merge, the fast kernels, the tests) is checked against
:func:`delta_weight`.
"""

from __future__ import annotations

import torch


def delta_weight(
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``dW = scaling * Re(ifft2(S))`` with ``S[rows, cols] = spectrum``.

    Args:
        spectrum: ``(n,)`` real coefficients ``c``.
        rows: ``(n,)`` int64 row frequencies ``u_k`` in ``[0, out_features)``.
        cols: ``(n,)`` int64 column frequencies ``v_k`` in ``[0, in_features)``.
        out_features, in_features: ``d1, d2``.
        scaling: the scalar in front of the inverse transform.
        dtype: real dtype of the computation; float32 (PEFT's choice: ``ifft2`` has no half-precision kernels on
            most devices) or float64 for references.

    Returns:
        ``(out_features, in_features)`` real tensor of ``dtype`` on ``spectrum``'s device.
    """
    dense = torch.zeros(out_features, in_features, dtype=dtype, device=spectrum.device)
    dense[rows.to(spectrum.device), cols.to(spectrum.device)] = spectrum.to(dtype)
    return torch.fft.ifft2(dense).real * scaling


def delta_weight_cos(
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
) -> torch.Tensor:
    """The same ``dW`` from the cosine sum, in float64: an independent reference for tests.

    ``dW[j, l] = scaling / (d1 d2) * sum_k c_k cos(2 pi (j u_k / d1 + l v_k / d2))``, shape ``(d1, d2)``.
    """
    j = torch.arange(out_features, dtype=torch.float64)[:, None, None]  # (d1, 1, 1)
    l = torch.arange(in_features, dtype=torch.float64)[None, :, None]  # (1, d2, 1)
    u = rows.to(torch.float64)[None, None, :]  # (1, 1, n)
    v = cols.to(torch.float64)[None, None, :]
    phase = 2 * torch.pi * (j * u / out_features + l * v / in_features)  # (d1, d2, n)
    c = spectrum.detach().to(torch.float64).cpu()
    return (torch.cos(phase) * c).sum(-1) * (scaling / (out_features * in_features))
