"""Layers that read one input with the same entries share its transform (``_reuse``), inside a scope only, and the
results are those of separate calls to the bit."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from helpers import build, inputs

import fourierft
from fourierft.kernels import _reuse, factored, spectral_linear
from fourierft.kernels._reuse import reuse_scope

from kernel_ref import make_entries

PATHS = ["lowrank", "factored"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
D1, D2, N = 24, 20, 30


def saved_transform(y: torch.Tensor) -> torch.Tensor:
    """The tensor the custom backward of ``y``'s adapter saved first (``q`` or ``xk``)."""
    stack = [y.grad_fn]
    while stack:
        fn = stack.pop()
        if type(fn).__name__.endswith("SpectralLinearBackward"):
            return fn.saved_tensors[0]
        stack += [f for f, _ in fn.next_functions if f is not None]
    raise AssertionError("no adapter node in the graph")


def three_layers(path: str, x: torch.Tensor, spectra: list[torch.Tensor], scoped: bool) -> list[torch.Tensor]:
    rows, cols = make_entries(D1, D2, N)
    with reuse_scope() if scoped else nullcontext():
        return [spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path) for c in spectra]


def leaves(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, D2, generator=g, dtype=torch.float64).requires_grad_()
    return x, [torch.randn(N, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("path", PATHS)
def test_layers_reading_one_input_share_its_transform_and_match_separate_calls(path):
    results = {}
    for scoped in (True, False):
        x, spectra = leaves()
        ys = three_layers(path, x, spectra, scoped)
        ptrs = {saved_transform(y).data_ptr() for y in ys}
        sum(y.square().sum() for y in ys).backward()
        results[scoped] = ptrs, ys, x.grad, [c.grad for c in spectra]
    assert len(results[True][0]) == 1 and len(results[False][0]) == 3  # one saved transform instead of three
    for a, b in zip(results[True][1:], results[False][1:]):
        for got, want in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert torch.equal(got, want)


@pytest.mark.parametrize("path", PATHS)
def test_an_input_written_in_place_between_layers_is_transformed_again(path):
    rows, cols = make_entries(D1, D2, N)
    x, (c, _, _) = leaves()
    x = x.detach()
    with reuse_scope():
        first = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)
        x.mul_(-2.0)  # bumps the version counter
        second = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)
    want = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)  # outside a scope: computed afresh
    assert torch.equal(second, want) and not torch.equal(first, second)
    assert saved_transform(first).data_ptr() != saved_transform(second).data_ptr()


def test_other_entries_are_not_shared():
    x, (c, _, _) = leaves()
    rows, cols = make_entries(D1, D2, N)
    other = make_entries(D1, D2, N, seed=1)
    with reuse_scope():
        a = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path="factored")
        b = spectral_linear(x, c, *other, D1, D2, 40.0, path="factored")
    assert torch.equal(b, spectral_linear(x, c, *other, D1, D2, 40.0, path="factored"))
    assert saved_transform(a).data_ptr() != saved_transform(b).data_ptr()


def test_nothing_is_kept_after_the_scope_or_the_input():
    rows, cols = make_entries(D1, D2, N)
    leaf, (c, _, _) = leaves()
    x = leaf * 1.0  # not a leaf: the graph does not hold it
    with reuse_scope():
        with reuse_scope():  # nested: the outer scope still keeps it
            y = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path="factored")
        assert _reuse._local.entry.value is saved_transform(y)
        del x  # the input freed: the kept transform goes with it (the graph still holds its own reference)
        assert _reuse._local.entry.value is None
    assert _reuse._local.entry is None


def count_analyses(monkeypatch) -> list[int]:
    """A list that grows by one at each analysis the factored path runs (with or without autograd)."""
    calls = []
    analysis = factored.analysis
    monkeypatch.setattr(factored, "analysis", lambda *a, **k: calls.append(1) or analysis(*a, **k))
    return calls


@pytest.mark.parametrize("path", PATHS)
def test_without_autograd_layers_share_the_transform_and_match_separate_calls(path, monkeypatch):
    calls = count_analyses(monkeypatch)
    x, spectra = leaves()
    rows, cols = make_entries(D1, D2, N)
    with torch.no_grad():
        scoped = three_layers(path, x, spectra, scoped=True)
        kept = _reuse._local.entry
        separate = three_layers(path, x, spectra, scoped=False)
    assert kept is None  # the scope ended: nothing outlives it
    if path == "factored":
        assert len(calls) == 1 + 3  # once in the scope, then once per separate call
    for got, want in zip(scoped, separate):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", PATHS)
def test_without_autograd_an_input_written_in_place_is_transformed_again(path):
    rows, cols = make_entries(D1, D2, N)
    x, (c, _, _) = leaves()
    with torch.no_grad(), reuse_scope():
        first = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)
        x.mul_(-2.0)  # bumps the version counter
        second = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)
    with torch.no_grad():
        want = spectral_linear(x, c, rows, cols, D1, D2, 40.0, path=path)
    assert torch.equal(second, want) and not torch.equal(first, second)


def test_nothing_is_kept_for_inference_tensors():
    """Inference tensors have no version counter, so a write between two layers could not be seen: no reuse."""
    rows, cols = make_entries(D1, D2, N)
    x, (c, _, _) = leaves()
    with torch.inference_mode():
        xi = x.detach().clone()
        with reuse_scope():
            plain = spectral_linear(xi, c, rows, cols, D1, D2, 40.0, path="factored")
            assert getattr(_reuse._local, "entry", None) is None
    with reuse_scope():
        y = spectral_linear(xi, c, rows, cols, D1, D2, 40.0, path="factored")  # c needs a gradient
        assert getattr(_reuse._local, "entry", None) is None
    assert torch.equal(y, plain)


def test_a_model_forward_transforms_each_shared_input_once(monkeypatch):
    """Tiny LLaMA (GQA: k and v 16 wide, q 32): per block q, k (v shares k's), o, gate (up shares it) and down."""
    calls = []
    transform = factored.transform_input
    monkeypatch.setattr(factored, "transform_input", lambda *a, **k: calls.append(1) or transform(*a, **k))
    cfg = fourierft.FourierFTConfig(n_frequency=40, scaling=50.0, target_modules="all-linear", init_weights=False)
    model = fourierft.get_peft_model(build("llama"), cfg)
    model.base_model.set_compute_path("factored")
    model(**inputs("llama")).logits.sum().backward()
    assert len(calls) == 2 * 5


@pytest.mark.parametrize("device,dtype", [("cpu", torch.float32), pytest.param("cuda", torch.bfloat16, marks=cuda)])
def test_a_model_forward_without_autograd_shares_the_transforms_and_matches_inference_mode(monkeypatch, device, dtype):
    """The same tiny LLaMA at inference: under ``no_grad`` the same five analyses per block, under
    ``inference_mode`` (nothing kept) all seven, and the same logits to the bit (on CUDA: bf16, Triton's stage 1)."""
    calls = count_analyses(monkeypatch)
    cfg = fourierft.FourierFTConfig(n_frequency=40, scaling=50.0, target_modules="all-linear", init_weights=False)
    model = fourierft.get_peft_model(build("llama", dtype), cfg).to(device)
    model.base_model.set_compute_path("factored")
    batch = {k: v.to(device) for k, v in inputs("llama").items()}
    with torch.no_grad():
        shared = model(**batch).logits
    assert len(calls) == 2 * 5
    with torch.inference_mode():
        alone = model(**batch).logits
    assert len(calls) == 2 * 5 + 2 * 7
    assert torch.equal(shared, alone)
