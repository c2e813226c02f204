"""The custom ops that carry lowrank and factored through ``torch.compile``: registration checked by PyTorch's
``opcheck`` (schema, fake shapes, autograd), values and gradients equal to the eager paths, gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from kernel_ref import make_entries, reference, rel

from fourierft.kernels import spectral_linear
from fourierft.kernels.opaque import opaque_linear, spectral_backward, spectral_forward

SHAPES = [(12, 16), (15, 21), (1, 9), (32, 64)]


@pytest.mark.parametrize("path", ["lowrank", "factored"])
@pytest.mark.parametrize("d1,d2", SHAPES)
@pytest.mark.parametrize("with_base", [False, True])
def test_opcheck(path, d1, d2, with_base):
    n = min(20, d1 * d2 // 2)
    rows, cols = make_entries(d1, d2, n)
    x = torch.randn(5, d2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, dtype=torch.float64, requires_grad=True)
    base = torch.randn(5, d1, dtype=torch.float64, requires_grad=True) if with_base else None
    torch.library.opcheck(spectral_forward, (x, c, rows, cols, d1, d2, 3.0, path, base))
    saved = spectral_forward(x.detach(), c.detach(), rows, cols, d1, d2, 3.0, path, None)[1]
    g = torch.randn(5, d1, dtype=torch.float64)
    for need_x, need_c in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(spectral_backward, (g, saved, c.detach(), rows, cols, d1, d2, 3.0, path, need_x, need_c))


@pytest.mark.parametrize("path", ["lowrank", "factored"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_equals_eager_path(path, dtype):
    """Same functions inside: the op and the eager autograd.Function agree to the bit (output, both gradients)."""
    d1, d2, n = 24, 40, 50
    rows, cols = make_entries(d1, d2, n)
    x0, c0 = torch.randn(2, 3, d2).to(dtype), torch.randn(n)
    base, g = torch.randn(2, 3, d1).to(dtype), torch.randn(2, 3, d1).to(dtype)
    out = []
    for fn in (lambda x, c: spectral_linear(x, c, rows, cols, d1, d2, 5.0, path=path, base=base),
               lambda x, c: opaque_linear(path, x, c, rows, cols, d1, d2, 5.0, base)):
        x, c = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        y = fn(x, c)
        y.backward(g)
        out.append((y.detach(), x.grad, c.grad))
    for a, b in zip(*out):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["lowrank", "factored"])
def test_op_against_float64_reference(path):
    d1, d2, n = 15, 21, 30
    rows, cols = make_entries(d1, d2, n)
    x = torch.randn(4, d2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, d1, dtype=torch.float64)
    y = opaque_linear(path, x, c, rows, cols, d1, d2, 2.5)
    y.backward(g)
    ry, rgx, rgc = reference(x.detach(), g, c.detach(), rows, cols, d1, d2, 2.5)
    assert rel(y.detach(), ry) < 1e-10 and rel(x.grad, rgx) < 1e-10 and rel(c.grad, rgc) < 1e-10
    assert torch.autograd.gradcheck(lambda x, c: opaque_linear(path, x, c, rows, cols, d1, d2, 2.5), (x, c))
