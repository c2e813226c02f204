"""The factored path's split choice and plan layouts (:mod:`fourierft.kernels.factored_plan`)."""

from __future__ import annotations

import pytest
import torch

from fourierft.kernels.factored_plan import make_plan, split_cost


@pytest.mark.parametrize(("d", "n"), [(4096, 1000), (11008, 1000), (384, 1000), (4096, 10000)])
def test_split_is_a_divisor_and_cheaper_than_dense(d, n):
    n1, cost = split_cost(d, n)
    assert d % n1 == 0 and 1 < n1 < d
    assert cost < 4 * n  # below the lowrank path's 4 n flops per element of a row


def test_half_plans_write_half_the_stage_one_rows():
    f = torch.randint(0, 4096, (1000,), generator=torch.Generator().manual_seed(0))
    half, full = make_plan(f, 4096, torch.float32), make_plan(f, 4096, torch.float32, half=False)
    assert half.dft.shape == (half.n1, half.n1) and full.dft.shape == (2 * full.n1, full.n1)
    assert split_cost(4096, 1000)[1] < 0.75 * split_cost(4096, 1000, False)[1]


def test_split_of_a_prime_is_trivial():
    assert split_cost(4099, 1000) == (1, 4.0 + 8.0 * 1000)


@pytest.mark.parametrize(("d", "aligned"), [(11008, True), (14336, True), (4096, True), (100, False), (86, False)])
def test_split_prefers_tensor_core_aligned_blocks(d, aligned):
    n1, _ = split_cost(d, 1000)
    assert d % n1 == 0 and 1 < n1 < d
    assert (n1 % 8 == 0 and (d // n1) % 8 == 0) == aligned  # 11008: 32 x 344, not the cheaper-looking 43 x 256
