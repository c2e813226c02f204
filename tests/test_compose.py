"""add_weighted_adapter (reached through PEFT's attribute forwarding): dW is exactly the weighted sum (float64
cosine formula) on the union of entries; PEFT-loadable when the entries allow, else stored entries that round-trip."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft.utils.other import ModulesToSaveWrapper

import fourierft
from fourierft.spectral import delta_weight
from helpers import assert_close, build, dw64, output, peft_own_layers


def cfg(**kw):
    return fourierft.FourierFTConfig(**kw)


def two_adapters(name="llama", a=None, b=None):
    torch.manual_seed(0)
    model = fourierft.get_peft_model(build(name), cfg(**(a or dict(target_modules=["q_proj", "v_proj"],
                                                                     n_frequency=30, random_loc_seed=1))), "a")
    model.add_adapter("b", cfg(**(b or dict(target_modules=["v_proj", "down_proj"], n_frequency=20, scaling=300.0,
                                            random_loc_seed=2))))
    return model.eval()


def reference_dw(layer, adapters, weights):
    """``sum_i w_i dW_i`` in float64 from the cosine formula."""
    total = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    for a, w in zip(adapters, weights):
        if a in layer.fourierft_spectrum:
            total += w * dw64(layer, a)
    return total


def merged_reference(name, model, adapters, weights):
    """The base model with ``W + sum_i w_i dW_i`` written into each adapted layer (float64 sums)."""
    base = build(name)
    with torch.no_grad():
        for lname, layer in model.base_model.fourierft_layers():
            w = base.get_submodule(lname).weight
            w += reference_dw(layer, adapters, weights).to(w.dtype)
    return base


def test_weighted_sum_is_exact_with_union_of_entries():
    model = two_adapters()
    weights = [0.7, -1.3]
    model.add_weighted_adapter(["a", "b"], weights, "ab")
    assert model.active_adapters == ["a"]  # not made active
    config = model.peft_config["ab"]
    assert config.entry_sampling == "stored" and config.to_dict()["peft_type"] == "FOURIERFT_STORED_ENTRIES"
    layers = model.base_model.fourierft_layers()
    assert {n.rsplit(".", 1)[1] for n, layer in layers if "ab" in layer.fourierft_spectrum} == {
        "q_proj", "v_proj", "down_proj"}  # layers of only one adapter get that adapter's share
    for lname, layer in layers:
        rows, cols = layer.entries("ab")
        got = delta_weight(layer.fourierft_spectrum["ab"], rows, cols, layer.out_features, layer.in_features,
                           layer.scaling("ab"), torch.float64)
        want = reference_dw(layer, ["a", "b"], weights)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        torch.testing.assert_close(dw64(layer, "ab"), want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
        sizes = [layer.fourierft_n_frequency[a] for a in "ab" if a in layer.fourierft_spectrum]
        new_n = layer.fourierft_n_frequency["ab"]
        assert max(sizes) <= new_n <= sum(sizes) and layer.fourierft_spectrum["ab"].numel() == new_n
        flat = rows * layer.in_features + cols
        assert flat.unique().numel() == new_n  # union: shared entries counted once
    model.set_adapter("ab")
    assert_close(output(model, "llama"), output(merged_reference("llama", model, ["a", "b"], weights), "llama"))


def test_stored_adapter_saves_loads_and_peft_refuses(tmp_path):
    model = two_adapters()
    model.add_weighted_adapter(["a", "b"], [0.5, 2.0], "ab")
    model.set_adapter("ab")
    expected = output(model, "llama")
    model.save_pretrained(tmp_path, selected_adapters=["ab"])
    saved = json.loads((tmp_path / "ab" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "FOURIERFT_STORED_ENTRIES" and saved["entry_sampling"] == "stored"
    loaded = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path / "ab")
    assert isinstance(loaded, peft.PeftModel) and not loaded.training
    torch.testing.assert_close(output(loaded, "llama"), expected, rtol=0, atol=0)
    # and into a model holding other adapters, through PEFT's load_adapter
    other = two_adapters()
    other.load_adapter(tmp_path / "ab", adapter_name="ab")
    other.set_adapter("ab")
    torch.testing.assert_close(output(other.eval(), "llama"), expected, rtol=0, atol=0)
    # PEFT without fourierft does not know the type: it refuses instead of regenerating other entries
    with peft_own_layers(), pytest.raises((KeyError, ValueError), match="FOURIERFT_STORED_ENTRIES"):
        peft.PeftModel.from_pretrained(build("llama"), tmp_path / "ab")


def test_same_entries_stay_peft_compatible(tmp_path):
    same = dict(target_modules=["q_proj", "v_proj"], n_frequency=30, random_loc_seed=4)
    model = two_adapters(a=same, b=dict(same, scaling=50.0))
    model.add_weighted_adapter(["a", "b"], [1.0, 3.0], "ab")
    assert model.peft_config["ab"].entry_sampling == "uniform"
    for _, layer in model.base_model.fourierft_layers():
        assert torch.equal(layer.fourierft_seeded_rows["ab"], layer.fourierft_seeded_rows["a"])
    model.set_adapter("ab")
    model.save_pretrained(tmp_path, selected_adapters=["ab"])
    assert json.loads((tmp_path / "ab" / "adapter_config.json").read_text())["peft_type"] == "FOURIERFT"
    with peft_own_layers():  # PEFT's own FourierFT layers load it
        theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "ab").eval()
    assert not any(isinstance(m, fourierft.FourierFTLayer) for m in theirs.modules())
    assert_close(output(theirs, "llama"), output(model, "llama"))
    assert_close(output(model, "llama"), output(merged_reference("llama", model, ["a", "b"], [1.0, 3.0]), "llama"))


def test_heads_combine_as_deltas():
    a = dict(target_modules=["query"], n_frequency=10, task_type="SEQ_CLS")
    model = two_adapters("bert", a=a, b=dict(a, random_loc_seed=9))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".modules_to_save." in n:
                p.add_(torch.randn_like(p))
    model.add_weighted_adapter(["a", "b"], [0.25, 0.5], "ab")
    wrapper = next(m for m in model.modules() if isinstance(m, ModulesToSaveWrapper))
    orig = wrapper.original_module.weight.double()
    want = orig + 0.25 * (wrapper.modules_to_save["a"].weight.double() - orig) + 0.5 * (
        wrapper.modules_to_save["b"].weight.double() - orig)
    torch.testing.assert_close(wrapper.modules_to_save["ab"].weight.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("args,match", [
    ((["a", "zz"], [1, 1], "n"), "unknown"),
    ((["a", "a"], [1, 1], "n"), "distinct"),
    ((["a", "b"], [1], "n"), "one weight per adapter"),
    ((["a", "b"], [1, float("nan")], "n"), "finite"),
    ((["a", "b"], [1, 1], "b"), "exists already"),
    ((["a", "b"], [1, 1], 123), "adapter name must be a non-empty string"),
    ((["a", "b"], [1, 1], "v1.2"), "without '.'"),
])
def test_errors_change_nothing(args, match):
    model = two_adapters()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    types = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=match):
        model.add_weighted_adapter(*args)
    assert sorted(model.peft_config) == ["a", "b"] and model.active_adapters == ["a"]
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert [type(m) for m in model.modules()] == types


def test_disjoint_layers_of_different_sizes_stay_peft_compatible(tmp_path):
    """Each layer keeps one adapter's seeded entries, so the sum is a plain adapter whose sizes differ per layer
    (n_frequency_pattern): PEFT's own layers load it with the same logits."""
    model = two_adapters(a=dict(target_modules=["q_proj"], n_frequency=30),
                         b=dict(target_modules=["v_proj"], n_frequency=20, scaling=300.0))
    model.add_weighted_adapter(["a", "b"], [2.0, -0.5], "ab")
    config = model.peft_config["ab"]
    assert config.entry_sampling == "uniform" and config.n_frequency_pattern  # sizes differ: by pattern
    sizes = {n.rsplit(".", 1)[1]: layer.fourierft_n_frequency["ab"] for n, layer in model.base_model.fourierft_layers()
             if "ab" in layer.fourierft_spectrum}
    assert sizes == {"q_proj": 30, "v_proj": 20}
    model.set_adapter("ab")
    want = output(merged_reference("llama", model, ["a", "b"], [2.0, -0.5]), "llama")
    assert_close(output(model, "llama"), want)
    model.save_pretrained(tmp_path, selected_adapters=["ab"])
    with peft_own_layers():
        theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "ab").eval()
    assert_close(output(theirs, "llama"), want)
    ours = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path / "ab")
    torch.testing.assert_close(output(ours, "llama"), output(model, "llama"), rtol=0, atol=0)
