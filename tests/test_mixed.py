"""Mixed-adapter batches through PEFT's own wrapper: ``peft_model(**batch, adapter_names=[...])`` and
``generate(..., adapter_names=...)``. Every row equals running it alone with its adapter active (``"__base__"``: the
base model itself); nothing persists after the call; bad names are refused before anything runs."""

from __future__ import annotations

import peft
import pytest
import torch

import fourierft
import fourierft.shared_entries as shared_entries
from fourierft.mixed import BASE
from fourierft.spectral import delta_weight_cos
from helpers import VOCAB, assert_close, build

ADAPTERS = {  # different seeds: different entries, so the layers take the row-group path
    "a": dict(n_frequency=30, scaling=150.0, random_loc_seed=1),
    "b": dict(n_frequency=20, scaling=300.0, random_loc_seed=2),
    "c": dict(n_frequency=25, scaling=100.0, random_loc_seed=3),
}
SHARED = {  # PEFT's default: one seed and n for all, so a and b share entries (the shared-entries kernel)
    "a": dict(n_frequency=30, scaling=150.0),
    "b": dict(n_frequency=30, scaling=300.0),
    "c": dict(n_frequency=25, scaling=100.0, random_loc_seed=3),
}


def make(name: str, targets, task_type=None, adapters=ADAPTERS, only_some: dict | None = None):
    torch.manual_seed(0)
    first, *rest = adapters
    cfg = lambda a: fourierft.FourierFTConfig(target_modules=(only_some or {}).get(a, targets), task_type=task_type,
                                             fan_in_fan_out=name == "gpt2", **adapters[a])
    peft_model = fourierft.get_peft_model(build(name), cfg(first), adapter_name=first)
    assert isinstance(peft_model, peft.PeftModel)
    for a in rest:
        peft_model.add_adapter(a, cfg(a))
    with torch.no_grad():  # heads differ per adapter, so a row that took the wrong head shows
        for n, p in peft_model.named_parameters():
            if ".modules_to_save." in n:
                p.add_(torch.randn_like(p) * 0.5)
    return peft_model.eval()


def alone(peft_model, name: str, **row):
    """The reference: this row as a batch of one, with only its adapter active (``__base__``: the base model)."""
    with torch.no_grad():
        if name == BASE:
            with peft_model.disable_adapter():
                return peft_model(**row).logits
        previous = peft_model.active_adapter
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


