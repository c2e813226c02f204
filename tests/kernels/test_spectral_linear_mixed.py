"""``spectral_linear_mixed`` against a float64 loop over rows through :func:`fourierft.spectral.delta_weight`."""

from __future__ import annotations

import pytest
import torch
from kernel_ref import make_entries, rel

from fourierft.kernels import spectral_linear_mixed
from fourierft.spectral import delta_weight

SHAPES = [(8, 8), (16, 6), (6, 16), (15, 21), (1, 9), (9, 1)]  # square, tall, wide, non-power-of-two, one row/col
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference(x, spectra, row_adapter, rows, cols, d1, d2, scalings):
    """float64, row by row: y[b] = x[b] @ dW_a.T with dW_a = delta_weight(spectra[a]), zeros for a = -1."""
    out = []
    for b in range(x.shape[0]):
        a = int(row_adapter[b])
        if a < 0:
            out.append(torch.zeros(*x.shape[1:-1], d1, dtype=torch.float64))
            continue
        dw = delta_weight(spectra[a], rows, cols, d1, d2, float(scalings[a]), dtype=torch.float64)
        out.append(x[b].double() @ dw.T)
    return torch.stack(out)


def case(d1, d2, lead, k=3, seed=0, device="cpu"):
    torch.manual_seed(seed)
    n = max(1, min(12, d1 * d2 // 2))
    rows, cols = make_entries(d1, d2, n, seed)
    spectra = torch.randn(k, n)
    row_adapter = torch.tensor([(i + 1) % (k + 1) - 1 for i in range(lead[0])])  # 0, 1, .., K - 1, -1, 0, ..
    scalings = torch.tensor([3.0, 150.0, 0.5, 20.0][:k])
    x = torch.randn(*lead, d2)
    return x, spectra, row_adapter, rows.to(device), cols.to(device), scalings


def tolerance(dtype, t: torch.Tensor) -> float:
    # bf16 on a handful of elements: one rounding after a cancellation dominates the norm ratio
    return 5e-2 if dtype == torch.bfloat16 and t.numel() < 16 else TOL[dtype]


def check(d1, d2, lead, dtype, path="lowrank", device="cpu", grad=True):
    x, spectra, ra, rows, cols, scal = case(d1, d2, lead, device=device)
    x = x.to(dtype)
    # float64 reference and its gradients through autograd of the one definition
    x64 = x.double().requires_grad_()
    s64 = spectra.double().requires_grad_()
    want = reference(x64, s64, ra, rows.cpu(), cols.cpu(), d1, d2, scal)
    g = torch.randn_like(want)
    want.backward(g)
    xr = x.to(device).requires_grad_(grad)
    sr = spectra.to(device).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = spectral_linear_mixed(xr, sr, ra.to(device), rows, cols, d1, d2, scal, path=path)
    assert y.shape == (*lead, d1) and y.dtype == dtype
    assert rel(y, want) < tolerance(dtype, y)
    if grad:
        y.backward(g.to(device, dtype))
        assert rel(xr.grad, x64.grad) < tolerance(dtype, xr.grad)
        assert sr.grad.dtype == torch.float32 and rel(sr.grad, s64.grad) < max(tolerance(dtype, sr.grad), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(9,), (9, 4), (1,), (1, 3)])
def test_lowrank_matches_reference(dtype, shape, lead):
    check(*shape, lead, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(9,), (5, 3)])
def test_factored_matches_reference_at_inference(dtype, shape, lead):
    check(*shape, lead, dtype, path="factored", grad=False)


@pytest.mark.parametrize("grad", [True, False])
def test_auto(grad):
    check(15, 21, (6, 2), torch.float32, path="auto", grad=grad)


def test_mixed_equals_separate_calls():
    """One mixed call equals each adapter's rows run alone (the grouped alternative), and a -1 row is zero."""
    from fourierft.kernels import spectral_linear

    x, spectra, ra, rows, cols, scal = case(12, 10, (8, 3))
    y = spectral_linear_mixed(x, spectra, ra, rows, cols, 12, 10, scal)
    for b in range(8):
        a = int(ra[b])
        if a < 0:
            assert torch.equal(y[b], torch.zeros_like(y[b]))
        else:
            alone = spectral_linear(x[b], spectra[a], rows, cols, 12, 10, float(scal[a]), path="lowrank")
            torch.testing.assert_close(y[b], alone, rtol=1e-5, atol=1e-6)


def test_gradcheck():
    x, spectra, ra, rows, cols, scal = case(6, 5, (4, 2))
    x = x.double().requires_grad_()
    spectra = spectra.double().requires_grad_()
    fn = lambda x, s: spectral_linear_mixed(x, s, ra, rows, cols, 6, 5, scal)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, spectra))


