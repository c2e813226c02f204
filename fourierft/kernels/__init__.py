"""Ways to compute a FourierFT adapter's contribution ``x @ dW.T`` (all equal to :func:`fourierft.spectral.delta_weight`).

This placeholder holds only the dense reference path; fast paths land here (issue 3).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..spectral import delta_weight

Path = Literal["auto", "dense"]
PATHS: tuple[str, ...] = ("auto", "dense")


def spectral_linear(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    path: Path = "auto",
) -> torch.Tensor:
    """``x @ dW.T``: ``x`` is ``(..., in_features)``, the result ``(..., out_features)`` in ``x.dtype``.

    The dense path is PEFT's: build ``dW`` in float32, run the matmul in float32, cast back.
    """
    dw = delta_weight(spectrum, rows, cols, out_features, in_features, scaling)
    return F.linear(x.to(dw.dtype), dw).to(x.dtype)
