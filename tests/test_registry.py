"""register()/unregister(): which FourierFT PEFT builds, process-wide; fourierft.PeftModel is peft.PeftModel."""

from __future__ import annotations

import peft
import pytest
import torch
from peft import mapping
from peft.tuners.fourierft import FourierFTModel as PeftTuner

import fourierft
from helpers import MLP, build, fourierft_layers_of, output

@pytest.fixture(autouse=True)
def _registration_restored():
    was = fourierft.is_registered()
    yield
    (fourierft.register if was else fourierft.unregister)()


def _tables():
    return (mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft.PeftType.FOURIERFT],
            mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft.PeftType.FOURIERFT],
            mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get("FOURIERFT_STORED_ENTRIES"))


def _plain_peft_model():
    return peft.get_peft_model(MLP(), peft.FourierFTConfig(n_frequency=8, target_modules=["lin0"]))


def test_register_and_unregister_are_idempotent_and_reversible():
    fourierft.unregister()
    peft_own = _tables()
    assert peft_own[0] is peft.FourierFTConfig and peft_own[1] is PeftTuner and peft_own[2] is None
    fourierft.unregister()
    assert _tables() == peft_own and not fourierft.is_registered()
    fourierft.register()
    ours = _tables()
    assert ours == (fourierft.FourierFTConfig, fourierft.FourierFTModel, fourierft.FourierFTConfig)
    fourierft.register()
    assert _tables() == ours and fourierft.is_registered()
    fourierft.unregister()
    assert _tables() == peft_own


def test_plain_peft_builds_peft_s_layers_after_unregister_and_ours_after_register():
    fourierft.unregister()
    ours, theirs = fourierft_layers_of(_plain_peft_model())
    assert theirs and not ours
    fourierft.register()
    kept = _plain_peft_model()
    ours, theirs = fourierft_layers_of(kept)
    assert ours and not theirs
    fourierft.unregister()  # models built meanwhile keep our layers and keep working
    assert fourierft_layers_of(kept)[0]
    assert output(kept.eval(), "mlp").shape == (9, 2)


def test_entry_points_register_first():
    fourierft.unregister()
    model = fourierft.get_peft_model(MLP(), fourierft.FourierFTConfig(n_frequency=8, target_modules=["lin0"]))
    assert fourierft.is_registered() and fourierft_layers_of(model)[0]
    fourierft.unregister()
    direct = fourierft.PeftModel(MLP(), fourierft.FourierFTConfig(n_frequency=8, target_modules=["lin0"]))
    assert type(direct) is peft.PeftModel and fourierft_layers_of(direct)[0]


def test_fourierft_peft_model_is_peft_s_class(tmp_path):
    model = fourierft.get_peft_model(build("llama"), fourierft.FourierFTConfig(n_frequency=8, task_type="CAUSAL_LM"))
    assert type(model) is peft.PeftModelForCausalLM
    fourierft.unregister()
    theirs = _plain_peft_model()
    for m in (model, theirs):
        assert isinstance(m, fourierft.PeftModel) and isinstance(m, peft.PeftModel)
    for m in (build("mlp"), model.base_model, 3):
        assert not isinstance(m, fourierft.PeftModel) and not isinstance(m, peft.PeftModel)
    assert issubclass(peft.PeftModelForCausalLM, fourierft.PeftModel)
    assert not issubclass(torch.nn.Linear, fourierft.PeftModel)
    assert fourierft.PeftModelForCausalLM is fourierft.PeftModel
    model.save_pretrained(tmp_path)
    loaded = fourierft.PeftModelForCausalLM.from_pretrained(build("llama"), tmp_path)
    assert type(loaded) is peft.PeftModelForCausalLM and fourierft_layers_of(loaded)[0]
    assert fourierft.is_registered()


def test_unregistered_peft_config_is_peft_s_own_class():
    fourierft.unregister()
    assert type(peft.PeftConfig.from_peft_type(peft_type="FOURIERFT")) is peft.FourierFTConfig
    fourierft.register()
    assert type(peft.PeftConfig.from_peft_type(peft_type="FOURIERFT")) is fourierft.FourierFTConfig


def test_unregistered_block_builds_peft_layers_and_restores_the_state():
    from torch import nn

    fourierft.register()
    with fourierft.unregistered():
        assert not fourierft.is_registered()
        model = peft.get_peft_model(nn.Sequential(nn.Linear(8, 8)), peft.FourierFTConfig(n_frequency=4,
                                                                                         target_modules=["0"]))
    assert fourierft.is_registered()
    assert type(model.base_model.model[0]).__module__.startswith("peft.")
    fourierft.unregister()
    with fourierft.unregistered():
        pass
    assert not fourierft.is_registered()
