"""``model.set_compute_path``: every kernel path gives the dense (PEFT-numerics) path's logits and gradients on a
whole model, and a wrong name changes nothing."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, build, loss_of, output

import fourierft
from fourierft.kernels import PATHS


def adapted(path: str) -> fourierft.PeftModel:
    torch.manual_seed(0)  # init_weights=False draws the coefficients: the same ones for every path
    model = fourierft.get_peft_model(build("llama"), fourierft.FourierFTConfig(
        n_frequency=40, scaling=50.0, target_modules="all-linear", init_weights=False))
    model.set_compute_path(path)
    return model


def run(path: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = adapted(path)
    logits = output(model, "llama")
    loss_of(model, "llama").backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return logits, grads


@pytest.mark.parametrize("path", [p for p in PATHS if p != "dense"])
def test_every_path_matches_the_dense_path_on_a_model(path):
    want_logits, want_grads = run("dense")
    logits, grads = run(path)
    assert_close(logits, want_logits, rtol=1e-5)
    assert grads.keys() == want_grads.keys() and len(grads) == 14  # 2 layers x 7 linear layers
    for name, g in grads.items():
        assert_close(g, want_grads[name], rtol=1e-4)


def test_unknown_path_is_refused_and_changes_nothing():
    model = adapted("factored")
    with pytest.raises(ValueError, match="unknown compute path 'fast'; choose one of"):
        model.set_compute_path("fast")
    layers = [m for m in model.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert layers and all(m.compute_path == "factored" for m in layers)
