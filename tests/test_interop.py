"""Checkpoints move both ways between fourierft and the real PEFT package (its own FourierFT layers, reached with
``fourierft.unregister()``), with the same logits; adapters written by the previous release (0.1, whose code is
commit 9fa0b6d) load in this one, checked against ``fourierft.spectral.delta_weight`` computed by hand."""

from __future__ import annotations

import json
import os
import pickle

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import fourierft
from fourierft.spectral import delta_weight
from helpers import build, fourierft_layers_of, output, peft_own_layers

pytestmark = pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning")

CASES = {
    "llama-qv": ("llama", dict(n_frequency=40, target_modules=["q_proj", "v_proj"])),
    "llama-all-linear-pattern": ("llama", dict(n_frequency=30, target_modules="all-linear", scaling=300.0,
                                               n_frequency_pattern={"down_proj": 11}, random_loc_seed=5)),
    "gpt2-conv1d": ("gpt2", dict(n_frequency=25, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "bert-seqcls-fourier-bias": ("bert", dict(n_frequency=20, target_modules=["query", "value"], task_type="SEQ_CLS",
                                              bias="fourier_only")),
    "bert-seqcls-all-bias": ("bert", dict(n_frequency=20, target_modules=["query"], task_type="SEQ_CLS", bias="all")),
    "llama-layers": ("llama", dict(n_frequency=16, target_modules=["q_proj"], layers_to_transform=[1])),
}


@pytest.fixture(autouse=True)
def _registration_restored():
    was = fourierft.is_registered()
    yield
    (fourierft.register if was else fourierft.unregister)()


def perturb(model, seed: int = 11) -> None:
    """Make every trainable tensor non-default so a tensor that failed to travel shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def peft_model(name: str, kwargs: dict, **kw):
    """The model wrapped by PEFT with PEFT's own FourierFT layers."""
    with peft_own_layers():
        model = peft.get_peft_model(build(name), peft.FourierFTConfig(**kwargs), **kw)
    ours, theirs = fourierft_layers_of(model)
    assert theirs and not ours
    return model


def peft_load(name: str, path, **kw):
    with peft_own_layers():
        model = peft.PeftModel.from_pretrained(build(name), path, **kw)
    ours, theirs = fourierft_layers_of(model)
    assert theirs and not ours
    return model


def trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def assert_ours(model) -> None:
    ours, theirs = fourierft_layers_of(model)
    assert ours and not theirs


@pytest.mark.parametrize("case", CASES)
def test_fourierft_checkpoint_loads_in_peft(case, tmp_path):
    name, kwargs = CASES[case]
    ours = fourierft.get_peft_model(build(name), fourierft.FourierFTConfig(**kwargs))
    assert_ours(ours)
    perturb(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft_load(name, tmp_path)
    torch.testing.assert_close(output(theirs, name), output(ours.eval(), name), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(output(ours, name), output(build(name), name), atol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_peft_checkpoint_loads_in_fourierft(case, tmp_path):
    name, kwargs = CASES[case]
    theirs = peft_model(name, kwargs)
    perturb(theirs)
    theirs.save_pretrained(tmp_path)
    ours = fourierft.PeftModel.from_pretrained(build(name), tmp_path)
    assert_ours(ours)
    torch.testing.assert_close(output(ours, name), output(theirs.eval(), name), rtol=1e-5, atol=1e-5)
    # is_trainable=False: eval mode, adapters frozen; PEFT 0.21 leaves the trained biases of bias="fourier_only"/"all"
    # trainable after such a load, and so do we (the same names as PEFT's own load)
    assert not ours.training and not any(p.requires_grad for n, p in ours.named_parameters() if "fourierft_" in n)
    assert trainable(ours) == trainable(peft_load(name, tmp_path))


@pytest.mark.parametrize("case", ["llama-qv", "bert-seqcls-fourier-bias", "gpt2-conv1d"])
def test_files_equal_peft(case, tmp_path):
    """Same keys, shapes and dtypes in adapter_model.safetensors; the same adapter_config.json."""
    name, kwargs = CASES[case]
    fourierft.get_peft_model(build(name), fourierft.FourierFTConfig(**kwargs)).save_pretrained(tmp_path / "a")
    peft_model(name, kwargs).save_pretrained(tmp_path / "b")
    ours = load_file(tmp_path / "a" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {k: (v.shape, v.dtype) for k, v in theirs.items()}
    config = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("a", "b")]
    for c in config:  # written from a set: the order is the set's
        c["target_modules"] = sorted(c["target_modules"])
    assert config[0] == config[1]


def test_same_seed_same_entries_and_initial_coefficients_as_peft():
    kwargs = dict(n_frequency=40, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(123)
    ours = fourierft.get_peft_model(build("llama"), fourierft.FourierFTConfig(**kwargs))
    torch.manual_seed(123)
    theirs = peft_model("llama", kwargs)
    theirs_params = dict(theirs.named_parameters())
    spectra = [(n, p) for n, p in ours.named_parameters() if "fourierft_spectrum" in n]
    assert len(spectra) == 4
    for n, p in spectra:
        assert torch.equal(p, theirs_params[n]), n
    for n, layer in ours.named_modules():
        if isinstance(layer, fourierft.FourierFTLayer):
            rows, cols = layer.entries("default")
            assert torch.equal(torch.stack([rows, cols]), theirs.get_submodule(n).indices["default"]), n
    torch.testing.assert_close(output(ours.eval(), "llama"), output(theirs.eval(), "llama"), rtol=1e-5, atol=1e-5)


def test_named_adapters_in_subfolders_both_ways(tmp_path):
    theirs = peft_model("llama", dict(n_frequency=12, target_modules=["q_proj"]))
    with peft_own_layers():
        theirs.add_adapter("other", peft.FourierFTConfig(n_frequency=9, target_modules=["v_proj"], scaling=10.0))
    perturb(theirs)
    theirs.set_adapter("other")
    perturb(theirs, seed=12)
    theirs.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "other" / "adapter_config.json").exists()
    ours = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path / "peft")
    ours.load_adapter(tmp_path / "peft" / "other", "other")
    assert_ours(ours)
    theirs.eval()
    outs = {}
    for adapter in ("default", "other"):
        theirs.set_adapter(adapter)
        ours.set_adapter(adapter)
        outs[adapter] = output(ours, "llama")
        torch.testing.assert_close(outs[adapter], output(theirs, "llama"), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs["default"], outs["other"], atol=1e-4)
    ours.save_pretrained(tmp_path / "ours")
    back = peft_load("llama", tmp_path / "ours", subfolder="other", adapter_name="other")
    torch.testing.assert_close(output(back, "llama"), outs["other"], rtol=1e-5, atol=1e-5)


def test_legacy_bin_checkpoint_loads(tmp_path):
    theirs = peft_model("llama", dict(n_frequency=12, target_modules=["q_proj"]))
    perturb(theirs)
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    ours = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert_ours(ours)
    torch.testing.assert_close(output(ours, "llama"), output(theirs.eval(), "llama"), rtol=1e-5, atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_bin_is_not_unpickled(tmp_path):
    fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]).save_pretrained(tmp_path)
    with open(tmp_path / "adapter_model.bin", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)


# --- adapters written by the previous release (0.1) -----------------------------------------------------------------
# What fourierft 0.1 wrote (FourierFTConfig.to_dict, json.dumps(indent=2, sort_keys=True), its added keys only when
# not at their defaults; safetensors with a "fourierft_layer_shapes" metadata entry), reproduced here by hand.
def _release_01_config(**changes) -> dict:
    config = {"base_model_name_or_path": None, "bias": "none", "exclude_modules": None, "fan_in_fan_out": False,
              "inference_mode": False, "init_weights": False, "layers_pattern": None, "layers_to_transform": None,
              "modules_to_save": None, "n_frequency": 7, "n_frequency_pattern": {}, "peft_type": "FOURIERFT",
              "random_loc_seed": 777, "revision": None, "scaling": 150.0, "target_modules": ["0", "2"],
              "task_type": None}
    return config | changes


def _write_release_01(path, config: dict, tensors: dict, shapes: dict) -> None:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, path / "adapter_model.safetensors",
              metadata={"format": "pt", "fourierft_layer_shapes": json.dumps(shapes)})


def _mlp() -> torch.nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4)).eval()


X = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))


def _randperm_entries(d1: int, d2: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
    return flat // d2, flat % d2


def _expected(w: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """The adapted MLP in float64: ``W + dW`` per layer (``w``: the base state dict, any trained copies)."""
    x = X.double()
    h = x @ (w["0.weight"].double() + deltas.get("0", 0)).T + w["0.bias"].double()
    return torch.relu(h) @ (w["2.weight"].double() + deltas.get("2", 0)).T + w["2.bias"].double()


def test_release_01_uniform_adapter_loads(tmp_path):
    g = torch.Generator().manual_seed(5)
    spectra = {"0": torch.randn(7, generator=g), "2": torch.randn(7, generator=g)}
    _write_release_01(tmp_path / "a", _release_01_config(scaling=3.0),
                      {f"base_model.model.{k}.fourierft_spectrum": v for k, v in spectra.items()},
                      {"0": [5, 6], "2": [4, 5]})
    model = fourierft.PeftModel.from_pretrained(_mlp(), tmp_path / "a")
    assert_ours(model)
    deltas = {k: delta_weight(s, *_randperm_entries(d1, d2, 7, 777), d1, d2, 3.0, dtype=torch.float64)
              for (k, s), (d1, d2) in zip(spectra.items(), [(5, 6), (4, 5)])}
    with torch.no_grad():
        got = model(X)
    torch.testing.assert_close(got.double(), _expected(_mlp().state_dict(), deltas), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling", [
    {"entry_sampling": "frequency_biased", "frequency_center": 1.0, "frequency_width": 2.0},
    {"entry_sampling": "stored"},
])
def test_release_01_stored_entries_adapter_loads(tmp_path, sampling):
    rows = torch.tensor([0, 1, 4, 1, 0, 2, 3])
    cols = torch.tensor([1, 0, 5, 1, 5, 2, 3])
    spectrum = torch.randn(7, generator=torch.Generator().manual_seed(6))
    config = _release_01_config(target_modules=["0"], peft_type="FOURIERFT_STORED_ENTRIES", **sampling)
    _write_release_01(tmp_path / "a", config, {"base_model.model.0.fourierft_spectrum": spectrum,
                                               "base_model.model.0.fourierft_rows": rows,
                                               "base_model.model.0.fourierft_cols": cols}, {"0": [5, 6]})
    model = fourierft.PeftModel.from_pretrained(_mlp(), tmp_path / "a")
    layer = model.base_model.model[0]
    assert torch.equal(layer.entries("default")[0], rows) and torch.equal(layer.entries("default")[1], cols)
    expected = _expected(_mlp().state_dict(), {"0": delta_weight(spectrum, rows, cols, 5, 6, 150.0, torch.float64)})
    with torch.no_grad():
        torch.testing.assert_close(model(X).double(), expected, rtol=1e-5, atol=1e-5)
    with peft_own_layers(), pytest.raises(KeyError, match="FOURIERFT_STORED_ENTRIES"):
        peft.PeftModel.from_pretrained(_mlp(), tmp_path / "a")  # PEFT alone would draw other entries: refused


def test_release_01_modules_to_save_and_bias_adapter_loads(tmp_path):
    g = torch.Generator().manual_seed(7)
    spectrum, bias0 = torch.randn(7, generator=g), torch.randn(5, generator=g)
    head_w, head_b = torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    config = _release_01_config(target_modules=["0"], modules_to_save=["2"], bias="fourier_only")
    _write_release_01(tmp_path / "a", config, {
        "base_model.model.0.fourierft_spectrum": spectrum, "base_model.model.0.base_layer.bias": bias0,
        "base_model.model.2.weight": head_w, "base_model.model.2.bias": head_b}, {"0": [5, 6]})
    model = fourierft.PeftModel.from_pretrained(_mlp(), tmp_path / "a")
    w = _mlp().state_dict() | {"0.bias": bias0, "2.weight": head_w, "2.bias": head_b}
    dw = delta_weight(spectrum, *_randperm_entries(5, 6, 7, 777), 5, 6, 150.0, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(X).double(), _expected(w, {"0": dw}), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("rows,what", [([0, 9, 1], "out of range"), ([1, 1, 1], "duplicate")])
def test_stored_entries_from_a_checkpoint_are_checked(tmp_path, rows, what):
    """A checkpoint could hold anything: entries out of range or repeated (no single dW: ifft2 keeps one of them,
    a sum over entries counts each) are refused at load, naming the layer."""
    config = _release_01_config(n_frequency=3, target_modules=["0"], peft_type="FOURIERFT_STORED_ENTRIES",
                                entry_sampling="stored")
    _write_release_01(tmp_path / "a", config, {"base_model.model.0.fourierft_spectrum": torch.ones(3),
                                               "base_model.model.0.fourierft_rows": torch.tensor(rows),
                                               "base_model.model.0.fourierft_cols": torch.tensor([1, 1, 1])},
                      {"0": [5, 6]})
    with pytest.raises(ValueError, match=rf"layer '(base_model\.model\.)?0'.*{what}"):
        fourierft.PeftModel.from_pretrained(_mlp(), tmp_path / "a")
