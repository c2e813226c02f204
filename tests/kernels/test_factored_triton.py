"""The fused Triton kernels of the factored path against the DFT sums in float64, and end to end against the float64
reference of ``x @ dW.T`` and its gradients.

On a CUDA machine the compiled kernels run; on the CPU the same kernels run in Triton's interpreter (the names in
``factored_triton`` are rebound to interpreted copies here), so CI checks them without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from fourierft.kernels import factored_plan, spectral_linear
from fourierft.kernels.factored import make_plan

from kernel_ref import interpret, make_entries, reference, rel
from test_factored import dft_sums

triton = pytest.importorskip("triton")
ft = pytest.importorskip("fourierft.kernels.factored_triton")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.bfloat16]
# (d, frequencies): square-ish splits, a non-power-of-two block (384 = 16 x 24), a prime (N1 = 1), many slots per
# group (m > 16) in two blocks of groups, a group count that is no power of two (48), a repeated frequency
CASES = {
    "256": (256, torch.randperm(256, generator=torch.Generator().manual_seed(1))[:40]),
    "384": (384, torch.randint(0, 384, (70,), generator=torch.Generator().manual_seed(2))),
    "prime": (61, torch.tensor([0, 1, 7, 30, 31, 60])),
    "crowded": (512, torch.randint(0, 512, (600,), generator=torch.Generator().manual_seed(3))),  # 32 x 16
    "48-groups": (1536, torch.randint(0, 1536, (900,), generator=torch.Generator().manual_seed(4))),  # 48 x 32
    "repeat": (96, torch.tensor([5, 5, 17, 48, 0, 95])),
}
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    """The compiled kernels on CUDA; on the CPU interpreted copies (Triton's interpreter, numpy underneath)."""
    if DEV == "cuda":
        return
    interpret(monkeypatch, ft, "_analysis_kernel", "_synthesis_kernel")
    # CPU tensors go to the interpreter; the dtype and shared-memory rules stay
    monkeypatch.setattr(ft, "supports", lambda x, *plans: x.dtype in ft.DTYPES and ft.fits(*plans))


# the plans the fused path runs (one group per f1) on every case; the paired plans of the PyTorch path (the kernels
# read only the plan's matrices) on two: a group count that is no power of two, and a repeated frequency
GRID = [(case, False, rows) for case in CASES for rows in (1, 37)] + [("384", True, 37), ("repeat", True, 37)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case", "half", "rows"), GRID)
def test_analysis_and_synthesis_match_the_sums(case, half, rows, dtype):
    d, f = CASES[case]
    n = f.numel()
    p = make_plan(f.to(DEV), d, dtype, half)
    cos, sin = dft_sums(f, d)
    x = torch.randn(rows, d, dtype=torch.float64)
    got = ft.analysis(x.to(DEV, dtype), p, n)  # (2n, T) compact
    assert got.shape == (2 * n, rows) and got.dtype == dtype
    want = torch.cat([cos @ x.T, sin @ x.T])
    assert rel(got, want) < TOL[dtype]

    z = torch.randn(2 * n, rows, dtype=torch.float64)
    c = torch.randn(n, dtype=torch.float64)
    base = torch.randn(rows, d, dtype=torch.float64)
    want = 0.5 * ((c[:, None] * z[:n]).T @ cos - (c[:, None] * z[n:]).T @ sin)  # Re sum_k c_k Z_k e^{2 pi i f_k i / d}
    args = (z.to(DEV, dtype), p, c.to(DEV, torch.float32), 0.5)
    assert rel(ft.synthesis(*args), want) < TOL[dtype]
    b = base.to(DEV, dtype)
    assert rel(ft.synthesis(*args, b) - b.double(), want) < TOL[dtype]
    out = ft.synthesis(*args, b, into_base=True)
    assert out.data_ptr() == b.data_ptr() and rel(b.double().cpu() - base, want) < TOL[dtype]


def test_padding_slots_are_never_written_or_read(monkeypatch):
    monkeypatch.setattr(factored_plan, "split_cost", lambda d, n, *_: (16, 0.0))
    d, f = 96, torch.tensor([0, 16, 32, 48, 64, 80, 3])  # crowds group 0 of a 16 x 6 split: padding elsewhere
    p = make_plan(f.to(DEV), d, torch.float16, half=False)
    assert (p.compact < 0).any()
    x = torch.randn(3, d, dtype=torch.float16, device=DEV)
    out = torch.full((2 * f.numel(), 3), float("nan"), dtype=torch.float16, device=DEV)
    out.copy_(ft.analysis(x, p, f.numel()))
    assert torch.isfinite(out).all()  # every compact row written, nothing else
    y = ft.synthesis(out, p, torch.ones(f.numel(), device=DEV), 1.0)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("d1", "d2", "n", "rows"), [(256, 256, 40, 20), (384, 128, 64, 5), (96, 512, 30, 1)])
def test_factored_layer_with_the_kernels_matches_float64(d1, d2, n, rows, dtype):
    torch.manual_seed(0)
    r, c = make_entries(d1, d2, n)
    coef = torch.randn(n) * 3
    x = torch.randn(rows, d2)
    g = torch.randn(rows, d1)
    y_ref, gx_ref, gc_ref = reference(x, g, coef, r, c, d1, d2, 150.0)
    xs = x.to(DEV, dtype).requires_grad_()
    cs = coef.to(DEV).requires_grad_()
    base = torch.randn(rows, d1, device=DEV).to(dtype)
    y = spectral_linear(xs, cs, r.to(DEV), c.to(DEV), d1, d2, 150.0, path="fused", base=base)
    y.backward(g.to(DEV, dtype))
    assert rel(y.double() - base.double(), y_ref) < TOL[dtype]
    assert rel(xs.grad, gx_ref) < TOL[dtype]
    assert rel(cs.grad, gc_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_path_runs_the_frozen_layer_inside(dtype):
    """``adapted_linear`` on the fused path: the frozen matmul and its input gradient inside the adapter's function
    (the synthesis kernels add into them), judged on the adapter's part against float64."""
    from fourierft.kernels import adapted_linear

    torch.manual_seed(0)
    d1, d2, n, rows = 384, 128, 64, 5
    r, c = make_entries(d1, d2, n)
    coef, x, g = torch.randn(n) * 3, torch.randn(rows, d2), torch.randn(rows, d1)
    y_ref, gx_ref, gc_ref = reference(x, g, coef, r, c, d1, d2, 150.0)
    w = torch.randn(d1, d2, device=DEV).to(dtype) / d2 ** 0.5
    xs, cs = x.to(DEV, dtype).requires_grad_(), coef.to(DEV).requires_grad_()
    y = adapted_linear(xs, w, None, cs, r.to(DEV), c.to(DEV), d1, d2, 150.0, "fused")
    node = y.grad_fn.next_functions[0][0]  # behind the reshape: one node, the frozen matmul ran inside it
    assert node.name() == "FactoredSpectralLinearBackward"
    assert not any(f is not None and "Mm" in f.name() for f, _ in node.next_functions)
    y.backward(g.to(DEV, dtype))
    frozen = x.to(DEV, dtype) @ w.T
    assert rel(y.double() - frozen.double(), y_ref) < 2 * TOL[dtype]
    assert rel(xs.grad.double() - (g.to(DEV, dtype) @ w).double(), gx_ref) < 2 * TOL[dtype]
    assert rel(cs.grad, gc_ref) < TOL[dtype]


def test_fused_path_under_compile_is_one_graph_equal_to_eager():
    torch._dynamo.reset()
    d1, d2, n = 256, 128, 40
    r, c = (t.to(DEV) for t in make_entries(d1, d2, n))
    w = torch.randn(d1, d2, device=DEV).to(torch.bfloat16) * 0.05

    def layer(x, coef):
        return spectral_linear(x, coef, r, c, d1, d2, 80.0, path="fused", base=x @ w.T)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(6, d2, device=DEV).to(torch.bfloat16)
    results = []
    for fn in (layer, compiled, compiled):
        xs, cs = x.clone().requires_grad_(), torch.linspace(-2, 2, n, device=DEV).requires_grad_()
        y = fn(xs, cs)
        y.float().square().sum().backward()
        results.append((y, xs.grad, cs.grad))
    assert len(graphs) == 1
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)  # the op's body is the eager path's


def test_too_many_entries_per_group_are_refused(monkeypatch):
    monkeypatch.setattr(factored_plan, "split_cost", lambda d, n, *_: (16, 0.0))
    d = 256
    crowded = torch.arange(0, d, 16).repeat(5)  # 80 entries, all in group 0: 2m = 160 slots > MAX_SLOTS
    assert not ft.fits(make_plan(crowded, d, torch.float16, half=False))
    assert ft.fits(make_plan(torch.arange(80), d, torch.float16, half=False))  # 5 per group
    rows = torch.zeros(80, dtype=torch.int64, device=DEV)
    x = torch.randn(2, d, device=DEV).to(torch.float16)
    with pytest.raises(ValueError, match="compute path 'fused' cannot serve this layer"):
        spectral_linear(x, torch.randn(80, device=DEV), rows, crowded.to(DEV), 8, d, 1.0, path="fused")
