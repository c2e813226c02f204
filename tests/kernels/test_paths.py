"""Every ``spectral_linear`` path against a float64 reference: forward, input grad, spectrum grad.

The reference is independent of the kernels: ``dW`` from :func:`delta_weight_cos` (the cosine sum in float64) and
the spectrum gradient from the analytic derivative ``dL/dc_k = scale * sum_jl G_jl cos(2 pi (j u_k/d1 + l v_k/d2))``.
Half precision is judged on the adapter's contribution (its own output), relative to float64.
"""

from __future__ import annotations

import pytest
import torch
from kernel_ref import make_entries, reference, rel, self_conjugate_entries

from fourierft.kernels import PATHS, spectral_linear

FAST = ("gemm", "lowrank", "factored")
ALL = ("dense", *FAST)
# (d1, d2): square, tall, wide, odd, prime, power of two, a 1-row / 1-column edge
SHAPES = [(8, 8), (16, 12), (12, 16), (15, 21), (33, 7), (1, 9), (9, 1), (32, 64)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def run_path(path, x, c, rows, cols, d1, d2, scaling, g, **kw):
    xr = x.clone().requires_grad_()
    cr = c.clone().requires_grad_()
    y = spectral_linear(xr, cr, rows, cols, d1, d2, scaling, path=path, **kw)
    y.backward(g)
    return y, xr.grad, cr.grad


def check(path, d1, d2, n, dtype, rows=None, cols=None, lead=(2, 3), seed=0):
    torch.manual_seed(seed)
    if rows is None:
        rows, cols = make_entries(d1, d2, n, seed)
    c = torch.randn(rows.numel())
    x = torch.randn(*lead, d2).to(dtype)
    g = torch.randn(*lead, d1).to(dtype)
    y, gx, gc = run_path(path, x, c, rows, cols, d1, d2, 3.0, g)
    ry, rgx, rgc = reference(x, g, c, rows, cols, d1, d2, 3.0)
    assert y.dtype == dtype and y.shape == (*lead, d1)
    assert gx.dtype == dtype and gc.dtype == torch.float32
    tol = TOL[dtype] if path != "dense" or dtype != torch.float64 else 1e-5  # dense is float32 inside (PEFT's)
    for name, got, want in (("y", y, ry), ("grad_x", gx, rgx), ("grad_c", gc, rgc)):
        err = rel(got, want)
        if name == "grad_c":
            tol = max(tol, 1e-6)  # the spectrum (and so its grad) is float32 by contract
        assert err < tol, f"{path} {d1}x{d2} n={n} {dtype}: {name} rel err {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nfrac", [0.1, 1.0])
def test_grid_float64(path, shape, nfrac):
    d1, d2 = shape
    check(path, d1, d2, max(1, int(nfrac * d1 * d2)), torch.float64)


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(16, 12), (15, 21), (64, 48)])
def test_grid_dtypes(path, dtype, shape):
    d1, d2 = shape
    check(path, d1, d2, min(40, d1 * d2 // 2), dtype, lead=(64,))


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("shape", [(8, 8), (9, 7), (10, 6)])
def test_self_conjugate_bins(path, shape):
    rows, cols = self_conjugate_entries(*shape)
    check(path, *shape, rows.numel(), torch.float64, rows=rows, cols=cols)


@pytest.mark.parametrize("path", FAST)
@pytest.mark.parametrize("shape", [(6, 5), (4, 8)])
def test_gradcheck(path, shape):
    d1, d2 = shape
    rows, cols = make_entries(d1, d2, 9)
    x = torch.randn(3, d2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(9, dtype=torch.float64, requires_grad=True)
    fn = lambda x, c: spectral_linear(x, c, rows, cols, d1, d2, 2.5, path=path)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, c))


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_base_is_added(path, dtype):
    """``base=`` returns ``base + x @ dW.T`` and passes the upstream grad to ``base`` unchanged."""
    d1, d2 = 12, 10
    rows, cols = make_entries(d1, d2, 20)
    x = torch.randn(5, d2).to(dtype)
    c = torch.randn(20)
    base = torch.randn(5, d1).to(dtype).requires_grad_()
    g = torch.randn(5, d1).to(dtype)
    y = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path, base=base)
    y.backward(g)
    ry, _, _ = reference(x, g, c, rows, cols, d1, d2, 2.0)
    assert y.dtype == dtype
    assert rel(y.double() - base.detach().double(), ry) < (1e-5 if dtype == torch.float64 else 2e-2)
    assert torch.equal(base.grad, g)