def hooks_left(peft_model) -> int:
    """Forward pre-hooks still registered on adapted layers and modules_to_save wrappers (must be none)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    return sum(len(m._forward_pre_hooks) for m in peft_model.modules()
               if isinstance(m, (fourierft.FourierFTLayer, AuxiliaryTrainingWrapper)))


def check_rows(peft_model, model_name, names, ids, mask):
    with torch.no_grad():
        mixed = peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
    assert hooks_left(peft_model) == 0
    base = build(model_name)
    for i, name in enumerate(names):
        row = dict(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1])
        assert_close(mixed[i], alone(peft_model, name, **row)[0])
        if name == BASE:  # the base model itself, not only our disabled adapters
            with torch.no_grad():
                assert_close(mixed[i], base(**row).logits[0])
    return mixed


@pytest.mark.parametrize("model_name,targets", [("llama", ["q_proj", "v_proj", "down_proj"]),
                                                ("gpt2", ["c_attn", "c_proj"])])
def test_causal_lm_rows_equal_running_alone(model_name, targets):
    peft_model = make(model_name, targets)
    names = ["a", "b", BASE, "c", "a", "b"]
    ids, mask = batch(len(names))
    mixed = check_rows(peft_model, model_name, names, ids, mask)
    # rows really differ per adapter (the test would be vacuous otherwise)
    assert not torch.allclose(mixed[0], alone(peft_model, "b", input_ids=ids[:1], attention_mask=mask[:1])[0])


def test_shared_entries_use_the_mixed_kernel_and_distinct_entries_do_not(monkeypatch):
    calls = []
    real = shared_entries.mixed_linear

    def spy(*args, **kwargs):
        calls.append(args[1].shape[0] - 1)  # K adapters in one call: K + 1 rows of weights
        return real(*args, **kwargs)

    monkeypatch.setattr(shared_entries, "mixed_linear", spy)
    targets = ["q_proj", "v_proj", "down_proj"]
    names = ["a", "c", BASE, "b", "a", "b"]
    ids, mask = batch(len(names))
    shared = make("llama", targets, adapters=SHARED)
    layers = [m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert all(torch.equal(m.fourierft_seeded_rows["a"], m.fourierft_seeded_rows["b"])
               and torch.equal(m.fourierft_seeded_cols["a"], m.fourierft_seeded_cols["b"]) for m in layers)
    assert not any(torch.equal(m.fourierft_seeded_rows["a"][:25], m.fourierft_seeded_rows["c"]) for m in layers)
    check_rows(shared, "llama", names, ids, mask)
    assert calls == [2] * len(layers)  # a and b in one call per layer; c row-grouped
    calls.clear()
    check_rows(make("llama", targets), "llama", names, ids, mask)
    assert calls == []  # every adapter has its own entries: nothing to share


def test_entries_are_compared_once_and_a_change_to_them_is_seen(monkeypatch):
    """Adapters are grouped by their entries' content hashes, kept with the entries (on CUDA, reading entries back
    or comparing them waits for the device): a second call reads nothing back; an in-place write into one adapter's
    entries is seen at the next call."""
    import fourierft.kernels._cache as cache

    targets = ["q_proj", "v_proj", "down_proj"]
    names = ["a", "c", BASE, "b", "a", "b"]
    ids, mask = batch(len(names))
    shared = make("llama", targets, adapters=SHARED)
    check_rows(shared, "llama", names, ids, mask)
    read_back = []
    real_equal, real_content = torch.equal, cache._content
    monkeypatch.setattr(torch, "equal", lambda a, b: read_back.append("equal") or real_equal(a, b))
    monkeypatch.setattr(cache, "_content", lambda idx: read_back.append("hash") or real_content(idx))
    with torch.no_grad():
        shared(input_ids=ids, attention_mask=mask, adapter_names=names)
    assert read_back == []
    layer = next(m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer))
    rows = layer.fourierft_seeded_rows["b"]
    rows[0] = (rows[0] + 1) % layer.out_features  # b's entries now differ from a's on this layer
    assert not real_equal(rows, layer.fourierft_seeded_rows["a"])
    calls = []
    real = shared_entries.mixed_linear
    monkeypatch.setattr(shared_entries, "mixed_linear",
                        lambda *args, **kwargs: calls.append(args[1].shape[0] - 1) or real(*args, **kwargs))
    check_rows(shared, "llama", names, ids, mask)  # b's rows follow b's new entries
    layers = [m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert len(calls) == len(layers) - 1  # this layer row-groups a and b now


def test_weights_are_made_once_and_a_change_to_coefficients_or_scaling_is_seen(monkeypatch):
    """At inference each layer lays out its groups' per-adapter weights once (decoding calls it for every token);
    an in-place write into a coefficient vector, a new scaling and a fused optimizer step (which bumps no version
    counter) are each seen at the next call."""
    targets = ["q_proj", "v_proj"]
    names = ["a", "c", BASE, "b", "a", "b"]
    ids, mask = batch(len(names))
    shared = make("llama", targets, adapters=SHARED)
    layers = [m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer)]
    made = []
    real = shared_entries.mixed_weights
    monkeypatch.setattr(shared_entries, "mixed_weights", lambda *a, **k: made.append(1) or real(*a, **k))
    check_rows(shared, "llama", names, ids, mask)
    assert len(made) == len(layers)  # one shared group (a, b) per layer
    made.clear()
    with torch.no_grad():
        shared(input_ids=ids, attention_mask=mask, adapter_names=names)
    assert made == []
    with torch.no_grad():
        layers[0].fourierft_spectrum["b"].mul_(3.0)
    layers[1].fourierft_scaling["a"] = 5.0
    check_rows(shared, "llama", names, ids, mask)
    assert len(made) == 2
    made.clear()
    params = [p for n, p in shared.named_parameters() if n.endswith("fourierft_spectrum.b")]
    step = torch.optim.AdamW(params, lr=0.5, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    step.step()
    check_rows(shared, "llama", names, ids, mask)
    assert len(made) == len(layers)


def test_one_adapter_for_every_row_runs_the_plain_forward(monkeypatch):
    """No gather or scatter of rows and no mixed kernel: the batch is served as with that adapter active."""
    calls = []
    monkeypatch.setattr(shared_entries, "mixed_linear", lambda *a, **k: calls.append("mixed"))
    monkeypatch.setattr(torch.Tensor, "index_add", lambda *a, **k: calls.append("index_add"))
    shared = make("llama", ["q_proj", "v_proj"], adapters=SHARED)
    ids, mask = batch(3)
    check_rows(shared, "llama", ["b"] * 3, ids, mask)
    check_rows(shared, "llama", [BASE] * 3, ids, mask)
    assert calls == []


@pytest.mark.parametrize("faster", ["factored", "lowrank"])
def test_auto_takes_the_path_measured_for_one_adapter_on_the_layer(monkeypatch, faster):
    """The mixed forms cost one adapter's call plus a per-row multiply: ``auto`` runs whichever of lowrank and
    factored was measured faster for one adapter on this layer's key (inference, this batch), asked of the
    dispatcher with the group's first adapter."""
    from fourierft.kernels.dispatch import Choice

    asked, paths = [], []
    slower = {"factored": "lowrank", "lowrank": "factored"}[faster]
    seconds = {faster: 1e-4, slower: 2e-4, "gemm": 5e-5}  # gemm: no mixed form, not a candidate here

    def choice(x, spectrum, rows, cols, d1, d2, scaling, training):
        asked.append((spectrum.shape[0], d1, d2, scaling, training))
        return Choice("gemm", "measured", seconds)

    real = shared_entries.mixed_linear
    monkeypatch.setattr(shared_entries, "resolve_choice", choice)
    monkeypatch.setattr(shared_entries, "mixed_linear", lambda *a, **k: paths.append(a[7]) or real(*a, **k))
    shared = make("llama", ["q_proj", "v_proj"], adapters=SHARED)
    names = ["a", "b", BASE, "b"]
    ids, mask = batch(len(names))
    check_rows(shared, "llama", names, ids, mask)
    layers = [m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer)]
    assert paths == [faster] * len(layers)
    assert asked == [(30, m.out_features, m.in_features, m.scaling("a"), False) for m in layers]


