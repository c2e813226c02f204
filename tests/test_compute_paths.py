"""``peft_model.base_model.set_compute_path``: every kernel path gives the dense path's logits and gradients on a
whole tiny LLaMA, the dense path gives PEFT's own FourierFT's, and a wrong name changes nothing."""

from __future__ import annotations

import peft
import pytest
import torch
from helpers import assert_close, build, loss_of, output, peft_own_layers

import fourierft
from fourierft.kernels import CUDA_ONLY, PATHS

CONFIG = dict(n_frequency=40, scaling=50.0, target_modules="all-linear", init_weights=False)


def adapted(path: str) -> fourierft.PeftModel:
    torch.manual_seed(0)  # init_weights=False draws the coefficients: the same ones for every path
    model = fourierft.get_peft_model(build("llama"), fourierft.FourierFTConfig(**CONFIG))
    model.base_model.set_compute_path(path)
    layers = [m for m in model.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert len(layers) == 14 and all(m.compute_path == path for m in layers)
    return model


def run(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = adapted(path)
    logits = output(model, "llama")
    loss_of(model, "llama").backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return logits, grads


# the model here is on the CPU, where the CUDA-only paths are refused (tested below)
@pytest.mark.parametrize("path", [p for p in PATHS if p != "dense" and p not in CUDA_ONLY])
def test_every_path_matches_the_dense_path_on_a_model(path):
    want_logits, want_grads = run("dense")
    logits, grads = run(path)
    assert_close(logits, want_logits, rtol=1e-5)
    assert grads.keys() == want_grads.keys() and len(grads) == 14  # 2 layers x 7 linear layers
    assert all(g.abs().max() > 0 for g in want_grads.values())
    for name, g in grads.items():
        assert_close(g, want_grads[name], rtol=1e-4)


def test_dense_path_is_peft_own_fourierft():
    want_logits, want_grads = run("dense")
    torch.manual_seed(0)
    with peft_own_layers():
        theirs = peft.get_peft_model(build("llama"), peft.FourierFTConfig(**CONFIG))
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in theirs.modules())
    assert_close(output(theirs, "llama"), want_logits, rtol=1e-6)
    loss_of(theirs, "llama").backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert grads.keys() == want_grads.keys()  # PEFT's parameter names
    for name, g in grads.items():
        assert_close(g, want_grads[name], rtol=1e-5)


def test_unknown_path_is_refused_and_changes_nothing():
    model = adapted("factored")
    with pytest.raises(ValueError, match="unknown compute path 'fast'; choose one of"):
        model.base_model.set_compute_path("fast")
    layers = [m for m in model.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert layers and all(m.compute_path == "factored" for m in layers)


def test_fused_path_on_the_cpu_is_refused_at_forward_and_changes_nothing():
    model = adapted("fused")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="compute path 'fused' cannot serve this layer: .*use 'factored'"):
        output(model, "llama")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    model.base_model.set_compute_path("factored")  # the named alternative runs
    assert_close(output(model, "llama"), output(adapted("dense"), "llama"), rtol=1e-5)
