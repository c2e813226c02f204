"""Dispatch (``auto``), caches (never stale), autocast, checkpointing, torch.compile, and the GPU paths."""

from __future__ import annotations

import pytest
import torch
from kernel_ref import make_entries, reference, rel
from torch.utils.checkpoint import checkpoint

from fourierft.kernels import choose_path, clear_caches, delta_weight_cached, spectral_linear
from fourierft.spectral import delta_weight


FAST = ("gemm", "lowrank", "factored")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_choices():
    # measured (docs/benchmarks.md): BERT-sized on CPU -> gemm; LLaMA-sized n=1000 on GPU -> lowrank; from n ~ 2000 on
    # the GPU: factored to train (bench/kernels.py: 1.1-2.1x over the next path), the cached-dW gemm to infer
    assert choose_path(384, 384, 1000, device_type="cpu", training=True) == "gemm"
    assert choose_path(384, 1536, 1000, device_type="cpu", training=False) == "gemm"
    for shape in [(4096, 4096), (11008, 4096), (4096, 11008)]:
        assert choose_path(*shape, 1000, device_type="cuda", training=True) == "lowrank"
        assert choose_path(*shape, 1000, device_type="cuda", training=False) == "lowrank"
        for n in (3000, 10000):
            assert choose_path(*shape, n, device_type="cuda", training=True) == "factored"
            assert choose_path(*shape, n, device_type="cuda", training=False) == "gemm"
    assert choose_path(4096, 4096, 1, device_type="cuda", training=True) == "lowrank"


@pytest.mark.parametrize("grad", [True, False])
def test_auto_runs_and_matches(grad):
    d1, d2 = 24, 20
    rows, cols = make_entries(d1, d2, 30)
    x, c = torch.randn(4, d2), torch.randn(30, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y = spectral_linear(x, c, rows, cols, d1, d2, 5.0)
    ry, _, _ = reference(x, torch.zeros(4, d1), c.detach(), rows, cols, d1, d2, 5.0)
    assert rel(y, ry) < 1e-5


def test_inference_cache_follows_the_spectrum():
    """gemm at inference caches dW; an in-place change of spectrum or entries must show up at once."""
    clear_caches()
    d1, d2 = 10, 12
    rows, cols = make_entries(d1, d2, 15)
    c = torch.nn.Parameter(torch.randn(15))
    x = torch.randn(3, d2)
    with torch.no_grad():
        y1 = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path="gemm")
        assert torch.equal(y1, spectral_linear(x, c, rows, cols, d1, d2, 2.0, path="gemm"))
        c.mul_(-2.0)  # an optimizer step / load_state_dict writes in place
        y2 = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path="gemm")
        assert torch.allclose(y2, -2.0 * y1, atol=1e-5)
        rows2, cols2 = make_entries(d1, d2, 15, seed=3)
        rows.copy_(rows2), cols.copy_(cols2)  # entries rewritten in place
        for path in ("gemm", "lowrank"):
            y3 = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path)
            ry, _, _ = reference(x, torch.zeros(3, d1), c, rows2, cols2, d1, d2, 2.0)
            assert rel(y3, ry) < 1e-5, path
        y4 = spectral_linear(x, c, rows, cols, d1, d2, 3.0, path="gemm")  # another scaling: another key
        assert torch.allclose(y4, 1.5 * y3, atol=1e-5)


def test_delta_weight_cached_matches_definition():
    rows, cols = make_entries(9, 11, 20)
    c = torch.randn(20)
    want = delta_weight(c, rows, cols, 9, 11, 4.0)
    assert torch.equal(delta_weight_cached(c, rows, cols, 9, 11, 4.0), want)
    assert torch.equal(delta_weight_cached(c, rows, cols, 9, 11, 4.0, dtype=torch.bfloat16), want.bfloat16())


