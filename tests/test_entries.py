"""Spectral entries: bit-identical to the reference's torch.randperm prefix, in O(n)."""

from __future__ import annotations

import pytest
import torch

from fourierft import entries
from fourierft.entries import randperm_prefix, spectral_entries


def reference(d1: int, d2: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
    return flat // d2, flat % d2


@pytest.mark.parametrize(
    "d1,d2,n",
    [(1, 1, 1), (1, 2, 2), (2, 2, 4), (3, 5, 15), (10, 10, 100), (10, 10, 99), (64, 48, 1000), (768, 768, 1000),
     (33, 1000, 7), (4096, 11, 3000)],
)
@pytest.mark.parametrize("seed", [0, 1, 777, 2**31 - 1, 2**32 - 1])
def test_prefix_equals_torch_randperm(d1, d2, n, seed):
    got = spectral_entries(d1, d2, n, seed)
    want = reference(d1, d2, n, seed)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_many_random_sizes_and_seeds():
    g = torch.Generator().manual_seed(1234)
    for _ in range(60):
        total = int(torch.randint(1, 5000, (1,), generator=g))
        n = int(torch.randint(1, total + 1, (1,), generator=g))
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        want = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
        assert torch.equal(randperm_prefix(total, n, seed), want), (total, n, seed)


def test_large_layer_takes_the_o_n_path_and_is_exact(monkeypatch):
    """A 4096 x 1024 layer (4M entries): the O(n) shuffle prefix, never a full ``torch.randperm``, and the same
    entries as the reference's."""
    want = reference(4096, 1024, 1000, 777)
    monkeypatch.setattr(entries, "_torch_randperm_prefix", lambda *a: pytest.fail("torch.randperm fallback used"))
    entries._spectral_entries.cache_clear()
    rows, cols = spectral_entries(4096, 1024, 1000, 777)
    entries._spectral_entries.cache_clear()
    assert torch.equal(rows, want[0]) and torch.equal(cols, want[1])


@pytest.mark.parametrize("seed", [2**32, 2**40 + 3, -1])
def test_seeds_outside_mt_range_fall_back_to_torch(seed):
    want = torch.randperm(200, generator=torch.Generator().manual_seed(seed))[:50]
    rows, cols = spectral_entries(10, 20, 50, seed)
    assert torch.equal(rows * 20 + cols, want)


def test_huge_spectra_fall_back_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(entries, "_FISHER_YATES_MAX_N", 100)
    original = entries._torch_randperm_prefix
    monkeypatch.setattr(entries, "_torch_randperm_prefix", lambda *a: calls.append(a) or original(*a))
    entries._spectral_entries.cache_clear()
    rows, cols = spectral_entries(11, 13, 20, 5)
    entries._spectral_entries.cache_clear()
    assert calls == [(143, 20, 5)]
    assert torch.equal(rows, reference(11, 13, 20, 5)[0])


def test_falls_back_when_torch_shuffles_differently(monkeypatch):
    monkeypatch.setattr(entries, "_fast_path_reproduces_torch", lambda: False)
    monkeypatch.setattr(entries, "randperm_prefix", lambda *a: pytest.fail("fast path used"))
    entries._spectral_entries.cache_clear()
    rows, _ = spectral_entries(9, 7, 10, 3)
    entries._spectral_entries.cache_clear()
    assert torch.equal(rows, reference(9, 7, 10, 3)[0])


def test_cached_results_cannot_be_corrupted_by_callers():
    rows, _ = spectral_entries(8, 8, 5, 0)
    rows.zero_()
    assert torch.equal(spectral_entries(8, 8, 5, 0)[0], reference(8, 8, 5, 0)[0])


@pytest.mark.parametrize("n", [0, -1, 65])
def test_bad_n_is_refused(n):
    with pytest.raises(ValueError, match="n_frequency"):
        spectral_entries(8, 8, n, 0)
