"""The caches never serve stale results (fused optimizers, in-place edits, swapped storage) and die with their owner."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from kernel_ref import make_entries, reference, rel

from fourierft.kernels import _cache, cache_sizes, clear_caches, invalidate, spectral_linear
from fourierft.spectral import delta_weight_cos

D1, D2, N = 8, 16, 20


def adapter():
    torch.manual_seed(0)
    rows, cols = make_entries(D1, D2, N)
    return torch.nn.Parameter(torch.randn(N)), rows, cols, torch.randn(4, D2)


def want(spectrum, rows, cols, x):
    return x.double() @ delta_weight_cos(spectrum, rows, cols, D1, D2, 150.0).T


# what each path caches on the spectrum at inference: gemm its dense dW, lowrank [c, -c], factored its weighted
# inverse twiddles
KIND = {"gemm": "dense", "lowrank": "weighted", "factored": "weighted"}


@pytest.mark.parametrize("path", list(KIND))
@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True),  # writes without bumping _version
    lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1),
])
def test_no_grad_forward_after_optimizer_step_sees_new_coefficients(optimizer, path):
    clear_caches()
    spectrum, rows, cols, x = adapter()
    opt = optimizer([spectrum])
    spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path).sum().backward()
    with torch.no_grad():
        before = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)  # fills the cache
        assert cache_sizes()[KIND[path]] == 1
    old = spectrum.detach().clone()
    opt.step()
    assert not torch.equal(spectrum.detach(), old)
    with torch.no_grad():
        after = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    assert rel(after, want(spectrum, rows, cols, x)) < 1e-5
    assert rel(before, want(old, rows, cols, x)) < 1e-5


@pytest.mark.parametrize("path", list(KIND))
def test_in_place_edit_and_swapped_storage(path):
    clear_caches()
    spectrum, rows, cols, x = adapter()
    with torch.no_grad():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        spectrum.mul_(2.0)
        assert rel(spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path),
                   want(spectrum, rows, cols, x)) < 1e-5
        spectrum.data = torch.randn_like(spectrum)
        assert rel(spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path),
                   want(spectrum, rows, cols, x)) < 1e-5


@pytest.mark.parametrize("path", list(KIND))
def test_invalidate_drops_what_was_written_behind_the_caches_back(path):
    """A write that bumps nothing (through ``.data``, which has its own version counter) is seen after
    :func:`invalidate`."""
    clear_caches()
    spectrum, rows, cols, x = adapter()
    with torch.no_grad():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        version = spectrum._version
        spectrum.data.mul_(3.0)
        assert spectrum._version == version
        stale = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        invalidate(spectrum)
        fresh = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    assert rel(fresh, want(spectrum, rows, cols, x)) < 1e-5
    assert rel(stale, want(spectrum, rows, cols, x)) > 0.5  # the write was indeed invisible to the version checks


def test_caches_die_with_their_tensors():
    """Nothing is held after the adapter's tensors are gone; equal entries share one basis while alive."""
    clear_caches()
    spectrum, rows, cols, x = adapter()
    rows2, cols2 = rows.clone(), cols.clone()  # another layer of the same shape: same entries, other tensors
    with torch.no_grad():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path="lowrank")
        spectral_linear(x, spectrum, rows2, cols2, D1, D2, 150.0, path="lowrank")
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path="gemm")
    assert _cache.basis(rows, D1, torch.float32) is _cache.basis(rows2, D1, torch.float32)
    # the spectrum holds gemm's dW and lowrank's [c, -c]
    assert cache_sizes() == {"indices": 4, "built": 2, "dense": 1, "weighted": 1}
    del spectrum, rows, cols, rows2, cols2
    gc.collect()
    assert cache_sizes() == {"indices": 0, "built": 0, "dense": 0, "weighted": 0}


def test_no_optimizer_hook_until_a_dw_is_cached():
    """Importing and training register nothing global; the hook appears with the first cached dW, goes with
    :func:`clear_caches`."""
    clear_caches()
    assert not _cache._hook
    spectrum, rows, cols, x = adapter()
    spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path="gemm").sum().backward()
    assert not _cache._hook
    with torch.no_grad():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path="gemm")
    assert len(_cache._hook) == 1
    clear_caches()
    assert not _cache._hook