@pytest.mark.parametrize("path", FAST)
def test_autocast_cpu(path):
    d1, d2 = 16, 24
    rows, cols = make_entries(d1, d2, 30)
    x = torch.randn(8, d2, requires_grad=True)
    c = torch.randn(30, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = spectral_linear(x, c, rows, cols, d1, d2, 3.0, path=path)
    assert y.dtype == torch.bfloat16
    g = torch.randn(8, d1)
    y.float().backward(g)
    ry, rgx, rgc = reference(x.detach(), g.bfloat16(), c.detach(), rows, cols, d1, d2, 3.0)
    assert x.grad.dtype == torch.float32 and c.grad.dtype == torch.float32
    assert rel(y, ry) < 2e-2 and rel(x.grad, rgx) < 2e-2 and rel(c.grad, rgc) < 2e-2


@pytest.mark.parametrize("path", FAST)
def test_checkpointing(path):
    d1, d2 = 12, 10
    rows, cols = make_entries(d1, d2, 20)
    x0, c0 = torch.randn(4, d2), torch.randn(20)

    def grads(use_ckpt):
        x, c = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        fn = lambda x: spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path).tanh()  # noqa: E731
        y = checkpoint(fn, x, use_reentrant=False) if use_ckpt else fn(x)
        y.sum().backward()
        return x.grad, c.grad

    for a, b in zip(grads(True), grads(False)):
        assert torch.allclose(a, b, atol=1e-6)


@cuda
@pytest.mark.parametrize("path", ["dense", *FAST])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 64), (96, 80), (80, 96)])
def test_cuda_paths(path, dtype, shape):
    d1, d2 = shape
    rows, cols = make_entries(d1, d2, 200)
    rows_c, cols_c = rows.cuda(), cols.cuda()
    x, c, g = torch.randn(128, d2).to(dtype), torch.randn(200), torch.randn(128, d1).to(dtype)
    xr, cr = x.cuda().requires_grad_(), c.cuda().requires_grad_()
    y = spectral_linear(xr, cr, rows_c, cols_c, d1, d2, 3.0, path=path)
    y.backward(g.cuda())
    ry, rgx, rgc = reference(x, g, c, rows, cols, d1, d2, 3.0)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp32: cuBLAS / cuFFT reassociate; bf16: the contract's 1e-2
    for got, want in ((y, ry), (xr.grad, rgx), (cr.grad, rgc)):
        assert rel(got, want) < tol


@cuda
@pytest.mark.parametrize("path", ["dense", *FAST])
def test_cuda_self_conjugate_bins(path):
    """Entries on bins 0 and d/2 of each axis (where half-spectrum tricks special-case) on the GPU's libraries."""
    from kernel_ref import self_conjugate_entries

    for d1, d2 in [(64, 64), (96, 80)]:
        rows, cols = self_conjugate_entries(d1, d2)
        x, c, g = torch.randn(32, d2), torch.randn(rows.numel()), torch.randn(32, d1)
        xr, cr = x.cuda().requires_grad_(), c.cuda().requires_grad_()
        y = spectral_linear(xr, cr, rows.cuda(), cols.cuda(), d1, d2, 3.0, path=path)
        y.backward(g.cuda())
        ry, rgx, rgc = reference(x, g, c, rows, cols, d1, d2, 3.0)
        assert rel(y, ry) < 1e-4 and rel(xr.grad, rgx) < 1e-4 and rel(cr.grad, rgc) < 1e-4


def test_bases_follow_swapped_entry_storage():
    """``rows.data = other`` (no version bump) must not serve the old entries' bases."""
    d1, d2 = 10, 12
    rows, cols = make_entries(d1, d2, 15)
    c, x = torch.randn(15), torch.randn(3, d2)
    spectral_linear(x, c, rows, cols, d1, d2, 2.0, path="lowrank")
    rows2, cols2 = make_entries(d1, d2, 15, seed=5)
    rows.data, cols.data = rows2.clone(), cols2.clone()
    y = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path="lowrank")
    ry, _, _ = reference(x, torch.zeros(3, d1), c, rows2, cols2, d1, d2, 2.0)
    assert rel(y, ry) < 1e-5