def test_entries_made_as_inference_tensors_are_served_without_a_plan():
    """An inference tensor has no version counter to check a remembered plan against: such a layer is grouped
    afresh at every call, with the same rows."""
    shared = make("llama", ["q_proj"], adapters=SHARED)
    layer = next(m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer))
    with torch.inference_mode():
        layer.fourierft_seeded_rows["b"] = layer.fourierft_seeded_rows["b"].clone()
    names = ["a", "b", BASE, "c"]
    ids, mask = batch(len(names))
    for _ in range(2):
        check_rows(shared, "llama", names, ids, mask)
    assert layer not in shared_entries._plans or not shared_entries._plans[layer]


def test_replaced_and_deleted_adapters_are_regrouped_and_their_entries_freed():
    import gc
    import weakref

    targets = ["q_proj", "v_proj", "down_proj"]
    names = ["a", "c", BASE, "b", "a", "b"]
    ids, mask = batch(len(names))
    shared = make("llama", targets, adapters=SHARED)
    check_rows(shared, "llama", names, ids, mask)  # a and b grouped: their entries are remembered
    layer = next(m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer))
    old_entries = weakref.ref(layer.fourierft_seeded_rows["b"])
    shared.delete_adapter("b")  # replaced by an adapter of the same name with entries of its own
    shared.add_adapter("b", fourierft.FourierFTConfig(target_modules=targets, n_frequency=30, scaling=300.0,
                                                      random_loc_seed=9))
    shared.eval()
    gc.collect()
    assert old_entries() is None  # nothing kept the deleted adapter's entries alive
    check_rows(shared, "llama", names, ids, mask)  # b's rows follow its new entries


def test_an_adapter_never_loaded_gets_the_clear_error_in_a_mixed_batch():
    """``low_cpu_mem_usage=True`` leaves the coefficients on the meta device until loaded; a and b share entries,
    so the error comes from the shared-entries path."""
    peft_model = make("llama", ["q_proj"], adapters={"a": SHARED["a"]})
    peft_model.add_adapter("b", fourierft.FourierFTConfig(target_modules=["q_proj"], **SHARED["b"]),
                           low_cpu_mem_usage=True)
    peft_model.eval()
    ids, mask = batch(2)
    with torch.no_grad(), pytest.raises(RuntimeError, match="adapter 'b' has no coefficients yet"):
        peft_model(input_ids=ids, attention_mask=mask, adapter_names=["a", "b"])
    assert hooks_left(peft_model) == 0