def test_unknown_path_names_the_allowed_ones():
    rows, cols = make_entries(4, 4, 3)
    with pytest.raises(ValueError, match="allowed: auto, dense, gemm, lowrank, factored, fused"):
        spectral_linear(torch.randn(2, 4), torch.randn(3), rows, cols, 4, 4, 1.0, path="nope")
    assert PATHS == ("auto", "dense", "gemm", "lowrank", "factored", "fused")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_path_off_cuda_is_refused_with_the_alternative(dtype):
    """CPU tensors (any dtype) are refused on every machine, before anything runs."""
    rows, cols = make_entries(32, 32, 6)
    x, c = torch.randn(3, 32, dtype=dtype), torch.randn(6, requires_grad=True)
    with pytest.raises(ValueError, match="compute path 'fused' cannot serve this layer: .*use 'factored'"):
        spectral_linear(x, c, rows, cols, 32, 32, 1.0, path="fused")
    assert c.grad is None


def test_spectrum_grad_only_and_x_grad_only():
    """Each gradient is computed alone when only one input requires it (needs_input_grad branches)."""
    rows, cols = make_entries(6, 8, 10)
    for path in FAST:
        c = torch.randn(10, requires_grad=True)
        spectral_linear(torch.randn(3, 8), c, rows, cols, 6, 8, 1.0, path=path).sum().backward()
        assert c.grad is not None and c.grad.shape == (10,)
        x = torch.randn(3, 8, requires_grad=True)
        spectral_linear(x, torch.randn(10), rows, cols, 6, 8, 1.0, path=path).sum().backward()
        assert x.grad is not None and x.grad.shape == (3, 8)


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_base_is_added_at_inference(path, dtype):
    """Under no_grad (the gemm path's cached, fused branch) ``base=`` still gives ``base + x @ dW.T``."""
    d1, d2 = 9, 14
    rows, cols = make_entries(d1, d2, 25)
    x, c, base = torch.randn(2, 3, d2).to(dtype), torch.randn(25), torch.randn(2, 3, d1).to(dtype)
    with torch.no_grad():
        y = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path, base=base)
    ry, _, _ = reference(x, torch.zeros(2, 3, d1), c, rows, cols, d1, d2, 2.0)
    assert y.shape == (2, 3, d1) and y.dtype == dtype
    assert rel(y.double() - base.double(), ry) < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_consumed_base_takes_the_sum_in_place_only_outside_autograd(path, dtype):
    """``consume_base=True`` gives the same values as out of place; under no_grad the fused paths write the sum into
    ``base`` itself (no copy), under autograd ``base`` is left untouched."""
    d1, d2 = 16, 24
    rows, cols = make_entries(d1, d2, 30)
    x, c, base = torch.randn(2, 3, d2).to(dtype), torch.randn(30), torch.randn(2, 3, d1).to(dtype)
    with torch.no_grad():
        want = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path, base=base)
        scratch = base.clone()
        got = spectral_linear(x, c, rows, cols, d1, d2, 2.0, path=path, base=scratch, consume_base=True)
    assert torch.equal(got, want)
    assert (got.data_ptr() == scratch.data_ptr()) == (path != "dense")  # dense adds afterwards, out of place
    kept = base.clone()
    y = spectral_linear(x, c.requires_grad_(), rows, cols, d1, d2, 2.0, path=path, base=kept, consume_base=True)
    assert torch.equal(kept, base) and y.data_ptr() != kept.data_ptr()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5  # on the adapter's contribution, as everywhere here
    assert rel(y.detach().double() - base.double(), want.double() - base.double()) < tol


