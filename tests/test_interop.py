"""Checkpoints move both ways between fourierft and the real PEFT package, with the same logits."""

from __future__ import annotations

import os
import pickle
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM)

import fourierft
from fourierft import checkpoint


def llama(hidden=32):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64)).eval()


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)).eval()


def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                    num_attention_heads=4, vocab_size=64, num_labels=3)).eval()


CASES = {
    "llama-qv": (llama, dict(n_frequency=40, target_modules=["q_proj", "v_proj"])),
    "llama-all-linear-pattern": (llama, dict(n_frequency=30, target_modules="all-linear", scaling=300.0,
                                             n_frequency_pattern={"down_proj": 11}, random_loc_seed=5)),
    "gpt2-conv1d": (gpt2, dict(n_frequency=25, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "bert-seqcls-fourier-bias": (bert, dict(n_frequency=20, target_modules=["query", "value"], task_type="SEQ_CLS",
                                            bias="fourier_only")),
    "bert-seqcls-all-bias": (bert, dict(n_frequency=20, target_modules=["query"], task_type="SEQ_CLS", bias="all")),
    "llama-layers": (llama, dict(n_frequency=16, target_modules=["q_proj"], layers_to_transform=[1])),
}
TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def perturb(model) -> None:
    """Make every trainable tensor non-default so a missed tensor shows in the logits."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("case", CASES)
def test_fourierft_checkpoint_loads_in_peft(case, tmp_path):
    make, kwargs = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = fourierft.get_peft_model(make(), fourierft.FourierFTConfig(**kwargs))
        perturb(ours)
        ours.save_pretrained(tmp_path)
        theirs = peft.PeftModel.from_pretrained(make(), tmp_path)
    torch.testing.assert_close(logits(theirs), logits(ours), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(ours), logits(make()), atol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_peft_checkpoint_loads_in_fourierft(case, tmp_path):
    make, kwargs = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(make(), peft.FourierFTConfig(**kwargs))
        perturb(theirs)
        theirs.save_pretrained(tmp_path)
        ours = fourierft.PeftModel.from_pretrained(make(), tmp_path)
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in ours.parameters())  # is_trainable=False


@pytest.mark.parametrize("case", ["llama-qv", "bert-seqcls-fourier-bias"])
def test_state_dict_keys_equal_peft(case, tmp_path):
    make, kwargs = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fourierft.get_peft_model(make(), fourierft.FourierFTConfig(**kwargs)).save_pretrained(tmp_path / "a")
        peft.get_peft_model(make(), peft.FourierFTConfig(**kwargs)).save_pretrained(tmp_path / "b")
    ours = load_file(tmp_path / "a" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    assert "base_model.model.model.layers.0.self_attn.q_proj.fourierft_spectrum" in ours or case.startswith("bert")


def test_same_seed_same_initial_coefficients_as_peft():
    torch.manual_seed(123)
    ours = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=40, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(123)
    theirs = peft.get_peft_model(llama(), peft.FourierFTConfig(n_frequency=40, target_modules=["q_proj", "v_proj"]))
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=0, atol=0)


def test_named_adapters_in_subfolders_both_ways(tmp_path):
    cfg = dict(n_frequency=12, target_modules=["q_proj"])
    theirs = peft.get_peft_model(llama(), peft.FourierFTConfig(**cfg))
    theirs.add_adapter("other", peft.FourierFTConfig(n_frequency=9, target_modules=["v_proj"], scaling=10.0))
    perturb(theirs)
    theirs.set_adapter("other")
    perturb(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "other" / "adapter_config.json").exists()
    ours = fourierft.PeftModel.from_pretrained(llama(), tmp_path / "peft")
    ours.load_adapter(tmp_path / "peft" / "other", "other")
    for name in ("default", "other"):
        theirs.set_adapter(name)
        ours.set_adapter(name)
        torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-5, atol=1e-5)
    ours.save_pretrained(tmp_path / "ours")
    back = peft.PeftModel.from_pretrained(llama(), tmp_path / "ours" / "other", adapter_name="other")
    torch.testing.assert_close(logits(back), logits(ours), rtol=1e-5, atol=1e-5)


def test_legacy_bin_checkpoint_loads_without_unpickling(tmp_path):
    theirs = peft.get_peft_model(llama(), peft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").exists()
    ours = fourierft.PeftModel.from_pretrained(llama(), tmp_path)
    torch.testing.assert_close(logits(ours), logits(theirs))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_bin_is_refused(tmp_path):
    fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]).save_pretrained(tmp_path)
    with open(tmp_path / "adapter_model.bin", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    model = llama()
    with pytest.raises(pickle.UnpicklingError):
        fourierft.PeftModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in model.modules())


def test_wrong_base_shape_names_layer_and_both_shapes(tmp_path):
    ours = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    ours.save_pretrained(tmp_path)
    other = llama(hidden=64)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*\[64, 64\].*\[32, 32\]"):
        fourierft.PeftModel.from_pretrained(other, tmp_path)
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in other.modules())
    assert other.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_missing_module_is_named_and_nothing_half_loaded(tmp_path):
    theirs = peft.get_peft_model(llama(), peft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    state["base_model.model.model.layers.7.self_attn.q_proj.fourierft_spectrum"] = torch.zeros(12)
    from safetensors.torch import save_file
    save_file(state, tmp_path / "adapter_model.safetensors")
    model = llama()
    with pytest.raises(ValueError, match=r"layers\.7\.self_attn\.q_proj.*does not have"):
        fourierft.PeftModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in model.modules())


def test_wrong_coefficient_count_is_named(tmp_path):
    fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"])).save_pretrained(tmp_path)
    cfg = fourierft.FourierFTConfig.from_pretrained(tmp_path).copy(n_frequency=13)
    cfg.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"q_proj\.fourierft_spectrum.*\(13,\).*\(12,\)"):
        fourierft.PeftModel.from_pretrained(llama(), tmp_path)


def test_failed_load_adapter_leaves_existing_adapters(tmp_path):
    model = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    reference = logits(model)
    (tmp_path / "bad").mkdir()
    fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]).save_pretrained(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        model.load_adapter(tmp_path / "bad", "bad")
    llama(hidden=64)  # a bigger model's checkpoint: wrong shapes
    big = fourierft.get_peft_model(llama(hidden=64), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    big.save_pretrained(tmp_path / "big")
    with pytest.raises(ValueError, match="different base model"):
        model.load_adapter(tmp_path / "big", "big")
    assert list(model.peft_config) == ["default"]
    torch.testing.assert_close(logits(model), reference, rtol=0, atol=0)


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    reference = logits(model)
    perturb(model)

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    torch.testing.assert_close(logits(fourierft.PeftModel.from_pretrained(llama(), tmp_path)), reference)


def test_low_cpu_mem_usage_loads_real_weights(tmp_path):
    source = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]))
    source.save_pretrained(tmp_path)
    meta = fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"]),
                                    low_cpu_mem_usage=True)
    assert all(p.is_meta for n, p in meta.named_parameters() if "fourierft_adapters" in n)
    loaded = fourierft.PeftModel.from_pretrained(llama(), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded), logits(source))


def test_is_trainable_loads_for_training(tmp_path):
    fourierft.get_peft_model(llama(), fourierft.FourierFTConfig(n_frequency=12, target_modules=["q_proj"])).save_pretrained(tmp_path)
    model = fourierft.PeftModel.from_pretrained(llama(), tmp_path, is_trainable=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".spectrum") for n in trainable)


def test_saved_config_records_base_and_resolved_targets_like_peft(tmp_path):
    import json

    model = llama()
    model.name_or_path = "org/tiny-llama"
    config = fourierft.FourierFTConfig(n_frequency=12)
    fourierft.get_peft_model(model, config).save_pretrained(tmp_path / "ours")
    theirs_model = llama()
    theirs_model.name_or_path = "org/tiny-llama"
    peft.get_peft_model(theirs_model, peft.FourierFTConfig(n_frequency=12)).save_pretrained(tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert ours["base_model_name_or_path"] == theirs["base_model_name_or_path"] == "org/tiny-llama"
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"]) == ["q_proj", "v_proj"]
    assert config.target_modules is None and config.base_model_name_or_path is None  # caller's config untouched
