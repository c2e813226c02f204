"""fourierft's layers, one per base type (Linear, GPT-2's Conv1D through fan_in_fan_out, Conv2d, Embedding), against
``fourierft.spectral.delta_weight`` in float64 with the entries PEFT draws (``torch.randperm``): forward (adapted minus
base output), ``get_delta_weight`` orientation, merge and unmerge."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

import fourierft
from fourierft import FourierFTConfig
from fourierft.spectral import delta_weight, delta_weight_cos
from helpers import build, inputs

pytestmark = pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning")


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _base(kind: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return {"linear": lambda: nn.Linear(12, 7), "conv1d": lambda: Conv1D(7, 12),  # Conv1D(nf=out, nx=in)
                "conv2d": lambda: nn.Conv2d(3, 5, 3, padding=1, stride=2),
                "embedding": lambda: nn.Embedding(11, 6)}[kind]()


SHAPES = {"linear": (7, 12), "conv1d": (7, 12), "conv2d": (5, 27), "embedding": (11, 6)}  # (d1, d2) of the spectrum


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if kind == "conv2d":
        return torch.randn(2, 3, 6, 6, generator=g)
    if kind == "embedding":
        return torch.tensor([[0, 3, 10, 3], [5, 1, 0, 9]])
    return torch.randn(2, 4, 12, generator=g)


def _model(kind: str, **kwargs):
    config = FourierFTConfig(n_frequency=9, scaling=40.0, target_modules=["layer"], random_loc_seed=31, **kwargs)
    model = fourierft.get_peft_model(Holder(_base(kind)), config)
    layer = model.base_model.model.layer
    with torch.no_grad():  # non-zero coefficients
        layer.fourierft_spectrum["default"].copy_(torch.randn(9, generator=torch.Generator().manual_seed(3)))
    return model, layer


def _reference_dw(layer, kind: str) -> torch.Tensor:
    """float64 ``dW`` ``(d1, d2)``, the entries from ``torch.randperm`` as PEFT draws them."""
    d1, d2 = SHAPES[kind]
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(31))[:9]
    return delta_weight(layer.fourierft_spectrum["default"].detach(), flat // d2, flat % d2, d1, d2, 40.0,
                        dtype=torch.float64)


def _apply_reference(base: nn.Module, kind: str, dw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What ``dW`` adds to the base layer's output, in float64."""
    if kind in ("linear", "conv1d"):
        return x.double() @ dw.T
    if kind == "conv2d":
        return nn.functional.conv2d(x.double(), dw.reshape(base.weight.shape), None, base.stride, base.padding)
    return dw[x]


