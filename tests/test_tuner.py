"""fourierft's tuner inside PEFT's PeftModel: what a PEFT user relies on (names, load modes, disable_adapter,
autocast_adapter_dtype, several adapters, attribute access), checked against PEFT's own FourierFT where PEFT has the
behaviour, and what is ours (container targets, errors naming layers, the caller's config never changed)."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

import fourierft
from fourierft import FourierFTConfig
from helpers import assert_close, build, fourierft_layers_of, output, peft_own_layers

pytestmark = pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning")


@pytest.fixture(autouse=True)
def _registration_restored():
    was = fourierft.is_registered()
    yield
    (fourierft.register if was else fourierft.unregister)()


def trainable(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def perturb(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


# --- PEFT's surface --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("llama", dict(n_frequency=10, target_modules=["q_proj", "v_proj"])),
    ("gpt2", dict(n_frequency=10, target_modules=["c_attn"], fan_in_fan_out=True)),
    ("bert", dict(n_frequency=10, target_modules=["query"], task_type="SEQ_CLS", bias="fourier_only")),
    ("mlp", dict(n_frequency=10, target_modules=["lin0"], modules_to_save=["lin1"])),
])
def test_parameter_and_buffer_names_are_peft_s(name, kwargs):
    ours = fourierft.get_peft_model(build(name), FourierFTConfig(**kwargs))
    with peft_own_layers():
        theirs = peft.get_peft_model(build(name), peft.FourierFTConfig(**kwargs))
    assert fourierft_layers_of(theirs)[1]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert trainable(ours) == trainable(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert type(ours) is type(theirs)


def test_from_pretrained_is_eval_and_frozen_load_adapter_trainable(tmp_path):
    source = fourierft.get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"]))
    perturb(source)
    source.save_pretrained(tmp_path)
    loaded = fourierft.PeftModel.from_pretrained(build("mlp").train(), tmp_path)
    assert not any(m.training for m in loaded.modules())  # dropout off: inference outputs are PEFT's
    assert trainable(loaded) == []
    assert_close(output(loaded, "mlp"), output(source.eval(), "mlp"))
    loaded.load_adapter(tmp_path, "again", is_trainable=True)
    assert trainable(loaded) == ["base_model.model.lin0.fourierft_spectrum.again"]
    again = fourierft.PeftModel.from_pretrained(build("mlp"), tmp_path, is_trainable=True)
    assert again.training and trainable(again) == ["base_model.model.lin0.fourierft_spectrum.default"]


def test_disable_adapter_contexts_nest():
    model = fourierft.get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"])).eval()
    adapted, base = output(model, "mlp"), output(build("mlp"), "mlp")
    assert not torch.allclose(adapted, base)
    with model.disable_adapter():
        with model.disable_adapter():
            assert torch.equal(output(model, "mlp"), base)
        assert torch.equal(output(model, "mlp"), base)  # leaving the inner context keeps the outer one's state
    assert torch.equal(output(model, "mlp"), adapted)


@pytest.mark.parametrize("autocast,expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_autocast_adapter_dtype(autocast, expected):
    """PEFT's meaning: adapter weights float32 on a half-precision base unless ``autocast_adapter_dtype=False``."""
    kwargs = dict(n_frequency=10, target_modules=["q_proj", "v_proj"])
    ours = fourierft.get_peft_model(build("llama", torch.bfloat16), FourierFTConfig(**kwargs),
                                    autocast_adapter_dtype=autocast)
    with peft_own_layers():
        theirs = peft.get_peft_model(build("llama", torch.bfloat16), peft.FourierFTConfig(**kwargs),
                                     autocast_adapter_dtype=autocast)
    spectra = {n: p.dtype for n, p in ours.named_parameters() if "fourierft_spectrum" in n}
    assert spectra and set(spectra.values()) == {expected}
    assert spectra == {n: p.dtype for n, p in theirs.named_parameters() if "fourierft_spectrum" in n}
    assert output(ours, "llama").dtype == torch.bfloat16


@pytest.mark.parametrize("how", ["add_adapter", "load_adapter"])
def test_second_adapter_with_modules_to_save_leaves_default_outputs(how, tmp_path):
    model = fourierft.get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"],
                                                                    modules_to_save=["lin1"]))
    perturb(model)
    model.eval()
    before = output(model, "mlp")
    other = FourierFTConfig(n_frequency=10, target_modules=["lin0"], modules_to_save=["lin1"], random_loc_seed=3)
    if how == "add_adapter":
        model.add_adapter("other", other)
    else:
        source = fourierft.get_peft_model(build("mlp"), other)
        perturb(source, seed=2)
        source.save_pretrained(tmp_path)
        model.load_adapter(tmp_path, "other")
    assert model.active_adapters == ["default"]
    assert torch.equal(output(model, "mlp"), before)
    model.set_adapter("other")
    if how == "load_adapter":
        assert_close(output(model, "mlp"), output(source.eval(), "mlp"))
    model.set_adapter("default")
    assert torch.equal(output(model, "mlp"), before)


