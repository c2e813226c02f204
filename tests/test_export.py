"""LoRA export (``fourierft.export_lora``): exact factors (float64 formula), checkpoints the real PEFT loads with the
same logits (LLaMA, GPT-2 Conv1D, BERT classification with a trained head and biases, an MLP with modules_to_save)."""

from __future__ import annotations

import json
import os

import peft
import pytest
import torch

import fourierft
import fourierft.export
from fourierft.export import exact_factors
from fourierft.spectral import delta_weight_cos
from helpers import assert_close, build, dw64, inputs, output


@pytest.mark.parametrize("d1,d2,n", [(4, 6, 24), (7, 5, 12), (16, 10, 9)])
def test_exact_factors_reproduce_the_cosine_formula(d1, d2, n):
    rows, cols = fourierft.spectral_entries(d1, d2, n, seed=3)
    c = torch.randn(n, dtype=torch.float64)
    b, a = exact_factors(c, rows, cols, d1, d2, 150.0)
    assert b.shape[1] <= 2 * n
    torch.testing.assert_close(b @ a, delta_weight_cos(c, rows, cols, d1, d2, 150.0), rtol=1e-10, atol=1e-10)


def make(name, **kw):
    torch.manual_seed(0)
    model = fourierft.get_peft_model(build(name), fourierft.FourierFTConfig(**kw)).eval()
    assert isinstance(model, peft.PeftModel)
    with torch.no_grad():  # trained-looking heads and biases, so a missed tensor shows in the logits
        for n, p in model.named_parameters():
            if p.requires_grad and "spectrum" not in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model


CASES = {
    "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], n_frequency=40,
                  n_frequency_pattern={"down_proj": 12}),
    "gpt2": dict(target_modules=["c_attn", "c_proj"], n_frequency=25, fan_in_fan_out=True),
    "bert": dict(target_modules=["query", "value"], n_frequency=20, task_type="SEQ_CLS", bias="fourier_only"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exact_export_loads_in_peft_with_the_same_logits(name, tmp_path):
    ours = make(name, **CASES[name])
    report = fourierft.export_lora(ours, tmp_path)
    assert report.max_relative_error < 1e-6
    assert all(r <= 2 * 40 for r in report.ranks.values())
    loaded = peft.PeftModel.from_pretrained(build(name), tmp_path).eval()
    assert isinstance(loaded.peft_config["default"], peft.LoraConfig)
    # each layer's LoRA dW is the float64 formula's dW (independent of our FFT and of the export's own check)
    for lname, layer in ours.base_model.fourierft_layers():
        want = dw64(layer)
        got = loaded.base_model.model.get_submodule(lname).get_delta_weight("default").double()
        got = got.T if getattr(layer, "fan_in_fan_out", False) else got
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert_close(output(loaded, name), output(ours, name), rtol=1e-5)
    # and it is not the base model's output
    assert not torch.allclose(output(loaded, name), output(build(name), name), atol=1e-3)


def test_truncated_export_reports_the_svd_error(tmp_path):
    ours = make("llama", target_modules=["q_proj"], n_frequency=40)
    report = fourierft.export_lora(ours, tmp_path, rank=3)
    assert set(report.ranks.values()) == {3}
    loaded = peft.PeftModel.from_pretrained(build("llama"), tmp_path).eval()
    for name, layer in ours.base_model.fourierft_layers():
        dw = dw64(layer)
        s = torch.linalg.svdvals(dw)
        eckart_young = (s[3:].square().sum().sqrt() / s.square().sum().sqrt()).item()
        assert report.relative_errors[name] == pytest.approx(eckart_young, rel=1e-4, abs=1e-7)
        assert 0 < report.relative_errors[name] < 1
        lora_dw = loaded.base_model.model.get_submodule(name).get_delta_weight("default").double()
        assert ((lora_dw - dw).norm() / dw.norm()).item() == pytest.approx(eckart_young, rel=1e-4, abs=1e-6)


def test_config_and_errors(tmp_path):
    ours = make("gpt2", **CASES["gpt2"])
    with pytest.raises(ValueError, match="unknown adapter"):
        fourierft.export_lora(ours, tmp_path / "x", adapter_name="nope")
    with pytest.raises(ValueError, match="rank"):
        fourierft.export_lora(ours, tmp_path / "x", rank=0)
    assert not os.path.exists(tmp_path / "x")
    fourierft.export.export_lora(ours, tmp_path / "y")
    config = json.loads((tmp_path / "y" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    assert config["lora_alpha"] == config["r"]


def test_mlp_modules_to_save(tmp_path):
    ours = make("mlp", target_modules=["lin0"], n_frequency=30, modules_to_save=["lin1"])
    fourierft.export_lora(ours, tmp_path)
    loaded = peft.PeftModel.from_pretrained(build("mlp"), tmp_path).eval()
    assert_close(output(loaded, "mlp"), output(ours, "mlp"), rtol=1e-5)
    # the trained head is in the export: without it the logits differ
    assert not torch.allclose(output(loaded, "mlp"), output(build("mlp"), "mlp"), atol=1e-3)
    assert isinstance(loaded.base_model.model.lin1, peft.utils.other.ModulesToSaveWrapper)
    assert inputs("mlp")["X"].shape[0] == 9