@pytest.mark.parametrize("path", FAST)
def test_fp16_tiny_scale(path):
    """LLaMA-sized layers have scale = scaling / (d1 d2) ~ 7e-6: the scale must never sit in an fp16 operand
    (subnormal: 5e-2 error seen before the GEMM-alpha fix). Emulated on a small layer with a small scaling."""
    d1, d2, n = 64, 48, 200
    rows, cols = make_entries(d1, d2, n)
    x, g, c = torch.randn(256, d2).half(), torch.randn(256, d1).half(), torch.randn(n)
    y, gx, gc = run_path(path, x, c, rows, cols, d1, d2, 1e-2, g)  # scale 3.3e-6
    ry, rgx, rgc = reference(x, g, c, rows, cols, d1, d2, 1e-2)
    assert rel(y, ry) < 2e-3 and rel(gx, rgx) < 2e-3 and rel(gc, rgc) < 2e-3


@pytest.mark.parametrize("path", ALL)
def test_empty_batch(path):
    """Zero rows (e.g. no row of a mixed batch uses this adapter): an empty result and zero gradients."""
    rows, cols = make_entries(6, 8, 5)
    x = torch.randn(0, 8, requires_grad=True)
    c = torch.randn(5, requires_grad=True)
    y = spectral_linear(x, c, rows, cols, 6, 8, 1.0, path=path, base=torch.zeros(0, 6))
    assert y.shape == (0, 6)
    y.sum().backward()
    assert torch.equal(c.grad, torch.zeros(5)) and x.grad.shape == (0, 8)


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("grad", [True, False])
def test_adapted_linear(path, grad):
    """``adapted_linear`` = the frozen ``nn.Linear`` plus ``x @ dW.T``; grads reach x and the spectrum only."""
    from fourierft.kernels import adapted_linear

    d1, d2 = 14, 9
    rows, cols = make_entries(d1, d2, 20)
    lin = torch.nn.Linear(d2, d1).double().requires_grad_(False)
    x = torch.randn(2, 5, d2, dtype=torch.float64, requires_grad=grad)
    c = torch.randn(20, requires_grad=grad)
    g = torch.randn(2, 5, d1, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        y = adapted_linear(x, lin.weight, lin.bias, c, rows, cols, d1, d2, 2.0, path)
    ry, rgx, rgc = reference(x.detach(), g, c.detach(), rows, cols, d1, d2, 2.0)
    tol = 1e-5 if path == "dense" else 1e-10
    assert y.shape == (2, 5, d1) and rel(y - lin(x.detach()), ry) < tol
    if grad:
        y.backward(g)
        assert rel(x.grad, rgx + g @ lin.weight) < tol and rel(c.grad, rgc) < max(tol, 1e-6)


def _graph(y: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``y``."""
    seen, todo, names = set(), [y.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        todo.extend(f for f, _ in node.next_functions)
    return names


INSIDE = ("lowrank", "factored")  # the CPU's paths whose autograd function runs the frozen layer itself, any dtype


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_adapted_linear_runs_the_frozen_layer_inside_the_adapter(path, dtype, bias, x_grad):
    """Training through lowrank/factored: one autograd node for the whole layer (no separate frozen matmul whose
    input gradient autograd adds afterwards), same values as the frozen layer plus the adapter computed apart."""
    from fourierft.kernels import adapted_linear

    d1, d2, n = 24, 40, 30
    rows, cols = make_entries(d1, d2, n)
    torch.manual_seed(1)
    lin = torch.nn.Linear(d2, d1, bias=bias).to(dtype).requires_grad_(False)
    x0, g, c0 = torch.randn(3, 7, d2).to(dtype), torch.randn(3, 7, d1).to(dtype), torch.randn(n)
    x, c = x0.clone().requires_grad_(x_grad), c0.clone().requires_grad_()
    y = adapted_linear(x, lin.weight, lin.bias, c, rows, cols, d1, d2, 50.0, path)
    y.backward(g)
    names = _graph(y)
    frozen_nodes = [m for m in names if m.startswith(("Mm", "Addmm", "Linear"))]  # the frozen matmul apart
    if path in INSIDE or (path == "gemm" and dtype == torch.float32):  # gemm: x @ (W + dW).T in fp32 and fp64
        assert frozen_nodes == [], names
    elif x_grad:
        assert frozen_nodes, names
    # apart: the frozen output and its input gradient computed by autograd, the adapter by spectral_linear
    xa, ca = x0.clone().requires_grad_(x_grad), c0.clone().requires_grad_()
    ya = lin(xa) + spectral_linear(xa, ca, rows, cols, d1, d2, 50.0, path=path)
    ya.backward(g)
    ry, rgx, rgc = reference(x0, g, c0, rows, cols, d1, d2, 50.0)
    tol = TOL[dtype]
    base = lin(x0)  # judged on the adapter's part, against float64
    assert rel(y - base, ry) < 2 * tol and rel(c.grad, rgc) < max(tol, 1e-6)
    assert rel(y, ya) < tol
    if x_grad:
        assert rel(x.grad.double() - (g @ lin.weight).double(), rgx) < 4 * tol
        assert rel(x.grad, xa.grad) < tol
    else:
        assert x.grad is None


@pytest.mark.parametrize("path", INSIDE)
def test_adapted_linear_keeps_the_frozen_layer_apart_where_it_must(path):
    """A weight that trains gets its gradient (autograd's own frozen matmul); autocast runs the frozen layer as
    ``F.linear`` does under autocast; inference computes no graph."""
    from fourierft.kernels import adapted_linear

    d1, d2, n = 12, 16, 10
    rows, cols = make_entries(d1, d2, n)
    lin = torch.nn.Linear(d2, d1)
    x, c = torch.randn(5, d2), torch.randn(n, requires_grad=True)
    y = adapted_linear(x, lin.weight, lin.bias, c, rows, cols, d1, d2, 5.0, path)
    y.sum().backward()
    assert lin.weight.grad is not None and torch.allclose(lin.weight.grad, torch.ones(5, d1).T @ x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = adapted_linear(x, lin.weight.detach(), lin.bias.detach(), c, rows, cols, d1, d2, 5.0, path)
        assert ya.dtype == torch.bfloat16 and torch.equal(
            ya, spectral_linear(x, c, rows, cols, d1, d2, 5.0, path=path, base=lin(x)))
    with torch.inference_mode():
        yi = adapted_linear(x, lin.weight, lin.bias, c, rows, cols, d1, d2, 5.0, path)
    assert yi.grad_fn is None and rel(yi, y) < 1e-6


def test_gemm_training_in_float32_sums_w_and_dw_without_losing_the_adapter():
    """fp32 training on the gemm path runs ``x @ (W + dW).T``: with dW a thousandth of W, what the adapter adds
    (the output minus the frozen output) is as accurate against float64 as when the two matmuls run apart."""
    from fourierft.kernels import adapted_linear

    torch.manual_seed(3)
    d1, d2, n = 96, 128, 60
    rows, cols = make_entries(d1, d2, n)
    w = torch.randn(d1, d2)
    x, c, g = torch.randn(32, d2), torch.randn(n), torch.randn(32, d1)
    ry, rgx, _ = reference(x, g, c, rows, cols, d1, d2, 1.0)
    assert 3e-4 < ry.norm() / (x.double() @ w.double().T).norm() < 3e-3  # dW x is about 1e-3 of W x
    frozen = x.double() @ w.double().T
    errors = {}
    for how in ("summed", "apart"):
        xs, cs = x.clone().requires_grad_(), c.clone().requires_grad_()
        if how == "summed":
            y = adapted_linear(xs, w, None, cs, rows, cols, d1, d2, 1.0, "gemm")
        else:
            y = xs @ w.T + spectral_linear(xs, cs, rows, cols, d1, d2, 1.0, path="gemm")
        y.backward(g)
        errors[how] = (rel(y.double() - frozen, ry), rel(xs.grad.double() - g.double() @ w.double(), rgx))
    assert errors["summed"][0] < 4 * errors["apart"][0] + 1e-6 and errors["summed"][1] < 4 * errors["apart"][1] + 1e-6
