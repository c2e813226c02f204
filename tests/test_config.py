"""FourierFTConfig: a ``peft.FourierFTConfig`` subclass, validated when built, PEFT's JSON both ways; ``ifft2_norm`` and
``alpha`` against a float64 formula; unknown keys refused; non-uniform entries kept away from a PEFT that would draw
other entries."""

from __future__ import annotations

import dataclasses
import json

import peft
import pytest
import torch
from safetensors.torch import save_file

import fourierft
from fourierft import FourierFTConfig
from fourierft.config import derive_config
from helpers import peft_own_layers


@pytest.fixture(autouse=True)
def _registration_restored():
    was = fourierft.is_registered()
    yield
    (fourierft.register if was else fourierft.unregister)()


def test_is_peft_config_with_peft_fields_and_defaults():
    assert issubclass(FourierFTConfig, peft.FourierFTConfig)
    theirs = {f.name for f in dataclasses.fields(peft.FourierFTConfig)}
    ours = {f.name for f in dataclasses.fields(FourierFTConfig)}
    assert ours - theirs == {"ifft2_norm", "alpha", "entry_sampling", "frequency_center", "frequency_width"}
    mine, ref = FourierFTConfig(), peft.FourierFTConfig()
    for name in theirs:
        assert getattr(mine, name) == getattr(ref, name), name
    assert mine.peft_type == peft.PeftType.FOURIERFT
    assert (mine.n_frequency, mine.scaling, mine.random_loc_seed, mine.init_weights) == (1000, 150.0, 777, False)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"n_frequency": 0}, "n_frequency"), ({"n_frequency": 2.5}, "n_frequency"),
        ({"n_frequency": True}, "n_frequency"),
        ({"scaling": float("nan")}, "scaling"), ({"scaling": "big"}, "scaling"),
        ({"random_loc_seed": None}, "random_loc_seed"), ({"random_loc_seed": 2**64}, "random_loc_seed"),
        ({"bias": "lora_only"}, "bias"), ({"task_type": "CLASSIFY"}, "task type"),
        ({"fan_in_fan_out": "yes"}, "fan_in_fan_out"), ({"init_weights": 1}, "init_weights"),
        ({"target_modules": 3}, "target_modules"), ({"target_modules": ["q", 1]}, "target_modules"),
        ({"target_modules": "q[("}, "target_modules"), ({"exclude_modules": 5}, "exclude_modules"),
        ({"modules_to_save": "classifier"}, "modules_to_save"),
        ({"target_modules": ["q"], "layers_to_transform": "0"}, "layers_to_transform"),
        ({"target_modules": ["q"], "layers_to_transform": [0.5]}, "layers_to_transform"),
        ({"target_modules": "q.*", "layers_to_transform": [0]}, "layers_to_transform"),
        ({"target_modules": ["q"], "layers_pattern": "h"}, "layers_pattern"),
        ({"target_modules": ["q"], "layers_to_transform": [0], "layers_pattern": 3}, "layers_pattern"),
        ({"n_frequency_pattern": {"q": 0}}, "n_frequency_pattern"),
        ({"n_frequency_pattern": ["q"]}, "n_frequency_pattern"),
        ({"ifft2_norm": "none"}, "ifft2_norm"), ({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"),
        ({"alpha": True}, "alpha"), ({"entry_sampling": "random"}, "entry_sampling"),
        ({"entry_sampling": "frequency_biased"}, "frequency_center"),
        ({"frequency_center": 1.0, "frequency_width": 2.0}, "frequency_biased"),
    ],
)
def test_invalid_values_are_refused_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FourierFTConfig(**kwargs)


def test_unknown_argument_is_refused_naming_it():
    with pytest.raises(TypeError, match="n_frequencies"):
        FourierFTConfig(n_frequencies=10)


def test_list_targets_normalised_like_peft():
    cfg = FourierFTConfig(target_modules=["q", "v", "q"])
    assert cfg.target_modules == peft.FourierFTConfig(target_modules=["q", "v", "q"]).target_modules == {"q", "v"}


def test_task_types_as_enums_or_strings():
    assert FourierFTConfig(task_type=peft.TaskType.SEQ_CLS).task_type == "SEQ_CLS"
    assert FourierFTConfig(task_type="CAUSAL_LM").task_type == peft.TaskType.CAUSAL_LM
    assert fourierft.TaskType is peft.TaskType