def test_index_tensors_made_under_inference_mode_serve_a_later_backward():
    """The row-index tensors a mixed batch makes once are normal tensors, also when first made under
    ``inference_mode``: an eval-mode model with gradients on saves them for its backward."""
    peft_model = make("llama", ["q_proj", "v_proj"])
    names = ["a", "b", BASE, "c"]
    ids, mask = batch(len(names))
    with torch.inference_mode():
        peft_model(input_ids=ids, attention_mask=mask, adapter_names=names)
    peft_model(input_ids=ids, attention_mask=mask, adapter_names=names).logits.square().sum().backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if n.endswith("fourierft_spectrum.a")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)  # a: the trainable adapter


def test_shared_entries_kernel_on_one_layer_against_float64():
    """One layer, a flattened (tokens, features) input: each row gets x @ dW_a.T of its own adapter."""
    torch.manual_seed(0)
    model = fourierft.get_peft_model(build("mlp"), fourierft.FourierFTConfig(target_modules=["lin0"], n_frequency=40),
                                     "a")
    for name, scaling in (("b", 90.0), ("c", 20.0)):
        model.add_adapter(name, fourierft.FourierFTConfig(target_modules=["lin0"], n_frequency=40, scaling=scaling))
    model.eval()
    layer = model.base_model.model.lin0
    x = torch.randn(5, 10)
    names = ["c", "a", BASE, "b", "c"]
    for path in ("auto", "lowrank", "factored", "dense"):
        layer.set_compute_path(path)
        with torch.no_grad():
            got = layer(x, adapter_names=names).double()
        base = x.double() @ layer.base_layer.weight.double().T + layer.base_layer.bias.double()
        for i, name in enumerate(names):
            want = base[i]
            if name != BASE:
                rows, cols = layer.entries(name)
                want = want + x[i].double() @ delta_weight_cos(layer.fourierft_spectrum[name], rows, cols, 20, 10,
                                                               layer.scaling(name)).T
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_adapter_on_some_layers_only():
    peft_model = make("llama", ["q_proj", "v_proj"], only_some={"b": ["o_proj"]})
    names = ["b", "a", "b"]
    ids, mask = batch(3)
    check_rows(peft_model, "llama", names, ids, mask)


def test_sequence_classification_heads_per_row():
    """modules_to_save heads (PEFT's own wrapper) also follow the row's adapter."""
    peft_model = make("bert", ["query", "value"], task_type="SEQ_CLS")
    heads = [m for m in peft_model.modules() if type(m).__name__ == "ModulesToSaveWrapper"]
    assert heads and all(set(m.modules_to_save) == {"a", "b", "c"} for m in heads)
    check_rows(peft_model, "bert", ["c", BASE, "a", "b", "c"], *batch(5))


@pytest.mark.parametrize("adapters,task_type", [(ADAPTERS, None), (SHARED, "CAUSAL_LM")],
                         ids=["distinct-PeftModel", "shared-PeftModelForCausalLM"])
@pytest.mark.parametrize("gen_kwargs", [dict(do_sample=False), dict(do_sample=False, num_beams=2)],
                         ids=["greedy", "beam"])
def test_generate_rows_equal_generating_alone(gen_kwargs, adapters, task_type):
    peft_model = make("gpt2", ["c_attn", "c_proj"], adapters=adapters, task_type=task_type)
    assert type(peft_model) is (peft.PeftModelForCausalLM if task_type else peft.PeftModel)
    names = ["a", BASE, "b"]
    ids = batch(3, seq=5)[0]
    kw = dict(max_new_tokens=4, pad_token_id=0, **gen_kwargs)
    base = build("gpt2")
    with torch.no_grad():
        out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **kw)
        assert hooks_left(peft_model) == 0
        for i, name in enumerate(names):
            row = dict(input_ids=ids[i:i + 1], attention_mask=torch.ones_like(ids[i:i + 1]))
            if name == BASE:
                ref = base.generate(**row, **kw)
            else:
                peft_model.set_adapter(name)
                ref = peft_model.generate(**row, **kw)
            assert torch.equal(out[i], ref[0]), (i, name)
        peft_model.set_adapter("a")


