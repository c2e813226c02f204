"""The one dW definition against a float64 cosine sum and a case small enough to do by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fourierft.spectral import delta_weight, delta_weight_cos


def test_single_entry_by_hand():
    # One coefficient c at (u, v) = (1, 0) of a 2x3 spectrum: dW[j, l] = s * c * cos(pi * j) / 6.
    dw = delta_weight(torch.tensor([3.0]), torch.tensor([1]), torch.tensor([0]), 2, 3, scaling=2.0)
    expected = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])  # 2 * 3 / 6 = 1
    torch.testing.assert_close(dw, expected)


def test_dc_entry_is_constant():
    dw = delta_weight(torch.tensor([6.0]), torch.tensor([0]), torch.tensor([0]), 3, 4, scaling=1.0)
    torch.testing.assert_close(dw, torch.full((3, 4), 0.5))


@pytest.mark.parametrize("shape", [(8, 8), (5, 12), (12, 5), (7, 9)])
@pytest.mark.parametrize("n", [1, 10, 30])
def test_matches_cosine_sum(shape, n):
    d1, d2 = shape
    g = torch.Generator().manual_seed(d1 * 100 + d2 + n)
    flat = torch.randperm(d1 * d2, generator=g)[:n]
    rows, cols = flat // d2, flat % d2
    c = torch.randn(n, generator=g, dtype=torch.float64)
    ref = delta_weight_cos(c, rows, cols, d1, d2, scaling=150.0)
    torch.testing.assert_close(delta_weight(c, rows, cols, d1, d2, 150.0, dtype=torch.float64), ref)
    got32 = delta_weight(c.float(), rows, cols, d1, d2, 150.0)
    assert got32.dtype == torch.float32
    assert (got32.double() - ref).norm() / ref.norm() < 1e-5


def test_rank_at_most_two_n():
    d1, d2, n = 16, 20, 3
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(0))[:n]
    dw = delta_weight(torch.randn(n, dtype=torch.float64), flat // d2, flat % d2, d1, d2, 1.0, torch.float64)
    assert torch.linalg.matrix_rank(dw) <= 2 * n
    assert math.isfinite(dw.sum().item())