def test_attribute_access_reaches_the_wrapped_model():
    base = build("llama")
    model = fourierft.get_peft_model(base, FourierFTConfig(n_frequency=10, target_modules=["q_proj"]))
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert model.generation_config is base.generation_config
    assert model.can_generate() and model.lm_head is base.lm_head
    model.enable_input_require_grads()  # used with gradient checkpointing on frozen embeddings


# --- ours: targets, errors, the caller's config ---------------------------------------------------------------------
def sizes(model) -> dict[str, int]:
    return {n.removeprefix("base_model.model.model."): p.numel() for n, p in model.named_parameters()
            if "fourierft_spectrum" in n}


def test_container_target_layer_patterns_exclusions_and_own_targets():
    config = FourierFTConfig(n_frequency=6, target_modules=["mlp", "down_proj"], exclude_modules=["up_proj"],
                             n_frequency_pattern={"mlp": 4, "down_proj": 3})
    model = fourierft.get_peft_model(build("llama"), config)
    expected = {}
    for i in range(2):  # gate_proj: the container's entry; down_proj: its own; up_proj: excluded
        expected |= {f"layers.{i}.mlp.gate_proj.fourierft_spectrum.default": 4,
                     f"layers.{i}.mlp.down_proj.fourierft_spectrum.default": 3}
    assert sizes(model) == expected
    model.add_adapter("two", FourierFTConfig(n_frequency=5, target_modules=["mlp"]))  # onto the adapted layers too
    assert {k: v for k, v in sizes(model).items() if k.endswith(".two")} == {
        f"layers.{i}.mlp.{p}.fourierft_spectrum.two": 5
        for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    with peft_own_layers(), pytest.raises(TypeError, match="LlamaMLP"):  # beyond PEFT 0.21, which refuses it
        peft.get_peft_model(build("llama"), peft.FourierFTConfig(target_modules=["mlp"]))


def test_container_target_round_trips(tmp_path):
    model = fourierft.get_peft_model(build("llama"), FourierFTConfig(n_frequency=6, target_modules=["mlp"]))
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)
    assert_close(output(loaded, "llama"), output(model.eval(), "llama"))
    assert not torch.allclose(output(loaded, "llama"), output(build("llama"), "llama"), atol=1e-4)


def test_no_match_names_the_model_s_layers_and_changes_nothing():
    model = build("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"not found in the base model.*Did you mean \[.*'q_proj'.*\]"):
        fourierft.get_peft_model(model, FourierFTConfig(target_modules=["q_prj"]))
    assert not fourierft_layers_of(model)[0]
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_n_frequency_larger_than_a_layer_names_it_and_changes_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 100))
    with pytest.raises(ValueError, match=r"layer '0'.*n_frequency=50.*3x4"):
        fourierft.get_peft_model(model, FourierFTConfig(n_frequency=50, target_modules=["0", "2"]))
    assert type(model[0]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear


CONFIGS = [
    ("gpt2", dict(n_frequency=10, target_modules=["c_attn"])),  # fan_in_fan_out corrected for Conv1D
    ("llama", dict(n_frequency=10)),  # default targets filled in
    ("llama", dict(n_frequency=10, target_modules="all-linear", n_frequency_pattern={"q_proj": 4})),
    ("bert", dict(n_frequency=10, target_modules=["query"], task_type="SEQ_CLS")),  # head added to modules_to_save
]


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_get_peft_model_never_changes_the_callers_config(name, kwargs):
    config = FourierFTConfig(**kwargs)
    before = copy.deepcopy(config)
    model = fourierft.get_peft_model(build(name), config)
    assert config == before and config.to_dict() == before.to_dict()
    assert model.peft_config["default"] is not config


def test_other_methods_are_refused():
    with pytest.raises(TypeError, match="FourierFTConfig.*peft.get_peft_model"):
        fourierft.get_peft_model(build("mlp"), peft.LoraConfig(target_modules=["lin0"]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("how", ["merge_adapter", "merge_and_unload"])
def test_refused_safe_merge_changes_nothing(how, bad):
    """The last adapted layer is broken, so a merge going layer by layer (PEFT's) would have changed the others."""
    config = FourierFTConfig(n_frequency=10, target_modules=["q_proj", "v_proj"])
    model = fourierft.get_peft_model(build("llama"), config)
    layers = fourierft_layers_of(model)[0]
    with torch.no_grad():
        layers[-1].fourierft_spectrum["default"][0] = bad
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        getattr(model, how)(safe_merge=True)
    assert not any(layer.merged for layer in layers) and fourierft_layers_of(model)[0] == layers
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)
