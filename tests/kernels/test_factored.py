"""The factored path's two primitives against the DFT sums written out in float64, and its split choice."""

from __future__ import annotations

import math

import pytest
import torch

from fourierft.kernels import factored
from fourierft.kernels.factored import analysis, make_plan, regroup, split_cost, synthesis


def dft_sums(f: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2 pi f_k j / d, (n, d), from the definition."""
    ang = torch.tensor([[2 * math.pi * ((int(fk) * j) % d) / d for j in range(d)] for fk in f], dtype=torch.float64)
    return torch.cos(ang), torch.sin(ang)


CASES = {
    "uniform": (48, torch.tensor([0, 5, 17, 24, 33, 47, 5, 12])),  # a repeated frequency (two entries, one column)
    "one-group": (36, torch.tensor([0, 6, 12, 18, 24, 30])),  # all f = 0 mod 6 (see the forced split below)
    "prime": (13, torch.tensor([1, 4, 9, 12])),  # no divisor: N1 = 1, stage 1 is the identity
    "nyquist": (16, torch.tensor([0, 8, 3, 13])),  # the self-conjugate bins and a +/- pair
}


@pytest.fixture(params=[None, 6])
def forced_split(request, monkeypatch):
    """None: the cost model's split (N1 = 1 for these small n); 6: N1 = 6 wherever 6 divides d."""
    if request.param is not None:
        k = request.param
        monkeypatch.setattr(factored, "split_cost", lambda d, n: (k, 0.0) if d % k == 0 else (1, 0.0))
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_analysis_and_synthesis_match_the_sums(case, forced_split):
    d, f = CASES[case]
    n = f.numel()
    p = make_plan(f, d, torch.float64)
    cos, sin = dft_sums(f, d)
    x = torch.randn(3, d, dtype=torch.float64)
    got = analysis(x, p)[p.row]  # (2n, T)
    want = torch.cat([cos @ x.T, sin @ x.T])  # X_k = sum_j x_j e^{+2 pi i f_k j / d}
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    z = torch.randn(2 * n, 3, dtype=torch.float64)
    zg = torch.zeros(p.rows, 3, dtype=torch.float64).index_put_((p.row,), z)
    w = torch.zeros(p.rows, dtype=torch.float64).index_put_((p.row,), torch.full((2 * n,), 2.0, dtype=torch.float64))
    base = torch.randn(3, d, dtype=torch.float64)
    y = synthesis(zg, p, w, 0.5, base)
    want = base + 0.5 * 2.0 * (z[:n].T @ cos - z[n:].T @ sin)  # Re sum_k Z_k e^{+2 pi i f_k i / d}
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_padding_rows_are_zero_and_ignored(monkeypatch):
    monkeypatch.setattr(factored, "split_cost", lambda d, n: (6, 0.0))
    d, f = CASES["one-group"]
    p = make_plan(f, d, torch.float64)
    assert (p.n1, p.n2, p.m) == (6, 6, f.numel())  # every frequency in group 0, five empty groups
    out = analysis(torch.randn(2, d, dtype=torch.float64), p)
    pad = torch.ones(p.rows, dtype=torch.bool)
    pad[p.row] = False
    assert pad.any() and out[pad].abs().max() == 0
    # synthesis ignores whatever sits in padding rows (their weights are 0)
    junk = torch.zeros(p.rows, 2, dtype=torch.float64)
    junk[pad] = 1e6
    w = torch.zeros(p.rows, dtype=torch.float64).index_put_((p.row,), torch.ones(2 * f.numel(), dtype=torch.float64))
    assert synthesis(junk, p, w, 1.0).abs().max() == 0


def test_regroup_moves_each_frequency_to_its_rows():
    fu, fv = torch.tensor([3, 7, 7, 0]), torch.tensor([5, 1, 9, 2])
    pu, pv = make_plan(fu, 12, torch.float64), make_plan(fv, 10, torch.float64)
    src = torch.zeros(pv.rows, dtype=torch.float64).index_put_((pv.row,), torch.arange(8, dtype=torch.float64) + 1)
    moved = src[regroup(pv, pu)]
    assert torch.equal(moved[pu.row], torch.arange(8, dtype=torch.float64) + 1)


@pytest.mark.parametrize(("d", "n"), [(4096, 1000), (11008, 1000), (384, 1000), (4096, 10000)])
def test_split_is_a_divisor_and_cheaper_than_dense(d, n):
    n1, cost = split_cost(d, n)
    assert d % n1 == 0 and 1 < n1 < d
    assert cost < 4 * n  # below the lowrank path's 4 n flops per element of a row


def test_split_of_a_prime_is_trivial():
    assert split_cost(4099, 1000) == (1, 4.0 + 8.0 * 1000)


@pytest.mark.parametrize(("d", "aligned"), [(11008, True), (14336, True), (4096, True), (100, False), (86, False)])
def test_split_prefers_tensor_core_aligned_blocks(d, aligned):
    n1, _ = split_cost(d, 1000)
    assert d % n1 == 0 and 1 < n1 < d
    assert (n1 % 8 == 0 and (d // n1) % 8 == 0) == aligned  # 11008: 32 x 344, not the cheaper-looking 43 x 256
