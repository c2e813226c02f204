"""Entry sampling: uniform stays PEFT's (config JSON too); frequency-biased entries are exact, distinct, in band."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import fourierft
from fourierft.sampling import frequency_biased_entries
from helpers import build, output, peft_own_layers


def band(d1, d2, center, width):
    """Brute-force reference: the set of (u, v) with |f(u, v) - center| <= width / 2, f periodic, float64."""
    u = torch.arange(d1, dtype=torch.float64)[:, None]
    v = torch.arange(d2, dtype=torch.float64)[None, :]
    f = torch.sqrt(torch.minimum(u, d1 - u) ** 2 + torch.minimum(v, d2 - v) ** 2)
    mask = (f - center).abs() <= width / 2
    return {(int(a), int(b)) for a, b in mask.nonzero().tolist()}


def test_default_config_json_is_peft_json(tmp_path):
    ours = fourierft.FourierFTConfig(target_modules=["q"], n_frequency=7)
    theirs = peft.FourierFTConfig(target_modules=["q"], n_frequency=7)
    keys = set(ours.to_dict())
    assert not keys & {"entry_sampling", "frequency_center", "frequency_width"}
    assert keys <= set(theirs.to_dict())
    assert ours.to_dict()["peft_type"] == "FOURIERFT"
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "FOURIERFT"


@pytest.mark.parametrize("d1,d2,n,center,width",
                         [(32, 48, 40, 6.0, 3.0), (17, 9, 20, 4.0, 2.0), (64, 64, 100, 0.0, 12.0)])
def test_frequency_biased_entries_are_distinct_in_band_exactly_n(d1, d2, n, center, width):
    rows, cols = frequency_biased_entries(d1, d2, n, 7, center, width)
    got = list(zip(rows.tolist(), cols.tolist()))
    assert len(got) == n == len(set(got))
    assert set(got) <= band(d1, d2, center, width)
    again = frequency_biased_entries(d1, d2, n, 7, center, width)
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)  # deterministic per seed
    other = frequency_biased_entries(d1, d2, n, 8, center, width)
    assert set(zip(*[t.tolist() for t in other])) != set(got)


def test_whole_band_is_reachable_and_too_small_bands_are_refused():
    everything = band(20, 30, 5.0, 2.0)
    rows, cols = frequency_biased_entries(20, 30, len(everything), 1, 5.0, 2.0)
    assert set(zip(rows.tolist(), cols.tolist())) == everything
    with pytest.raises(ValueError, match="widen frequency_width"):
        frequency_biased_entries(20, 30, len(everything) + 1, 1, 5.0, 2.0)


@pytest.mark.parametrize("kw,match", [
    (dict(entry_sampling="frequency_biased"), "frequency_center"),
    (dict(entry_sampling="frequency_biased", frequency_center=2, frequency_width=0), "frequency_width"),
    (dict(entry_sampling="banana"), "entry_sampling"),
    (dict(frequency_center=3.0), "only apply"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        fourierft.FourierFTConfig(**kw)


def biased_model():
    torch.manual_seed(0)
    config = fourierft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=30, random_loc_seed=3,
                                       entry_sampling="frequency_biased", frequency_center=5.0, frequency_width=4.0)
    return fourierft.get_peft_model(build("llama"), config).eval()


def test_biased_adapter_round_trip_and_peft_refuses(tmp_path):
    model = biased_model()
    layers = model.base_model.fourierft_layers()
    assert len(layers) == 4
    for _, layer in layers:
        rows, cols = layer.entries("default")
        got = set(zip(rows.tolist(), cols.tolist()))
        assert len(got) == 30 and got <= band(layer.out_features, layer.in_features, 5.0, 4.0)
        assert "default" in layer.fourierft_rows and "default" not in layer.fourierft_seeded_rows  # stored, not seeded
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "FOURIERFT_STORED_ENTRIES"
    assert saved["entry_sampling"] == "frequency_biased" and saved["frequency_center"] == 5.0
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert any(k.endswith(".fourierft_rows") for k in tensors)
    assert sum(k.endswith((".fourierft_rows", ".fourierft_cols")) for k in tensors) == 2 * len(layers)
    loaded = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert isinstance(loaded, peft.PeftModel) and not loaded.training
    torch.testing.assert_close(output(loaded, "llama"), output(model, "llama"), rtol=0, atol=0)
    for (_, ours), (_, back) in zip(layers, loaded.base_model.fourierft_layers()):
        assert all(torch.equal(a, b) for a, b in zip(ours.entries("default"), back.entries("default")))
    # the biased entries change the logits: uniform entries from the same seed give others
    uniform = fourierft.get_peft_model(build("llama"), fourierft.FourierFTConfig(
        target_modules=["q_proj", "v_proj"], n_frequency=30, random_loc_seed=3)).eval()
    with torch.no_grad():
        for (_, u), (_, b) in zip(uniform.base_model.fourierft_layers(), layers):
            u.fourierft_spectrum["default"].copy_(b.fourierft_spectrum["default"])
    assert not torch.allclose(output(uniform, "llama"), output(model, "llama"), atol=1e-4)
    with peft_own_layers(), pytest.raises((KeyError, ValueError), match="FOURIERFT_STORED_ENTRIES"):
        peft.PeftModel.from_pretrained(build("llama"), tmp_path)  # PEFT alone refuses, never regenerates others


def test_broken_stored_entries_are_refused(tmp_path):
    biased_model().save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith(".fourierft_rows"))
    tensors[key][1], tensors[key.replace("rows", "cols")][1] = tensors[key][0], tensors[key.replace("rows", "cols")][0]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="duplicate"):
        fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)
    biased_model().save_pretrained(tmp_path / "range")
    path = tmp_path / "range" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith(".fourierft_cols"))
    tensors[key][0] = 10_000  # out of range for a 32-wide layer
    save_file(tensors, path)
    with pytest.raises(ValueError, match="out of range"):
        fourierft.PeftModel.from_pretrained(build("llama"), tmp_path / "range")