def test_reference_helper_agrees():
    spectrum, rows, cols, x = adapter()
    ry, _, _ = reference(x, torch.zeros(4, D1), spectrum.detach(), rows, cols, D1, D2, 150.0)
    assert rel(want(spectrum, rows, cols, x), ry) < 1e-12


@pytest.mark.parametrize("path", ["lowrank", "factored"])
def test_inference_builds_the_coefficient_tables_once_and_training_never_keeps_them(path):
    clear_caches()
    spectrum, rows, cols, x = adapter()
    spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path).sum().backward()
    assert cache_sizes()["weighted"] == 0  # training builds them fresh: the coefficients change every step
    with torch.no_grad():
        first = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        table = _cache._by_spectrum[spectrum]["weighted" if path == "factored" else "coefficients"][1]
        second = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        assert _cache._by_spectrum[spectrum]["weighted" if path == "factored" else "coefficients"][1] is table
    assert torch.equal(first, second) and rel(first, want(spectrum, rows, cols, x)) < 1e-5


@pytest.mark.parametrize("path", ["gemm", "lowrank", "factored"])
def test_bases_built_under_inference_mode_serve_training_after(path):
    """A first forward under ``inference_mode`` (an evaluation before training) builds the cached bases and plans;
    the training step after it saves them for its backward, so they must be normal tensors."""
    clear_caches()
    spectrum, rows, cols, x = adapter()
    with torch.inference_mode():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    x = x.clone().requires_grad_()
    y = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    y.square().sum().backward()
    assert rel(y, want(spectrum, rows, cols, x)) < 1e-5
    assert spectrum.grad is not None and x.grad is not None


@pytest.mark.parametrize("path", ["lowrank", "factored"])
def test_inference_tables_follow_entries_rewritten_in_place(path):
    """The coefficient tables are keyed by what the entries built (bases, plans): entries rewritten in place (a
    ``load_state_dict`` into the buffers) give new plans, so the tables of the old entries are not served."""
    clear_caches()
    spectrum, rows, cols, x = adapter()
    with torch.no_grad():
        spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)  # tables built for the first entries
        rows2, cols2 = make_entries(D1, D2, N, seed=5)
        rows.copy_(rows2), cols.copy_(cols2)
        y = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    assert rel(y, want(spectrum, rows2, cols2, x)) < 1e-5


@pytest.mark.parametrize("path", ["gemm", "lowrank", "factored"])
def test_entries_made_under_inference_mode(path):
    """Entries that are inference tensors (no version counter) are keyed by their contents: they serve inference and
    a training step after it, and a write into them inside ``inference_mode`` (which no counter records) is seen.
    (gemm's backward saves the entries themselves, which torch refuses for inference tensors, with its own advice.)"""
    clear_caches()
    spectrum, rows, cols, x = adapter()
    with torch.inference_mode():
        rows, cols = rows.clone(), cols.clone()
        assert rows.is_inference()
        y = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
        assert rel(y, want(spectrum, rows, cols, x)) < 1e-5
        rows2, cols2 = make_entries(D1, D2, N, seed=5)
        rows.copy_(rows2), cols.copy_(cols2)
        y = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    assert rel(y, want(spectrum, rows2, cols2, x)) < 1e-5
    if path == "gemm":
        return
    x = x.clone().requires_grad_()
    y = spectral_linear(x, spectrum, rows, cols, D1, D2, 150.0, path=path)
    y.square().sum().backward()
    assert rel(y, want(spectrum, rows2, cols2, x)) < 1e-5
    assert spectrum.grad is not None and x.grad is not None


def test_by_id_table_keys_by_identity_and_forgets_freed_tensors():
    table = _cache.ById()
    a, b = torch.zeros(2), torch.zeros(2)  # equal values, two tensors
    table[a] = 1
    assert table.get(b) is None and table.get(a) == 1 and table[a] == 1
    with pytest.raises(KeyError):
        table[b]
    assert table.setdefault(b, {}) == {} and table.setdefault(b, None) == {} and len(table) == 2
    assert table.pop(a) == 1 and table.get(a) is None and table.pop(a, "gone") == "gone"
    table[a] = 3
    del a
    gc.collect()
    assert len(table) == 1 and table.values() == [{}]
    c = torch.zeros(1)
    table._d[id(c)] = (weakref.ref(torch.zeros(1)), "stale")  # a freed tensor's entry under c's id
    assert table.get(c) is None
