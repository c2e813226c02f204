"""The inference dW cache never serves a stale dW: fused optimizers, in-place edits, swapped storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fourierft import FourierFTConfig, get_peft_model


class One(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x)


def model_and_input():
    torch.manual_seed(0)
    model = get_peft_model(One(), FourierFTConfig(n_frequency=20, scaling=150.0, target_modules=["lin"]))
    model.set_compute_path("gemm")  # the path that caches dW at inference
    return model, torch.randn(4, 16)


def reference(model, x):
    layer = model.base_model.model.lin
    return layer.base_layer(x) + x @ layer.get_delta_weight("default").T


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1),
])
def test_no_grad_forward_after_optimizer_step_sees_new_coefficients(optimizer):
    model, x = model_and_input()
    spectrum = next(p for p in model.parameters() if p.requires_grad)
    opt = optimizer([spectrum])
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        model(x)  # fills the cache
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model, x))


def test_in_place_edit_and_swapped_storage():
    model, x = model_and_input()
    spectrum = next(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        model(x)
        spectrum.mul_(2.0)
        torch.testing.assert_close(model(x), reference(model, x))
        spectrum.data = torch.randn_like(spectrum)
        torch.testing.assert_close(model(x), reference(model, x))