def test_derive_config_copies_and_never_changes_the_original():
    for cls in (FourierFTConfig, peft.FourierFTConfig):
        cfg = cls(target_modules=["q"], n_frequency_pattern={"q": 3}, modules_to_save=["head"])
        clone = derive_config(cfg, scaling=2.0)
        assert type(clone) is FourierFTConfig and clone.scaling == 2.0
        clone.n_frequency_pattern["v"] = 4
        clone.modules_to_save.append("x")
        clone.target_modules.add("k")
        assert cfg.n_frequency_pattern == {"q": 3} and cfg.modules_to_save == ["head"] and cfg.target_modules == {"q"}
        assert cfg.scaling == 150.0


# --- adapter_config.json ---------------------------------------------------------------------------------------------
def _json(path) -> dict:
    data = json.loads((path / "adapter_config.json").read_text())
    return data | {"target_modules": sorted(data["target_modules"] or [])}


@pytest.mark.parametrize("kwargs", [{}, dict(n_frequency=12, scaling=3.0, target_modules=["a", "b"],
                                             bias="fourier_only", n_frequency_pattern={"a": 5},
                                             layers_to_transform=[0], task_type="CAUSAL_LM", ifft2_norm="backward",
                                             alpha=None)])
def test_defaults_write_peft_json_with_no_extra_keys(kwargs, tmp_path):
    FourierFTConfig(**kwargs).save_pretrained(tmp_path / "ours")
    peft.FourierFTConfig(**{k: v for k, v in kwargs.items() if k not in ("ifft2_norm", "alpha")}).save_pretrained(
        tmp_path / "theirs")
    assert _json(tmp_path / "ours") == _json(tmp_path / "theirs")
    with peft_own_layers():
        theirs = peft.PeftConfig.from_pretrained(str(tmp_path / "ours"))  # PEFT alone reads it, no warning
    assert type(theirs) is peft.FourierFTConfig
    back = FourierFTConfig.from_pretrained(str(tmp_path / "theirs"))
    assert back == FourierFTConfig(**kwargs)


def test_added_fields_are_written_only_when_set(tmp_path):
    FourierFTConfig(ifft2_norm="ortho", alpha=0.25).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (data["ifft2_norm"], data["alpha"], data["peft_type"]) == ("ortho", 0.25, "FOURIERFT")
    assert "entry_sampling" not in data and "frequency_center" not in data
    assert FourierFTConfig.from_pretrained(str(tmp_path)) == FourierFTConfig(ifft2_norm="ortho", alpha=0.25)


def _with_key(tmp_path, **extra):
    FourierFTConfig(n_frequency=4, target_modules=["0"]).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text()) | extra
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    save_file({"base_model.model.0.fourierft_spectrum": torch.ones(4)}, tmp_path / "adapter_model.safetensors")
    return str(tmp_path)


@pytest.mark.parametrize("load", [
    lambda path: FourierFTConfig.from_pretrained(path),
    lambda path: fourierft.PeftModel.from_pretrained(torch.nn.Sequential(torch.nn.Linear(6, 5)), path),
    lambda path: (fourierft.register(), peft.PeftModel.from_pretrained(torch.nn.Sequential(torch.nn.Linear(6, 5)),
                                                                       path)),
], ids=["FourierFTConfig", "fourierft.PeftModel", "peft.PeftModel"])
def test_unknown_adapter_config_key_is_refused_never_dropped(load, tmp_path):
    # (PEFT's generic peft.PeftConfig.from_pretrained still drops it with a warning: PEFT's own
    # test_from_pretrained_forward_compatible_load_from_peft_config asks for that)
    path = _with_key(tmp_path, future_option=1)
    with pytest.raises(ValueError, match=r"future_option.*upgrade fourierft"):
        load(path)


def test_other_method_config_is_refused(tmp_path):
    peft.LoraConfig(r=4, target_modules=["q"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="LORA adapter config, not FourierFT"):
        FourierFTConfig.from_pretrained(str(tmp_path))


# --- ifft2_norm and alpha: the math they name ------------------------------------------------------------------------
def _mlp() -> torch.nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4)).eval()


