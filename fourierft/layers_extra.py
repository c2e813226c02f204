"""FourierFT on ``nn.Conv2d`` and ``nn.Embedding``: how the ``d1 x d2`` spectrum maps onto their weights.

``nn.Conv2d`` (weight ``(out, in / groups, kh, kw)``): the spectrum lives on the ``(out, in / groups * kh * kw)``
matrix view, the same flattening PEFT's LoRA uses for convolutions and the one a ViT patch embedding is a linear
layer in (a ``k x k``, stride-``k`` patch conv is exactly ``nn.Linear(in * k * k, out)`` on unfolded patches). So a
ViT patch embedding gets the same ``dW`` it would get as a linear layer, and frequencies along ``d2`` run over the
flattened ``(channel, kh, kw)`` axis in memory order. ``dW`` is reshaped to the kernel and applied with the base
conv's own stride, padding, dilation and groups (``y = conv(x, W) + conv(x, dW)``), so merging is exact.

``nn.Embedding`` (weight ``(num_embeddings, embedding_dim)``): ``dW`` has the weight's shape, ``d1 = vocabulary``.
The forward adds ``dW[ids]`` without forming ``dW``: only the distinct ids' rows are computed, from the low-rank form

    dW[j, :] = scaling / (d1 d2) * ((cos(A_j) * c) @ cos(B)^T - (sin(A_j) * c) @ sin(B)^T),
    A_j[k] = 2 pi (j u_k mod d1) / d1,   B[l, k] = 2 pi (l v_k mod d2) / d2

(``O(U n + d2 n + U n d2)`` for ``U`` distinct ids instead of ``O(d1 d2)``; phases reduced modulo ``d1``/``d2`` in
integers first, so float32 keeps them exact to rounding). Checked against :func:`fourierft.spectral.delta_weight`.
"""

from __future__ import annotations

import torch
from torch import nn


def matrix_shape(base: nn.Module) -> tuple[int, int]:
    """``(d1, d2)`` of the matrix the spectrum lives on, for a Conv2d or an Embedding."""
    if isinstance(base, nn.Conv2d):
        out, per_group, kh, kw = base.weight.shape
        return out, per_group * kh * kw
    if isinstance(base, nn.Embedding):
        return base.num_embeddings, base.embedding_dim
    raise TypeError(f"not a Conv2d or Embedding: {type(base).__name__}")


def conv2d_delta(base: nn.Conv2d, dw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``conv(x, dW)`` with the base conv's geometry: ``(N, C_in, H, W) -> (N, C_out, H', W')`` in ``x.dtype``.

    ``dw``: ``(out, in / groups * kh * kw)``, reshaped to the kernel.
    """
    return base._conv_forward(x, dw.reshape(base.weight.shape).to(x.dtype), None)  # padding_mode as the base does


def embedding_delta(spectrum: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, d1: int, d2: int,
                    scaling: float, ids: torch.Tensor) -> torch.Tensor:
    """``dW[ids]`` float32: ``ids`` ``(...)`` int64 -> ``(..., d2)``, differentiable in the ``(n,)`` spectrum.

    ``d1, d2 = num_embeddings, embedding_dim``; only the distinct ids' rows are computed (see the module docstring).
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    c = spectrum.float()
    u, v = rows.to(ids.device), cols.to(ids.device)
    a = (unique[:, None] * u[None, :]) % d1 * (2 * torch.pi / d1)  # (U, n)
    b = (torch.arange(d2, device=ids.device)[:, None] * v[None, :]) % d2 * (2 * torch.pi / d2)  # (d2, n)
    out = (torch.cos(a) * c) @ torch.cos(b).T - (torch.sin(a) * c) @ torch.sin(b).T  # (U, d2)
    return (out * (scaling / (d1 * d2)))[inverse]


def check_extra(base: nn.Module) -> None:
    """Refuse what the delta cannot follow: an Embedding that renormalises rows in place (``max_norm``)."""
    if isinstance(base, nn.Embedding) and base.max_norm is not None:
        raise TypeError("FourierFT cannot adapt an nn.Embedding with max_norm (it rescales rows of W in place)")
