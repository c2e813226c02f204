"""Mixed-adapter batches: every row equals running it alone with its adapter; nothing persists after the call."""

from __future__ import annotations

import pytest
import torch

import fourierft
from fourierft.mixed import BASE
from helpers import VOCAB, assert_close, build

ADAPTERS = {
    "a": dict(n_frequency=30, scaling=150.0, random_loc_seed=1),
    "b": dict(n_frequency=20, scaling=300.0, random_loc_seed=2),
    "c": dict(n_frequency=25, scaling=100.0, random_loc_seed=3),
}


def make(name: str, targets, task_type=None, adapters=ADAPTERS, only_some: dict | None = None):
    torch.manual_seed(0)
    model = build(name)
    first, *rest = adapters
    cfg = lambda a: fourierft.FourierFTConfig(target_modules=(only_some or {}).get(a, targets), task_type=task_type,
                                             fan_in_fan_out=name == "gpt2",
                                             **adapters[a])
    peft_model = fourierft.get_peft_model(model, cfg(first), adapter_name=first)
    for a in rest:
        peft_model.add_adapter(a, cfg(a))
    with torch.no_grad():  # heads differ per adapter, so a row that took the wrong head shows
        for n, p in peft_model.named_parameters():
            if ".modules_to_save." in n:
                p.add_(torch.randn_like(p) * 0.5)
    return peft_model.eval()


def alone(peft_model, name: str, **row):
    """The reference: this row as a batch of one, with only its adapter active (or none)."""
    with torch.no_grad():
        if name == BASE:
            with peft_model.disable_adapter():
                return peft_model(**row).logits
        previous = peft_model.active_adapters
        peft_model.set_adapter(name)
        try:
            return peft_model(**row).logits
        finally:
            peft_model.set_adapter(previous)


def batch(rows: int, seq: int = 7):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, VOCAB, (rows, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row
    return ids, mask


def assert_no_leftover(peft_model):
    for m in peft_model.modules():
        assert getattr(m, "mixed_adapter_names", None) is None


@pytest.mark.parametrize("model_name,targets", [("llama", ["q_proj", "v_proj", "down_proj"]), ("gpt2", ["c_attn", "c_proj"])])
def test_causal_lm_rows_equal_running_alone(model_name, targets):
    peft_model = make(model_name, targets)
    names = ["a", "b", BASE, "c", "a", "b"]
    ids, mask = batch(len(names))
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    assert_no_leftover(peft_model)
    for i, name in enumerate(names):
        assert_close(mixed[i], alone(peft_model, name, input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1])[0])
    # rows really differ per adapter (the test would be vacuous otherwise)
    assert not torch.allclose(mixed[0], alone(peft_model, "b", input_ids=ids[:1], attention_mask=mask[:1])[0])


def test_adapter_on_some_layers_only():
    peft_model = make("llama", ["q_proj", "v_proj"], only_some={"b": ["o_proj"]})
    names = ["b", "a", "b"]
    ids, mask = batch(3)
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    for i, name in enumerate(names):
        assert_close(mixed[i], alone(peft_model, name, input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1])[0])


def test_sequence_classification_heads_per_row():
    peft_model = make("bert", ["query", "value"], task_type="SEQ_CLS")
    names = ["c", BASE, "a", "b", "c"]
    ids, mask = batch(len(names))
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    for i, name in enumerate(names):
        assert_close(mixed[i], alone(peft_model, name, input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1])[0])


@pytest.mark.parametrize("gen_kwargs", [dict(do_sample=False), dict(do_sample=False, num_beams=2)])
def test_generate_rows_equal_generating_alone(gen_kwargs):
    peft_model = make("gpt2", ["c_attn", "c_proj"])
    names = ["a", BASE, "b"]
    ids = batch(3, seq=5)[0]
    kw = dict(max_new_tokens=4, pad_token_id=0, **gen_kwargs)
    with torch.no_grad():
        out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **kw)
        assert_no_leftover(peft_model)
        for i, name in enumerate(names):
            row = dict(input_ids=ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]))
            if name == BASE:
                with peft_model.disable_adapter():
                    ref = peft_model.generate(**row, **kw)
            else:
                peft_model.set_adapter(name)
                ref = peft_model.generate(**row, **kw)
            assert torch.equal(out[i], ref[0]), (i, name)
        peft_model.set_adapter("a")


def test_mlp_positional_input_and_base_model_forward():
    torch.manual_seed(0)
    peft_model = fourierft.get_peft_model(build("mlp"), fourierft.FourierFTConfig(target_modules=["lin0"],
                                                                                 n_frequency=20), "a")
    peft_model.add_adapter("b", fourierft.FourierFTConfig(target_modules=["lin0", "lin1"], n_frequency=9,
                                                          random_loc_seed=4))
    peft_model.eval()
    x = torch.randn(4, 10)
    names = ["b", "a", BASE, "b"]
    with torch.no_grad():
        mixed = peft_model(x, adapter_names=names)
        via_tuner = peft_model.base_model(x, adapter_names=names)
        torch.testing.assert_close(mixed, via_tuner)
        for i, name in enumerate(names):
            if name == BASE:
                with peft_model.disable_adapter():
                    ref = peft_model(x[i:i + 1])
            else:
                peft_model.set_adapter(name)
                ref = peft_model(x[i:i + 1])
            assert_close(mixed[i], ref[0])


def test_errors_are_clear_and_change_nothing():
    peft_model = make("llama", ["q_proj"])
    ids, mask = batch(3)
    with torch.no_grad():
        before = peft_model(input_ids=ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match="unknown adapter"):
            peft_model(input_ids=ids, adapter_names=["a", "nope", "b"])
        with pytest.raises(ValueError, match="3 rows"):
            peft_model(input_ids=ids, adapter_names=["a", "b"])
        with pytest.raises(ValueError, match="list of adapter names"):
            peft_model(input_ids=ids, adapter_names="a")
        peft_model.merge_adapter(["a"])
        with pytest.raises(ValueError, match="unmerge"):
            peft_model(input_ids=ids, adapter_names=["a", "b", "c"])
        peft_model.unmerge_adapter()
        peft_model.train()
        with pytest.raises(ValueError, match="eval"):
            peft_model(input_ids=ids, adapter_names=["a", "b", "c"])
        peft_model.eval()
        with pytest.raises(Exception):  # a failure inside the forward still clears the per-row names
            peft_model(input_ids=ids, attention_mask=mask[:, :2], adapter_names=["a", "b", "c"])
        assert_no_leftover(peft_model)
        after = peft_model(input_ids=ids, attention_mask=mask).logits
    assert_close(after, before)  # merge + unmerge round-trips up to float rounding
