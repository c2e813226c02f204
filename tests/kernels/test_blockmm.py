"""Stage 1 of the factored transforms, ``out[t] = alpha L @ R[t] + base[t]``: the Triton kernel and the cuBLAS
reference against float64 einsum, over shapes the plans produce (square, non-power-of-two, one token, strided).

On a CUDA machine the compiled kernel runs; on the CPU the same kernel runs in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from fourierft.kernels import blockmm as bm

from kernel_ref import interpret, rel

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-5}
# (T, M, K, N): 4096 = 64 x 64's analysis, one token, 11008 = 32 x 344 (N no power of two), odd M and K (43),
# a tall L (M > K)
SHAPES = [(37, 64, 64, 64), (1, 16, 16, 16), (5, 32, 32, 344), (9, 43, 43, 40), (6, 96, 24, 24)]


@pytest.fixture
def kernel(monkeypatch):
    """The compiled kernel on CUDA; on the CPU an interpreted copy, taken for CPU tensors too (and for rows wider
    than MAX_N, which it computes as well)."""
    if DEV != "cuda":
        pytest.importorskip("triton")
        if bm.triton is None:
            pytest.skip("Triton's language module is missing")
        interpret(monkeypatch, bm, "_blockmm_kernel")
        monkeypatch.setattr(bm, "supports", lambda l, r, base=None: r.dtype in bm.DTYPES and max(l.shape) <= bm.MAX_DIM)


def operands(t, m, k, n, dtype, strided):
    g = torch.Generator().manual_seed(t * 1000 + m + k + n)
    l = torch.randn(m, k, generator=g, dtype=torch.float64)
    r = torch.randn(t, k, n, generator=g, dtype=torch.float64)
    base = torch.randn(t, m, n, generator=g, dtype=torch.float64)
    rd = r.to(DEV, dtype)
    if strided:  # R[t] rows k apart by T N, as synthesis lays out its stage-2 result
        rd = rd.transpose(0, 1).contiguous().transpose(0, 1)
    return l, r, base, l.to(DEV, dtype), rd


def want(l, r, alpha, base=None):
    out = alpha * torch.einsum("mk,tkn->tmn", l, r)
    return out if base is None else out + base


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_float64(kernel, shape, strided, dtype):
    l, r, base, ld, rd = operands(*shape, dtype, strided)
    got = bm.blockmm(ld, rd, 0.25)
    assert got.shape == (shape[0], shape[1], shape[3]) and got.dtype == dtype
    assert rel(got, want(l, r, 0.25)) < TOL[dtype]
    b = base.to(DEV, dtype)
    assert rel(bm.blockmm(ld, rd, 0.25, b), want(l, r, 0.25, b.double().cpu())) < TOL[dtype]
    expect = want(l, r, 0.25, b.double().cpu())
    out = bm.blockmm(ld, rd, 0.25, b, out=b)  # in place: the frozen output takes the sum
    assert out.data_ptr() == b.data_ptr() and rel(b, expect) < TOL[dtype]


@pytest.mark.parametrize("path", ["kernel", "reference"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rows_give_the_blocks_result_as_rows(request, path, shape):
    """``R`` given as its rows ``(T, K N)``: the same numbers as the blocks ``(T, K, N)``, as rows ``(T, M N)``,
    with and without ``base``, and written into ``base`` itself with ``out=base``."""
    if path == "kernel":
        request.getfixturevalue("kernel")
    else:  # cuBLAS' batched GEMM (on the CPU, torch's), which the rows reach through views
        request.getfixturevalue("monkeypatch").setattr(bm, "supports", lambda *a, **k: False)
    t, m, k, n = shape
    l, r, base, ld, rd = operands(t, m, k, n, torch.bfloat16, strided=False)
    rows, b = rd.reshape(t, k * n), base.to(DEV, torch.bfloat16)
    got = bm.blockmm(ld, rows, 0.25)
    assert got.shape == (t, m * n) and torch.equal(got, bm.blockmm(ld, rd, 0.25).reshape(t, m * n))
    with_base = bm.blockmm(ld, rows, 0.25, b.reshape(t, m * n))
    assert torch.equal(with_base, bm.blockmm(ld, rd, 0.25, b).reshape(t, m * n))
    b_rows = b.reshape(t, m * n).clone()
    out = bm.blockmm(ld, rows, 0.25, b_rows, out=b_rows)
    assert out.data_ptr() == b_rows.data_ptr() and torch.equal(b_rows, with_base)
    assert rel(got.view(t, m, n), want(l, r, 0.25)) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_float64(dtype):
    l, r, base, ld, rd = operands(7, 24, 32, 40, dtype, strided=True)
    assert rel(bm.reference(ld, rd, 2.0), want(l, r, 2.0)) < TOL[dtype]
    b = base.to(DEV, dtype)
    assert rel(bm.reference(ld, rd, 2.0, b), want(l, r, 2.0, b.double().cpu())) < TOL[dtype]


def test_what_the_kernel_serves():
    l = torch.randn(64, 64, dtype=torch.bfloat16)
    r = torch.randn(3, 64, 64, dtype=torch.bfloat16)
    assert not bm.supports(l, r)  # CPU tensors: the reference
    if DEV == "cuda":
        lc, rc = l.cuda(), r.cuda()
        assert bm.supports(lc, rc) == (bm.triton is not None)
        assert not bm.supports(lc.float(), rc.float())  # float32: cuBLAS
        assert not bm.supports(lc, rc.transpose(1, 2))  # no unit stride along N
        big = torch.randn(bm.MAX_DIM + 1, 64, dtype=torch.bfloat16, device="cuda")
        assert not bm.supports(big, rc)
        wide = torch.randn(3, 64, bm.MAX_N + 8, dtype=torch.bfloat16, device="cuda")
        assert not bm.supports(lc, wide)  # wide rows: cuBLAS, unless the frozen output is read too
        assert bm.supports(lc, wide, torch.empty(3, 64, bm.MAX_N + 8, dtype=torch.bfloat16, device="cuda"))
    # whatever serves it, the result is the product
    torch.testing.assert_close(bm.blockmm(l, r), torch.einsum("mk,tkn->tmn", l.float(), r.float()).bfloat16(),
                               atol=0.1, rtol=2e-2)


def test_no_tokens_give_an_empty_result(kernel):
    l = torch.randn(64, 64, dtype=torch.bfloat16, device=DEV)
    r = torch.randn(0, 64, 64, dtype=torch.bfloat16, device=DEV)
    assert bm.blockmm(l, r).shape == (0, 64, 64)
    assert bm.blockmm(l, r, 2.0, torch.empty(0, 64, 64, dtype=torch.bfloat16, device=DEV)).shape == (0, 64, 64)


def test_only_inference_launches_the_kernel(monkeypatch):
    """Training runs stage 1 on cuBLAS (a training step is bound by the host, where a Triton launch costs more);
    inference launches the kernel. The launch is stood in for by the reference, so this runs on any machine."""
    from fourierft.kernels.factored import factored_linear

    launches = []

    def launch(l, r, n, alpha, base, out):
        launches.append(r.shape)
        ref = bm._reference_rows if r.dim() == 2 else bm.reference
        out.copy_(ref(l, r, alpha, base, None))

    monkeypatch.setattr(bm, "supports", lambda l, r, base=None: True)
    monkeypatch.setattr(bm, "_launch", launch)
    g = torch.Generator().manual_seed(3)
    d1, d2, n = 36, 48, 10
    rows, cols = torch.randint(0, d1, (n,), generator=g), torch.randint(0, d2, (n,), generator=g)
    spectrum = torch.randn(n, generator=g, requires_grad=True)
    x = torch.randn(5, d2, generator=g, requires_grad=True)
    y = factored_linear(x, spectrum, rows, cols, d1, d2, 30.0)
    y.square().sum().backward()
    assert launches == [] and x.grad is not None and spectrum.grad is not None
    with torch.no_grad():
        y_infer = factored_linear(x.detach().clone(), spectrum, rows, cols, d1, d2, 30.0)
    assert len(launches) == 2  # analysis and synthesis
    torch.testing.assert_close(y_infer, y.detach())
    assert bm.blockmm(torch.randn(4, 4), torch.randn(2, 4, 4), kernel=False).shape == (2, 4, 4)
    assert len(launches) == 2  # kernel=False: the reference, whatever supports() says