def test_fp16_is_not_subnormal():
    """A LLaMA-sized 1 / (d1 d2) would be subnormal in fp16: the split scale keeps forward and backward accurate."""
    d1, d2, n = 64, 48, 200
    rows, cols = make_entries(d1, d2, n)
    x = torch.randn(16, 4, d2).half().requires_grad_()
    spectra = torch.randn(2, n, requires_grad=True)
    ra = torch.tensor([0, 1] * 8)
    scal = torch.tensor([1e-2, 2e-2])  # scale ~ 3e-6, like 300 / (4096 * 11008)
    y = spectral_linear_mixed(x, spectra, ra, rows, cols, d1, d2, scal)
    x64, s64 = x.detach().double().requires_grad_(), spectra.detach().double().requires_grad_()
    want = reference(x64, s64, ra, rows, cols, d1, d2, scal)
    g = torch.randn_like(want)
    want.backward(g)
    y.backward(g.half())
    assert rel(y, want) < 2e-3 and rel(x.grad, x64.grad) < 2e-3 and rel(spectra.grad, s64.grad) < 2e-3


@pytest.mark.parametrize(("change", "match"), [
    (lambda a: {**a, "spectra": a["spectra"][0]}, "spectra must be"),
    (lambda a: {**a, "spectra": a["spectra"][:, :-1]}, "spectra must be"),
    (lambda a: {**a, "x": a["x"][..., :-1]}, "x must be"),
    (lambda a: {**a, "row_adapter": a["row_adapter"][:-1]}, "row_adapter must be"),
    (lambda a: {**a, "row_adapter": a["row_adapter"].float()}, "row_adapter must be"),
    (lambda a: {**a, "row_adapter": a["row_adapter"] + 5}, r"must lie in \[-1, 3\)"),
    (lambda a: {**a, "row_adapter": a["row_adapter"] - 5}, r"must lie in \[-1, 3\)"),
    (lambda a: {**a, "scalings": a["scalings"][:2]}, "one value per adapter"),
    (lambda a: {**a, "path": "gemm"}, "allowed: auto, lowrank, factored"),
])
def test_bad_inputs_are_named(change, match):
    x, spectra, ra, rows, cols, scal = case(8, 6, (5,))
    args = {"x": x, "spectra": spectra, "row_adapter": ra, "rows": rows, "cols": cols, "out_features": 8,
            "in_features": 6, "scalings": scal, "path": "lowrank"}
    with pytest.raises(ValueError, match=match):
        spectral_linear_mixed(**change(args))


def test_factored_refuses_to_train():
    x, spectra, ra, rows, cols, scal = case(8, 6, (5,))
    with pytest.raises(ValueError, match="inference-only"):
        spectral_linear_mixed(x, spectra.requires_grad_(), ra, rows, cols, 8, 6, scal, path="factored")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 64), (96, 80), (80, 96)])
@pytest.mark.parametrize("path", ["lowrank", "factored"])
def test_cuda(dtype, shape, path):
    check(*shape, (9, 5), dtype, path=path, device="cuda", grad=path == "lowrank")


def test_compiles_in_one_graph():
    torch._dynamo.reset()
    x, spectra, ra, rows, cols, scal = case(12, 10, (6, 3))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = torch.compile(lambda x, s: spectral_linear_mixed(x, s, ra, rows, cols, 12, 10, scal), backend=backend,
                       fullgraph=True)
    s = spectra.clone().requires_grad_()
    for _ in range(3):
        y = fn(x, s)
        y.sum().backward()
    torch.testing.assert_close(y, spectral_linear_mixed(x, spectra, ra, rows, cols, 12, 10, scal))
    assert len(graphs) == 1


def test_auto_path_takes_lowrank_for_few_rows_and_to_train():
    """``auto``: factored only where its flop saving over the call's rows outweighs its extra launches."""
    from fourierft.kernels.dispatch import flop_costs
    from fourierft.kernels.mixed import _FLOPS_PER_LAUNCH, mixed_path

    costs = flop_costs(4096, 4096, 3000, device_type="cuda", training=False)
    assert costs["factored"] < costs["lowrank"]
    even = 4 * _FLOPS_PER_LAUNCH["cuda"] / (costs["lowrank"] - costs["factored"])  # rows where the two break even
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=64) == "lowrank"  # one decoding step
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=int(even)) == "lowrank"
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=int(even) + 1) == "factored"
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", True, tokens=16384) == "lowrank"
    assert mixed_path("factored", 4096, 4096, 3000, "cuda", False, tokens=1) == "factored"  # forced: kept
    with pytest.raises(ValueError, match="inference-only"):
        mixed_path("factored", 4096, 4096, 3000, "cuda", True)


def test_auto_path_follows_one_adapters_measured_times():
    """Measured times of one adapter's paths on the layer's key decide between lowrank and factored (gemm, which
    has no mixed form, is passed over); a gradient or a forced path still decides first."""
    from fourierft.kernels.mixed import mixed_path

    timed = {"lowrank": 2e-4, "factored": 1e-4, "gemm": 5e-5}
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=64, measured=timed) == "factored"
    timed = {"lowrank": 1e-4, "factored": 2e-4}
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=16384, measured=timed) == "lowrank"
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", False, tokens=16384, measured={"gemm": 1e-5}) == "factored"
    assert mixed_path("auto", 4096, 4096, 3000, "cuda", True, tokens=16384, measured={"factored": 1e-5}) == "lowrank"
    assert mixed_path("lowrank", 4096, 4096, 3000, "cuda", False, measured={"factored": 1e-5}) == "lowrank"