def _reference_dw(spectrum, d1, d2, n, scaling, norm, seed=777) -> torch.Tensor:
    """``scaling * Re(ifft2(S, norm))`` in float64, entries as PEFT draws them (``torch.randperm``)."""
    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
    dense = torch.zeros(d1, d2, dtype=torch.complex128)
    dense[flat // d2, flat % d2] = spectrum.detach().double().to(torch.complex128)
    return torch.fft.ifft2(dense, norm=norm).real * scaling


@pytest.mark.parametrize("norm", ["backward", "forward", "ortho"])
def test_ifft2_norm_changes_dw_as_the_formula_says(norm):
    model = fourierft.get_peft_model(_mlp(), FourierFTConfig(n_frequency=7, scaling=2.0, target_modules=["0"],
                                                             ifft2_norm=norm))
    layer = model.base_model.model[0]
    expected = _reference_dw(layer.fourierft_spectrum["default"], 5, 6, 7, 2.0, norm)
    torch.testing.assert_close(layer.get_delta_weight("default").double(), expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = layer(x).double() - layer.get_base_layer()(x).double()
    torch.testing.assert_close(delta, x.double() @ expected.T, rtol=1e-5, atol=1e-5)
    w0 = layer.get_base_layer().weight.detach().double().clone()
    model.merge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight.double() - w0, expected, rtol=1e-5, atol=1e-5)


def test_alpha_sets_n_per_layer_and_patterns_win():
    model = fourierft.get_peft_model(_mlp(), FourierFTConfig(alpha=0.25, target_modules=["0", "2"], n_frequency=3))
    sizes = {n: p.numel() for n, p in model.named_parameters() if "fourierft_spectrum" in n}
    assert sizes == {"base_model.model.0.fourierft_spectrum.default": int(0.25 * 5 * 6),
                     "base_model.model.2.fourierft_spectrum.default": int(0.25 * 4 * 5)}
    layer = model.base_model.model[2]
    expected = _reference_dw(layer.fourierft_spectrum["default"], 4, 5, 5, 150.0, "backward")
    torch.testing.assert_close(layer.get_delta_weight("default").double(), expected, rtol=1e-5, atol=1e-5)
    patterned = fourierft.get_peft_model(_mlp(), FourierFTConfig(alpha=0.25, target_modules=["0", "2"],
                                                                 n_frequency_pattern={"2": 2}))
    assert patterned.base_model.model[2].fourierft_spectrum["default"].numel() == 2


def test_alpha_too_small_for_a_layer_is_named():
    model = _mlp()
    with pytest.raises(ValueError, match=r"alpha=0.01.*'2'.*4x5"):
        fourierft.get_peft_model(model, FourierFTConfig(alpha=0.01, target_modules=["2"]))


def test_adapter_written_by_peft_with_ifft2_norm_and_alpha_loads_right(tmp_path):
    """PEFT's open FourierFT pull request writes ``ifft2_norm`` and ``alpha`` into a FOURIERFT adapter config."""
    peft.FourierFTConfig(target_modules=["0", "2"], scaling=3.0).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text()) | {"ifft2_norm": "ortho", "alpha": 0.3}
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    g = torch.Generator().manual_seed(9)
    n0, n2 = int(0.3 * 5 * 6), int(0.3 * 4 * 5)
    s0, s2 = torch.randn(n0, generator=g), torch.randn(n2, generator=g)
    save_file({"base_model.model.0.fourierft_spectrum": s0, "base_model.model.2.fourierft_spectrum": s2},
              tmp_path / "adapter_model.safetensors")
    model = fourierft.PeftModel.from_pretrained(_mlp(), str(tmp_path))
    w = _mlp().state_dict()
    dw0, dw2 = _reference_dw(s0, 5, 6, n0, 3.0, "ortho"), _reference_dw(s2, 4, 5, n2, 3.0, "ortho")
    x = torch.randn(3, 6, generator=g).double()
    h = torch.relu(x @ (w["0.weight"].double() + dw0).T + w["0.bias"].double())
    expected = h @ (w["2.weight"].double() + dw2).T + w["2.bias"].double()
    with torch.no_grad():
        torch.testing.assert_close(model(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


# --- non-uniform entries: a peft_type PEFT does not know ------------------------------------------------------------
def test_non_uniform_entries_write_stored_type_and_peft_alone_refuses(tmp_path):
    config = FourierFTConfig(n_frequency=6, target_modules=["0"], entry_sampling="frequency_biased",
                             frequency_center=1.0, frequency_width=2.0)
    model = fourierft.get_peft_model(_mlp(), config)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "FOURIERFT_STORED_ENTRIES"
    x = torch.randn(2, 6)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fourierft.PeftModel.from_pretrained(_mlp(), str(tmp_path))(x), expected)
    with peft_own_layers():
        for load in (lambda: peft.PeftConfig.from_pretrained(str(tmp_path)),
                     lambda: peft.PeftModel.from_pretrained(_mlp(), str(tmp_path))):
            with pytest.raises(KeyError, match="FOURIERFT_STORED_ENTRIES"):
                load()