@pytest.mark.parametrize("path", ["lowrank", "factored"])
def test_layers_reading_one_input_share_its_transform(monkeypatch, path):
    """gate_proj and up_proj read the same hidden states through the same entries (one shape, one seed): in a
    mixed batch too, the input is transformed once per block (kernels._reuse), and every row still equals running
    alone."""
    import fourierft.kernels.mixed as kmixed

    ran, real = [], kmixed.reuse
    monkeypatch.setattr(kmixed, "reuse", lambda x, op, fn: real(x, op, lambda: ran.append(1) or fn()))
    shared = make("llama", ["gate_proj", "up_proj"], adapters=SHARED)
    shared.base_model.set_compute_path(path)
    layers = [m for m in shared.modules() if isinstance(m, fourierft.FourierFTLayer)]
    names = ["a", "b", BASE, "b", "a", "a"]  # only a and b (c's rows would take the row-group path in between)
    ids, mask = batch(len(names))
    ran.clear()
    with torch.no_grad():
        shared(input_ids=ids, attention_mask=mask, adapter_names=names)
    assert len(ran) == len(layers) // 2  # one per block: up_proj takes gate_proj's
    check_rows(shared, "llama", names, ids, mask)


def test_a_layer_checks_its_adapters_once_per_call(monkeypatch):
    """Decoding re-runs every layer at each step: within one ``generate`` a layer checks its adapters' state at its
    first use only; the plans hold nothing of them after the call, and a coefficient written between two calls is
    seen by the next one."""
    peft_model = make("llama", ["q_proj", "v_proj"], task_type="CAUSAL_LM", adapters=SHARED)
    layers = [m for m in peft_model.modules() if isinstance(m, fourierft.FourierFTLayer)]
    names = ["a", "b", "a", BASE]
    ids = batch(len(names), seq=5)[0]
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False,
              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    checks, real = [], shared_entries._state
    monkeypatch.setattr(shared_entries, "_state", lambda *a: checks.append(a[0]) or real(*a))
    with torch.no_grad():
        first = peft_model.generate(input_ids=ids, adapter_names=names, **kw)
        assert len(checks) == len(layers) and set(map(id, checks)) == set(map(id, layers))  # 4 steps, one check
        plans = [plan for layer in layers for plan in shared_entries._plans[layer].values()]
        assert plans and all(plan.trusted is None for plan in plans)
        for layer in layers:
            layer.fourierft_spectrum["b"].mul_(-2.0)
        again = peft_model.generate(input_ids=ids, adapter_names=names, **kw)
        peft_model.set_adapter("b")
        alone_b = peft_model.generate(input_ids=ids[1:2], **{**kw, "attention_mask": kw["attention_mask"][1:2]})
        peft_model.set_adapter("a")
    assert len(checks) == 2 * len(layers)
    assert_close(again.scores[0][1], alone_b.scores[0][0])  # b's row follows b's new coefficients
    assert not torch.allclose(again.scores[0][1], first.scores[0][1])
    assert_close(again.scores[0][0], first.scores[0][0])  # a's row did not move


def test_mlp_positional_input():
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
        for i, name in enumerate(names):
            if name == BASE:
                ref = build("mlp")(x[i:i + 1])
            else:
                peft_model.set_adapter(name)
                ref = peft_model(x[i:i + 1])
            assert_close(mixed[i], ref[0])


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])  # PEFT's task wrapper hands the tuner no input_ids
def test_errors_are_clear_and_change_nothing(task_type):
    peft_model = make("llama", ["q_proj"], task_type=task_type)
    assert type(peft_model) is (peft.PeftModelForCausalLM if task_type else peft.PeftModel)
    ids, mask = batch(3)
    with torch.no_grad():
        before = peft_model(input_ids=ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match="non-existing adapter.*nope"):
            peft_model(input_ids=ids, adapter_names=["a", "nope", "b"])
        with pytest.raises(ValueError, match="2 adapter_names for a batch of 3 rows"):
            peft_model(input_ids=ids, adapter_names=["a", "b"])
        with pytest.raises(ValueError, match="6 adapter_names for a batch of 3 rows"):  # not silently repeated
            peft_model(input_ids=ids, adapter_names=["a", "b", "c"] * 2)
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
        with pytest.raises(Exception):  # a failure inside the forward still removes the per-row hooks
            peft_model(input_ids=ids, attention_mask=mask[:, :2], adapter_names=["a", "b", "c"])
        assert hooks_left(peft_model) == 0
        after = peft_model(input_ids=ids, attention_mask=mask).logits
    assert_close(after, before)  # merge + unmerge round-trips up to float rounding
