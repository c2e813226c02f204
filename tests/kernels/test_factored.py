"""The factored path's two primitives against the DFT sums written out in float64, on full and paired plans."""

from __future__ import annotations

import math

import pytest
import torch

from fourierft.kernels import factored_plan
from fourierft.kernels.factored import analysis, make_plan, regroup, synthesis, weighted_inverse


def dft_sums(f: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2 pi f_k j / d, (n, d), from the definition."""
    ang = torch.tensor([[2 * math.pi * ((int(fk) * j) % d) / d for j in range(d)] for fk in f], dtype=torch.float64)
    return torch.cos(ang), torch.sin(ang)


CASES = {
    "uniform": (48, torch.tensor([0, 5, 17, 24, 33, 47, 5, 12])),  # a repeated frequency (two entries, one column)
    "one-group": (36, torch.tensor([0, 6, 12, 18, 24, 30])),  # all f = 0 mod 6 (see the forced split below)
    "prime": (13, torch.tensor([1, 4, 9, 12])),  # no divisor: N1 = 1, stage 1 is the identity
    "nyquist": (16, torch.tensor([0, 8, 3, 13])),  # the self-conjugate bins and a +/- pair
    # N1 = 5 / 6 / 2 where forced: f1 = 0, both members of each pair, and (even N1) f1 = N1 / 2 in group 0
    "pairs-odd": (35, torch.tensor([0, 5, 1, 4, 2, 3, 34, 12, 28])),
    "pairs-even": (42, torch.tensor([0, 3, 9, 1, 5, 2, 4, 41, 27])),
    "two": (22, torch.tensor([0, 1, 2, 3, 21, 11])),
}


@pytest.fixture(params=[None, 6, 5, 2])
def forced_split(request, monkeypatch):
    """None: the cost model's split; else N1 = k wherever k divides d (and N1 = 1 elsewhere)."""
    if request.param is not None:
        k = request.param
        monkeypatch.setattr(factored_plan, "split_cost", lambda d, n, *_: (k, 0.0) if d % k == 0 else (1, 0.0))
    return request.param


@pytest.mark.parametrize("half", [True, False], ids=["half", "full"])
@pytest.mark.parametrize("case", CASES)
def test_analysis_and_synthesis_match_the_sums(case, half, forced_split):
    d, f = CASES[case]
    n = f.numel()
    p = make_plan(f, d, torch.float64, half)
    if forced_split:
        assert p.n1 == (forced_split if d % forced_split == 0 else 1)
    assert p.groups == ((p.n1 + 1) // 2 if half else p.n1)
    cos, sin = dft_sums(f, d)
    x = torch.randn(3, d, dtype=torch.float64)
    got = analysis(x, p)[p.row]  # (2n, T)
    want = torch.cat([cos @ x.T, sin @ x.T])  # X_k = sum_j x_j e^{+2 pi i f_k j / d}
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    z = torch.randn(2 * n, 3, dtype=torch.float64)
    zg = torch.zeros(p.rows, 3, dtype=torch.float64).index_put_((p.row,), z)
    base = torch.randn(3, d, dtype=torch.float64)
    y = synthesis(zg, p, weighted_inverse(torch.full((n,), 2.0, dtype=torch.float64), p), 0.5, base)
    want = base + 0.5 * 2.0 * (z[:n].T @ cos - z[n:].T @ sin)  # Re sum_k Z_k e^{+2 pi i f_k i / d}
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)

    # conjugated: [Re X; -Im X] out of the analysis, and a synthesis that reads its z that way
    torch.testing.assert_close(analysis(x, p, conj=True)[p.row], torch.cat([cos @ x.T, -sin @ x.T]),
                               rtol=1e-12, atol=1e-12)
    zc = torch.zeros(p.rows, 3, dtype=torch.float64).index_put_((p.row,), torch.cat([z[:n], -z[n:]]))
    coef = torch.full((n,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(synthesis(zc, p, weighted_inverse(coef, p, conj=True), 0.5, base), want,
                               rtol=1e-12, atol=1e-12)


def test_padding_rows_are_zero_and_ignored(monkeypatch):
    monkeypatch.setattr(factored_plan, "split_cost", lambda d, n, *_: (6, 0.0))
    d, f = CASES["one-group"]
    p = make_plan(f, d, torch.float64)
    assert (p.n1, p.n2, p.groups, p.m) == (6, 6, 3, f.numel())  # every frequency in group 0, two empty groups
    out = analysis(torch.randn(2, d, dtype=torch.float64), p)
    pad = torch.ones(p.rows, dtype=torch.bool)
    pad[p.row] = False
    assert pad.any() and out[pad].abs().max() == 0
    # synthesis ignores whatever sits in padding rows (their weights are 0)
    junk = torch.zeros(p.rows, 2, dtype=torch.float64)
    junk[pad] = 1e6
    assert synthesis(junk, p, weighted_inverse(torch.randn(f.numel(), dtype=torch.float64), p), 1.0).abs().max() == 0
    assert synthesis(junk, p, p.inv_twiddle, 1.0).abs().max() == 0


def test_regroup_moves_each_frequency_to_its_rows():
    fu, fv = torch.tensor([3, 7, 7, 0]), torch.tensor([5, 1, 9, 2])
    pu, pv = make_plan(fu, 12, torch.float64), make_plan(fv, 10, torch.float64)
    src = torch.zeros(pv.rows, dtype=torch.float64).index_put_((pv.row,), torch.arange(8, dtype=torch.float64) + 1)
    moved = src[regroup(pv, pu)]
    assert torch.equal(moved[pu.row], torch.arange(8, dtype=torch.float64) + 1)
