"""Every example of the seed document runs with `from peft import` replaced by `from fourierft import`.

Models are built locally from configs (nothing can be downloaded): a LLaMA stands in where the seed loads a model
with q_proj/v_proj layers, GPT-2 where it loads "gpt2". Two examples go beyond PEFT 0.21 (which refuses them): a
target naming a container ("mlp") adapts the linear layers inside it with the container's n_frequency_pattern entry,
and the first example, run on GPT-2 (no q_proj), names GPT-2's real layers in its error.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fourierft import FourierFTConfig, FourierFTModel, get_peft_model


def llama():
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=64))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32))


def test_basic_usage(capsys):
    base_model = llama()
    config = FourierFTConfig(n_frequency=32, target_modules=["q_proj", "v_proj"], scaling=1.0, init_weights=True)
    model = get_peft_model(base_model, config)
    model.print_trainable_parameters()
    assert "trainable params: 128 ||" in capsys.readouterr().out  # 2 layers x (q, v) x 32
    ids = torch.randint(0, 64, (1, 5))
    assert model(input_ids=ids).logits.shape == (1, 5, 64)


def test_basic_usage_on_gpt2_names_its_real_layers():
    config = FourierFTConfig(n_frequency=32, target_modules=["q_proj", "v_proj"], scaling=1.0, init_weights=True)
    model = gpt2()
    with pytest.raises(ValueError, match=r"not found in the base model.*Did you mean \['c_proj'\].*'c_attn'"):
        get_peft_model(model, config)
    assert not any(isinstance(m, FourierFTModel.tuner_layer_cls) for m in model.modules())


def test_pattern_based_frequencies():
    config = FourierFTConfig(
        n_frequency=32,
        n_frequency_pattern={"q_proj": 64, "v_proj": 64, "mlp": 16},
        target_modules=["q_proj", "v_proj", "k_proj", "mlp"],
        scaling=2.0,
        random_loc_seed=42,
    )
    model = get_peft_model(llama(), config)
    sizes = {n.removeprefix("base_model.model."): p.numel() for n, p in model.named_parameters() if p.requires_grad}
    expected = {}
    for i in range(2):
        expected |= {f"model.layers.{i}.self_attn.{p}.fourierft_spectrum.default": n
                     for p, n in (("q_proj", 64), ("k_proj", 32), ("v_proj", 64))}
        expected |= {f"model.layers.{i}.mlp.{p}.fourierft_spectrum.default": 16
                     for p in ("gate_proj", "up_proj", "down_proj")}
    assert sizes == expected


def test_conv1d_layers():
    config = FourierFTConfig(n_frequency=32, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                             init_weights=True)
    model = get_peft_model(gpt2().eval(), config)  # eval: no dropout
    ids = torch.randint(0, 64, (2, 6))
    base = model.get_base_model()
    with model.disable_adapter():
        expected = base(input_ids=ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits, expected)  # init_weights=True: dW = 0


def test_multiple_adapters():
    base_model = llama()
    config1 = FourierFTConfig(n_frequency=32, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base_model, config1, adapter_name="adapter1")
    config2 = FourierFTConfig(n_frequency=64, target_modules=["q_proj", "v_proj"])
    model.add_adapter("adapter2", config2)
    ids = torch.randint(0, 64, (1, 4))
    model.set_adapter("adapter1")
    out1 = model(input_ids=ids).logits
    model.set_adapter("adapter2")
    out2 = model(input_ids=ids).logits
    assert model.active_adapter == "adapter2" and not torch.allclose(out1, out2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(n.endswith(".fourierft_spectrum.adapter2") for n in trainable)


def test_fourierft_model_class_api():
    assert FourierFTModel.prefix == "fourierft_"
    assert FourierFTModel.target_module_mapping["gpt2"] == ["mlp.c_proj"]
    assert FourierFTModel.target_module_mapping["llama"] == ["q_proj", "v_proj"]
    tuner = FourierFTModel(llama(), FourierFTConfig(n_frequency=8, target_modules=["q_proj"]), "default",
                           low_cpu_mem_usage=False)
    layers = [m for m in tuner.modules() if isinstance(m, FourierFTModel.tuner_layer_cls)]
    assert len(layers) == 2
    target = tuner.model.model.layers[0].self_attn.k_proj
    tuner._create_and_replace(tuner.peft_config["default"], "default", target, "k_proj",
                              tuner.model.model.layers[0].self_attn, "model.layers.0.self_attn.k_proj")
    assert isinstance(tuner.model.model.layers[0].self_attn.k_proj, FourierFTModel.tuner_layer_cls)
    new = FourierFTModel._create_new_module(FourierFTConfig(n_frequency=4), "x", torch.nn.Linear(3, 5))
    assert new.get_delta_weight("x").shape == (5, 3)
