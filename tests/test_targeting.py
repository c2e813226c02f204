"""Target selection agrees with PEFT's; containers and helpful no-match errors go beyond it."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, OPTConfig, OPTForCausalLM)

import fourierft


def llama():
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32))


def bert():
    return BertForSequenceClassification(BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                    num_attention_heads=4, vocab_size=64, num_labels=3))


def opt():
    return OPTForCausalLM(OPTConfig(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                                    vocab_size=64, word_embed_proj_dim=32))


def adapted(model) -> dict[str, int]:
    """{layer name: n_frequency} of every adapted layer of a fourierft or peft model."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, fourierft.FourierFTLayer):
            out[name.removeprefix("base_model.model.")] = module.fourierft_adapters["default"].n_frequency
        elif isinstance(module, peft.tuners.fourierft.FourierFTLayer):
            out[name.removeprefix("base_model.model.")] = module.fourierft_n_frequency["default"]
    return out


CASES = [
    (llama, dict(target_modules=["q_proj", "v_proj"])),
    (llama, dict(target_modules="all-linear")),
    (llama, dict(target_modules=r".*\.(k_proj|down_proj)")),
    (llama, dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 2])),
    (llama, dict(target_modules=["q_proj"], layers_to_transform=1, layers_pattern="layers")),
    (llama, dict(target_modules="all-linear", exclude_modules=["o_proj", "gate_proj"])),
    (llama, dict(target_modules="all-linear", exclude_modules=r".*mlp.*")),
    (llama, dict(target_modules=["q_proj", "v_proj"], n_frequency_pattern={"v_proj": 7, r"layers\.1\.self_attn\.q_proj": 5})),
    (llama, dict(target_modules=None)),
    (gpt2, dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
    (gpt2, dict(target_modules="all-linear", fan_in_fan_out=True)),
    (gpt2, dict(target_modules=None, fan_in_fan_out=True)),
    (bert, dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
    (bert, dict(target_modules="all-linear", task_type="SEQ_CLS")),
    (opt, dict(target_modules=["q_proj", "fc1"], layers_to_transform=[1])),
]


@pytest.mark.parametrize("make,kwargs", CASES)
def test_same_layers_as_peft(make, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = fourierft.get_peft_model(make(), fourierft.FourierFTConfig(n_frequency=20, **kwargs))
        theirs = peft.get_peft_model(make(), peft.FourierFTConfig(n_frequency=20, **kwargs))
    assert adapted(ours) and adapted(ours) == adapted(theirs)


def test_container_target_adapts_layers_inside_with_its_n_frequency():
    # The seed's example: n_frequency_pattern {"mlp": 16} with "mlp" among the targets.
    config = fourierft.FourierFTConfig(n_frequency=32, target_modules=["q_proj", "v_proj", "k_proj", "mlp"],
                                       n_frequency_pattern={"q_proj": 64, "v_proj": 64, "mlp": 16})
    got = adapted(fourierft.get_peft_model(llama(), config))
    for i in range(3):
        assert got[f"model.layers.{i}.self_attn.q_proj"] == 64
        assert got[f"model.layers.{i}.self_attn.k_proj"] == 32
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert got[f"model.layers.{i}.mlp.{proj}"] == 16
    assert len(got) == 3 * 6


def test_no_match_error_suggests_real_names():
    # The seed's first example asks for q_proj/v_proj on GPT-2, which has c_attn.
    model = gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"matched no module.*c_attn"):
        fourierft.get_peft_model(model, fourierft.FourierFTConfig(target_modules=["q_proj", "v_proj"]))
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_near_miss_is_named():
    with pytest.raises(ValueError, match=r"Did you mean \[.*'q_proj'.*\]"):
        fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(target_modules=["q_prj"]))


def test_unknown_model_type_without_targets():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no default targets"):
        fourierft.get_peft_model(model, fourierft.FourierFTConfig())


def test_n_frequency_larger_than_layer_is_refused_before_any_change():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 100))
    with pytest.raises(ValueError, match=r"layer '0'.*12"):
        fourierft.get_peft_model(model, fourierft.FourierFTConfig(n_frequency=50, target_modules=["0", "2"]))
    assert isinstance(model[0], torch.nn.Linear) and isinstance(model[2], torch.nn.Linear)


def test_fan_in_fan_out_is_corrected_without_mutating_the_callers_config():
    config = fourierft.FourierFTConfig(n_frequency=10, target_modules=["c_attn"])
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = fourierft.get_peft_model(gpt2(), config)
    assert config.fan_in_fan_out is False
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out and (layer.out_features, layer.in_features) == (96, 32)
    config = fourierft.FourierFTConfig(n_frequency=10, target_modules=["q_proj"], fan_in_fan_out=True)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        fourierft.get_peft_model(llama(), config)
    assert config.fan_in_fan_out is True


def test_seq_cls_adds_head_to_modules_to_save_like_peft_without_touching_config():
    config = fourierft.FourierFTConfig(n_frequency=10, target_modules=["query"], task_type="SEQ_CLS")
    model = fourierft.get_peft_model(bert(), config)
    assert config.modules_to_save is None
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.classifier.modules_to_save.default.weight" in trainable


def test_wrapping_an_already_adapted_model_is_refused():
    model = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=8, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already has FourierFT layers"):
        fourierft.get_peft_model(model.get_base_model(), fourierft.FourierFTConfig(n_frequency=8, target_modules=["v_proj"]))
