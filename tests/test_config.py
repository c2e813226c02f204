"""FourierFTConfig: PEFT's fields and defaults, validation at construction, PEFT's JSON both ways."""

from __future__ import annotations

import dataclasses
import json

import peft
import pytest

from fourierft import FourierFTConfig


def test_fields_and_defaults_match_peft():
    ours = {f.name: f for f in dataclasses.fields(FourierFTConfig)}
    theirs = {f.name: f for f in dataclasses.fields(peft.FourierFTConfig)}
    reference_fields = ["n_frequency", "scaling", "random_loc_seed", "fan_in_fan_out", "target_modules",
                        "exclude_modules", "bias", "modules_to_save", "layers_to_transform", "layers_pattern",
                        "n_frequency_pattern", "init_weights", "inference_mode", "task_type",
                        "base_model_name_or_path", "revision"]
    for name in reference_fields:
        assert name in ours and name in theirs, name
    mine, ref = FourierFTConfig(), peft.FourierFTConfig()
    for name in reference_fields:
        assert getattr(mine, name) == getattr(ref, name), name
    assert (mine.n_frequency, mine.scaling, mine.random_loc_seed, mine.init_weights) == (1000, 150.0, 777, False)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"n_frequency": 0}, "n_frequency"), ({"n_frequency": 2.5}, "n_frequency"), ({"n_frequency": True}, "n_frequency"),
        ({"scaling": float("nan")}, "scaling"), ({"scaling": "big"}, "scaling"),
        ({"random_loc_seed": None}, "random_loc_seed"), ({"bias": "lora_only"}, "bias"),
        ({"task_type": "CLASSIFY"}, "task_type"), ({"fan_in_fan_out": "yes"}, "fan_in_fan_out"),
        ({"init_weights": 1}, "init_weights"), ({"target_modules": 3}, "target_modules"),
        ({"target_modules": ["q", 1]}, "target_modules"), ({"exclude_modules": 5}, "exclude_modules"),
        ({"modules_to_save": "classifier"}, "modules_to_save"), ({"layers_to_transform": "0"}, "layers_to_transform"),
        ({"target_modules": "q.*", "layers_to_transform": [0]}, "layers_to_transform"),
        ({"target_modules": ["q"], "layers_pattern": "h"}, "layers_pattern"),
        ({"n_frequency_pattern": {"q": 0}}, "n_frequency_pattern"), ({"n_frequency_pattern": ["q"]}, "n_frequency_pattern"),
    ],
)
def test_invalid_values_are_refused_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FourierFTConfig(**kwargs)


def test_unknown_argument_is_refused():
    with pytest.raises(TypeError):
        FourierFTConfig(n_frequencies=10)


def test_list_targets_normalised_like_peft():
    cfg = FourierFTConfig(target_modules=["q", "v", "q"])
    assert cfg.target_modules == peft.FourierFTConfig(target_modules=["q", "v", "q"]).target_modules == {"q", "v"}


def test_copy_never_shares_state_with_the_original():
    cfg = FourierFTConfig(target_modules=["q"], n_frequency_pattern={"q": 3}, modules_to_save=["head"])
    clone = cfg.copy(scaling=2.0)
    clone.n_frequency_pattern["v"] = 4
    clone.modules_to_save.append("x")
    clone.target_modules.add("k")
    assert cfg.n_frequency_pattern == {"q": 3} and cfg.modules_to_save == ["head"] and cfg.target_modules == {"q"}
    assert cfg.scaling == 150.0 and clone.scaling == 2.0


def test_json_round_trip_with_peft(tmp_path):
    ours = FourierFTConfig(n_frequency=12, scaling=3.0, target_modules=["a", "b"], bias="fourier_only",
                           n_frequency_pattern={"a": 5}, layers_to_transform=[0], task_type="CAUSAL_LM")
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert data["peft_type"] == "FOURIERFT" and data["target_modules"] == ["a", "b"]
    theirs = peft.PeftConfig.from_pretrained(tmp_path / "ours")
    assert isinstance(theirs, peft.FourierFTConfig)
    for name in ("n_frequency", "scaling", "target_modules", "bias", "n_frequency_pattern", "layers_to_transform"):
        assert getattr(theirs, name) == getattr(ours, name), name
    theirs.save_pretrained(tmp_path / "theirs")
    back = FourierFTConfig.from_pretrained(tmp_path / "theirs")
    assert back == ours


def test_other_method_config_is_refused(tmp_path):
    peft.LoraConfig(r=4, target_modules=["q"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="LORA adapter config, not FourierFT"):
        FourierFTConfig.from_pretrained(tmp_path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        FourierFTConfig.from_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        FourierFTConfig.from_pretrained(tmp_path)


def test_unknown_keys_warn_and_are_named(tmp_path):
    data = FourierFTConfig(target_modules=["q"]).to_dict() | {"future_option": 1}
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="future_option"):
        FourierFTConfig.from_pretrained(tmp_path)


def test_task_type_enums_ours_and_peft():
    from fourierft import TaskType

    assert FourierFTConfig(task_type=TaskType.SEQ_CLS).task_type == "SEQ_CLS"
    assert FourierFTConfig(task_type=peft.TaskType.CAUSAL_LM).task_type == "CAUSAL_LM"
    assert type(FourierFTConfig(task_type=TaskType.SEQ_CLS).task_type) is str  # JSON and equality stay plain
