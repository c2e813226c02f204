"""``torch.compile`` of a model of adapted linears of different shapes: one graph (no breaks), no recompiles after
warm-up, and the same outputs and gradients as eager."""

from __future__ import annotations

import pytest
import torch
from kernel_ref import make_entries
from torch import nn

from fourierft.kernels import clear_caches, clear_path_choices, spectral_linear


class Adapted(nn.Module):
    """A stand-in for a FourierFT layer: frozen ``nn.Linear`` plus ``spectral_linear`` with Python-int shapes."""

    def __init__(self, d2: int, d1: int, n: int, seed: int, path: str, fuse: bool) -> None:
        super().__init__()
        self.base = nn.Linear(d2, d1).requires_grad_(False)
        rows, cols = make_entries(d1, d2, n, seed)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.spectrum = nn.Parameter(torch.randn(n))
        self.out_features, self.in_features, self.scaling, self.path, self.fuse = d1, d2, 40.0, path, fuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.fuse:
            return spectral_linear(x, self.spectrum, self.rows, self.cols, self.out_features, self.in_features,
                                   self.scaling, self.path, base=y)
        return y + spectral_linear(x, self.spectrum, self.rows, self.cols, self.out_features, self.in_features,
                                   self.scaling, self.path)


def make_model(path: str, fuse: bool) -> nn.Module:
    torch.manual_seed(0)
    # square, wide, tall, non-power-of-two, and two layers of one shape (shared entries)
    dims = [(12, 16), (16, 24), (24, 10), (10, 10), (10, 10), (10, 7)]
    layers = []
    for i, (d2, d1) in enumerate(dims):
        layers += [Adapted(d2, d1, min(30, d1 * d2 // 2), i % 5, path, fuse), nn.Tanh()]
    return nn.Sequential(*layers)


class Counter:
    """A dynamo backend that counts the graphs it is handed and runs them as captured."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def grads(model: nn.Module, fn, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    y = fn(xr)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach(), xr.grad, [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("path", ["auto", "lowrank", "gemm", "dense", "factored"])
@pytest.mark.parametrize("fuse", [True, False])
def test_one_graph_no_recompiles(path, fuse):
    torch._dynamo.reset()
    clear_caches()
    clear_path_choices()
    model = make_model(path, fuse)
    counter = Counter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)  # fullgraph: any graph break raises
    x = torch.randn(3, 5, 12)
    for _ in range(3):
        grads(model, compiled, x)
    assert counter.graphs == 1
    with torch.no_grad():  # inference: grad mode is guarded, so one more graph, then none
        for _ in range(3):
            compiled(x)
    assert counter.graphs == 2


@pytest.mark.parametrize("path", ["auto", "lowrank", "gemm", "factored"])
def test_compiled_equals_eager(path):
    """Through AOTAutograd (the custom autograd.Functions' backward is traced too): outputs and gradients."""
    torch._dynamo.reset()
    model = make_model(path, True)
    x = torch.randn(4, 12)
    want = grads(model, model, x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        got = grads(model, compiled, x)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        for a, b in zip(got[2], want[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layers_compiled_one_by_one_compile_once_per_shape():
    """Compiling each layer on its own (as when something else breaks the model's graph): one graph per distinct
    layer shape, none on later calls (the shapes are guarded, nothing else is)."""
    torch._dynamo.reset()
    model = make_model("auto", True)
    counter = Counter()
    adapted = [m for m in model if isinstance(m, Adapted)]
    compiled = [torch.compile(m, backend=counter, fullgraph=True) for m in adapted]
    for _ in range(3):
        h = torch.randn(2, 12)
        for m, c in zip(adapted, compiled):
            h = torch.tanh(c(h))
        h.sum().backward()
    assert counter.graphs == len({(m.in_features, m.out_features, m.rows.numel()) for m in adapted})


def test_autocast_traces():
    torch._dynamo.reset()
    model = make_model("auto", True)
    counter = Counter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            y = compiled(x)
            y.float().sum().backward()
        want = model(x)
    assert y.dtype == torch.bfloat16 and counter.graphs == 1
    torch.testing.assert_close(y, want, rtol=2e-2, atol=2e-2)


class ShapesFromTensors(Adapted):
    """Shapes read off tensors (symbolic under ``dynamic=True``) instead of Python ints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_linear(x, self.spectrum, self.rows, self.cols, self.base.weight.shape[0], x.shape[-1],
                               self.scaling, self.path, base=self.base(x))


@pytest.mark.parametrize("measured", [False, True])
def test_symbolic_shapes_trace(measured):
    """Shapes read off tensors under dynamic=True are symbolic: auto's choice still traces (comparisons become
    guards), in one graph, with or without a measured choice for the key."""
    torch._dynamo.reset()
    clear_path_choices()
    torch.manual_seed(0)
    model = nn.Sequential(ShapesFromTensors(12, 16, 30, 0, "auto", True),
                          ShapesFromTensors(16, 10, 30, 1, "auto", True))
    if measured:
        from fourierft.kernels import tune
        from fourierft.kernels.dispatch import FEW_ROWS

        first = model[0]  # the many-rows key: the one a graph reads
        tune(torch.randn(FEW_ROWS + 1, 12), first.spectrum, first.rows, first.cols, 16, 12, first.scaling, training=True,
             timer=lambda path, fn: {"lowrank": 2.0, "gemm": 1.0, "factored": 3.0}[path])
    counter = Counter()
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    for rows in (3, 5, 7):
        x = torch.randn(rows, 12)
        want = grads(model, model, x)
        got = grads(model, compiled, x)
        for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert counter.graphs == 1