KINDS = list(SHAPES)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_class_entries_and_delta_weight(kind):
    _, layer = _model(kind)
    assert type(layer) is {"linear": fourierft.Linear, "conv1d": fourierft.Linear, "conv2d": fourierft.Conv2d,
                           "embedding": fourierft.Embedding}[kind]
    d1, d2 = SHAPES[kind]
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(31))[:9]
    rows, cols = layer.entries("default")
    assert torch.equal(rows, flat // d2) and torch.equal(cols, flat % d2)  # bit-exact, permutation order kept
    dw = layer.get_delta_weight("default")
    assert dw.shape == (d1, d2) and dw.dtype == torch.float32  # PEFT's (out, in) orientation, also for Conv1D
    torch.testing.assert_close(dw.double(), delta_weight_cos(layer.fourierft_spectrum["default"], rows, cols, d1, d2,
                                                             40.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_adds_delta_weight(kind):
    _, layer = _model(kind)
    x = _input(kind)
    with torch.no_grad():
        got = layer(x).double() - layer.get_base_layer()(x).double()
    expected = _apply_reference(layer.get_base_layer(), kind, _reference_dw(layer, kind), x)
    scale = expected.abs().max().item()
    assert scale > 1e-2  # the adapter does something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unmerge_are_exact(kind):
    model, layer = _model(kind)
    x = _input(kind)
    w0 = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        unmerged = model(x)
    model.merge_adapter()
    dw = _reference_dw(layer, kind)
    as_weight = (lambda d: d.T) if kind == "conv1d" else (lambda d: d.reshape(w0.shape))  # Conv1D stores (in, out)
    merged = layer.get_base_layer().weight.detach().clone()
    # float32, bit for bit: W0 + get_delta_weight() in the weight's layout, one rounding per element
    assert torch.equal(merged, w0 + as_weight(layer.get_delta_weight("default")))
    ulp = 2 ** -23 * (w0.abs().max() + dw.abs().max()).item()
    torch.testing.assert_close(merged.double(), w0.double() + as_weight(dw), rtol=0, atol=4 * ulp)
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    assert torch.equal(layer.get_base_layer().weight.detach(), w0)  # the weight from before the merge, not (a + b) - b
    assert not layer.merged


# merged forward against unmerged forward, relative to the output's scale: one rounding of W + dW per dtype
MERGED_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", list(MERGED_RTOL), ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_merge_then_unmerge_leaves_the_weight_bit_identical(kind, dtype, tmp_path):
    """Two adapters merged one after the other (then one more call), unmerged: W is bit for bit what it was, in
    every dtype; the kept copy is in no state_dict or checkpoint and is freed by the unmerge."""
    model, layer = _model(kind)
    model.add_adapter("b", FourierFTConfig(n_frequency=5, scaling=300.0, target_modules=["layer"], random_loc_seed=8,
                                           init_weights=False))
    model.to(dtype)
    x = _input(kind) if kind == "embedding" else _input(kind).to(dtype)
    w0 = layer.get_base_layer().weight.detach().clone()
    keys = set(model.state_dict())
    with torch.no_grad():
        model.base_model.set_adapter(["default", "b"])
        unmerged = model(x)
        model.merge_adapter(["default"])
        model.merge_adapter(["b"])
        merged = model(x)
    assert layer.merged_adapters == ["default", "b"] and not torch.equal(layer.get_base_layer().weight, w0)
    scale = unmerged.abs().max().item()
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=MERGED_RTOL[dtype] * scale)
    assert set(model.state_dict()) == keys  # the kept copy is no state
    model.save_pretrained(tmp_path / "ckpt")
    assert not any("unmerged" in k for k in load_file(tmp_path / "ckpt" / "adapter_model.safetensors"))
    model.unmerge_adapter()
    assert torch.equal(layer.get_base_layer().weight, w0) and not layer.merged
    assert dict(layer.named_buffers(recurse=False)).keys() == set()  # freed
    # what the subtraction gives (the old unmerge) is not exact in half precision: this test can tell them apart
    if dtype != torch.float32 and kind != "embedding":
        with torch.no_grad():
            w = w0.clone()
            deltas = [layer._weight_delta(n) for n in ("default", "b")]
            for d in deltas:
                w += d
            for d in reversed(deltas):
                w -= d
        assert not torch.equal(w, w0)


def test_the_kept_weight_follows_to_and_merge_and_unload_keeps_none():
    model, layer = _model("linear")
    w0 = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    model.to(torch.float64)  # moved and cast with the weight
    assert layer._unmerged_weight.dtype == torch.float64
    model.unmerge_adapter()
    assert layer.get_base_layer().weight.dtype == torch.float64 and torch.equal(layer.get_base_layer().weight,
                                                                                 w0.double())
    model.to(torch.float32)
    with torch.no_grad():
        expected = layer.get_base_layer().weight + layer.get_delta_weight("default")
    merged = model.merge_and_unload()
    assert "_unmerged_weight" not in layer._buffers  # never made: the layer is dropped
    assert torch.equal(merged.layer.weight, expected)
    assert set(merged.state_dict()) == {"layer.weight", "layer.bias"}


def test_disabling_merged_adapters_restores_the_weight_bit_for_bit():
    model, layer = _model("linear")
    model.to(torch.bfloat16)
    w0 = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    with pytest.warns(UserWarning, match="Unmerging"), model.disable_adapter():
        assert torch.equal(layer.get_base_layer().weight, w0)


def test_conv1d_orientation_follows_the_layer_not_the_config():
    """GPT-2's Conv1D stores ``(in, out)``: the layer adds ``dW.T`` to it whatever ``fan_in_fan_out`` says (with a
    warning, as PEFT), and the caller's config keeps what it said."""
    config = FourierFTConfig(n_frequency=9, target_modules=["layer"], fan_in_fan_out=False)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = fourierft.get_peft_model(Holder(_base("conv1d")), config)
    layer = model.base_model.model.layer
    assert layer.fan_in_fan_out and (layer.out_features, layer.in_features) == (7, 12)
    assert config.fan_in_fan_out is False


def test_full_spectrum_of_ones_by_hand():
    """All ``d1 d2`` coefficients 1: ``ifft2`` of an all-ones spectrum is a unit impulse, so ``dW = scaling`` at
    ``[0, 0]`` and 0 elsewhere, whatever order the entries are drawn in."""
    model = fourierft.get_peft_model(nn.Sequential(nn.Linear(3, 4)),
                                     FourierFTConfig(n_frequency=12, scaling=2.0, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.fourierft_spectrum["default"].fill_(1.0)
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    expected = torch.zeros(2, 4)
    expected[:, 0] = 2.0 * x[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.get_base_layer()(x), expected, atol=1e-6, rtol=0)


def test_disabled_layer_is_the_base_layer():
    model, layer = _model("linear")
    x = _input("linear")
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(layer(x), layer.get_base_layer()(x))


@pytest.mark.parametrize("norm", ["forward", "ortho"])
@pytest.mark.parametrize("kind", KINDS)
def test_ifft2_norm_reaches_every_layer_type(kind, norm):
    """``dW = scaling * Re(ifft2(S, norm))`` by hand (float64) in the forward and the merge of each layer type."""
    model, layer = _model(kind, ifft2_norm=norm)
    d1, d2 = SHAPES[kind]
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(31))[:9]
    dense = torch.zeros(d1, d2, dtype=torch.complex128)
    dense[flat // d2, flat % d2] = layer.fourierft_spectrum["default"].detach().double().to(torch.complex128)
    dw = torch.fft.ifft2(dense, norm=norm).real * 40.0
    x = _input(kind)
    with torch.no_grad():
        got = layer(x).double() - layer.get_base_layer()(x).double()
    expected = _apply_reference(layer.get_base_layer(), kind, dw, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(layer.get_delta_weight("default").double(), dw, rtol=1e-5,
                               atol=1e-6 * dw.abs().max().item())


class _SubLinear(nn.Linear):
    pass


def _run_apart(how: str, layer) -> nn.Module:
    """Give ``layer``'s base one of the properties that must make it run as itself; returns the base layer."""
    base = layer.get_base_layer()
    if how == "forward hook":
        base.register_forward_hook(lambda *a: None)
    elif how == "forward pre-hook":
        base.register_forward_pre_hook(lambda *a: None)
    elif how == "backward hook":
        base.register_full_backward_hook(lambda *a: None)
    elif how == "instance forward":  # what accelerate's add_hook_to_module does: its own forward on the instance
        old = base.forward
        base.forward = lambda x: old(x)
    elif how == "trainable weight":
        base.weight.requires_grad_(True)
    elif how == "subclass":
        sub = _SubLinear(12, 7).requires_grad_(False)
        sub.load_state_dict(base.state_dict())
        layer.base_layer = base = sub
    return base


APART = ["forward hook", "forward pre-hook", "backward hook", "instance forward", "subclass", "trainable weight"]


@pytest.mark.parametrize("how", ["plain", *APART])
def test_a_plain_frozen_linear_runs_inside_the_adapter_and_any_other_apart(how, monkeypatch):
    """The layer's output and gradients are the same whether the adapter runs the frozen ``nn.Linear`` itself
    (a plain frozen one nothing observes) or calls it; any hook, forward of its own, subclass or trainable
    weight makes it call the base layer, which then sees every call."""
    from fourierft.layer import _runs_as_plain_linear

    model, layer = _model("linear")
    layer.set_compute_path("lowrank")
    calls = []  # the frozen layer's own forward, counted
    linear_forward = nn.Linear.forward
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: calls.append(1) or linear_forward(self, x))
    base = _run_apart(how, layer)
    assert _runs_as_plain_linear(base) == (how == "plain")
    x = _input("linear").requires_grad_()
    y = model(x)
    y.backward(torch.ones_like(y))
    assert calls == ([] if how == "plain" else [1])
    d1, d2 = SHAPES["linear"]
    dw = _reference_dw(layer, "linear")
    xd = x.detach().double()
    want = xd @ base.weight.detach().double().T + base.bias.detach().double() + xd @ dw.T
    assert torch.allclose(y.double(), want, atol=1e-5)
    assert torch.allclose(x.grad.double(), torch.ones(2, 4, d1, dtype=torch.float64) @ (
        base.weight.detach().double() + dw), atol=1e-5)
    spectrum = layer.fourierft_spectrum["default"]
    assert spectrum.grad is not None and (base.weight.grad is not None) == (how == "trainable weight")


def test_a_global_module_hook_makes_the_frozen_layer_run_as_itself():
    from fourierft.layer import _runs_as_plain_linear

    model, layer = _model("linear")
    base = layer.get_base_layer()
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(m))
    try:
        assert not _runs_as_plain_linear(base)
        model(_input("linear"))
    finally:
        handle.remove()
    assert base in seen and _runs_as_plain_linear(base)


@pytest.mark.parametrize("path", ["auto", "gemm", "lowrank", "factored"])
def test_a_model_built_under_inference_mode_serves_every_path(path):
    """Serving code may load the model and its adapter inside ``torch.inference_mode``: the adapters' entries are
    still normal tensors (the kernels' caches check their version counters), and the logits are those of the same
    model built outside it."""
    cfg = fourierft.FourierFTConfig(n_frequency=40, scaling=50.0, target_modules="all-linear", init_weights=False)
    torch.manual_seed(0)
    plain = fourierft.get_peft_model(build("llama"), cfg)
    plain.base_model.set_compute_path(path)
    with torch.inference_mode():
        torch.manual_seed(0)
        served = fourierft.get_peft_model(build("llama"), cfg)
        served.base_model.set_compute_path(path)
        got = served(**inputs("llama")).logits
    layers = [m for m in served.modules() if isinstance(m, fourierft.Linear)]
    assert layers and not any(t.is_inference() for m in layers for t in m.entries("default"))
    with torch.no_grad():
        assert torch.equal(got, plain(**inputs("llama")).logits)
