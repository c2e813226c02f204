"""PEFT's own FourierFT test cases, carried over as tests of this package.

* ``TestCustomModelCases``: "Vanilla MLP 1..7 FourierFT" of PEFT's ``tests/test_custom_models.py`` (on PEFT's MLP,
  rebuilt in ``helpers.MLP``) and its multiple-active-adapter and requires-grad FourierFT cases.
* ``TestContract``: the checks PEFT's ``tests/testing_common.py`` runs on FourierFT, as one suite parametrized over
  ``CASES`` (those MLP cases plus tiny GPT-2 / LLaMA / BERT / RoBERTa / OPT models with random weights).

Every expected value comes from an independent reference: the real ``peft`` package given the same coefficients
(``helpers.peft_twin`` copies every parameter across), the float64 cosine-sum formula
(``fourierft.spectral.delta_weight_cos``), or a fresh copy of the base model.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import fourierft
from fourierft import FourierFTConfig, FourierFTLayer, get_peft_model
from fourierft.modules_to_save import ModulesToSaveWrapper
from fourierft.spectral import delta_weight_cos
from helpers import assert_close, build, loss_of, output, peft_twin, set_active_peft, to_peft_name

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*fan_in_fan_out.*:UserWarning",  # the correction for Conv1D / Linear targets, as PEFT warns
    "ignore:unmerging adapters to disable them:UserWarning",
    "ignore:Careful, disabling adapter layers with bias:UserWarning",  # peft, on the reference model
    "ignore:.*gradient_checkpointing.* is deprecated:FutureWarning",  # transformers 5 renames
)

# (id, model, FourierFTConfig kwargs), the same kwargs are given to peft.FourierFTConfig for the reference.
CASES = [
    # PEFT's "Vanilla MLP n FourierFT" (init_weights=False here, as PEFT's set_init_weights_false does for these checks)
    ("mlp1-regex", "mlp", dict(n_frequency=10, target_modules="lin0")),
    ("mlp2", "mlp", dict(n_frequency=10, target_modules=["lin0"])),
    ("mlp3", "mlp", dict(n_frequency=10, target_modules=["lin1"])),
    ("mlp5-mts", "mlp", dict(n_frequency=10, target_modules=["lin0"], modules_to_save=["lin1"])),
    ("mlp6-mts", "mlp", dict(n_frequency=10, target_modules=["lin0", "lin1"], modules_to_save=["lin1"])),
    ("mlp7-pattern", "mlp", dict(n_frequency_pattern={"lin0": 5, "lin1": 10}, target_modules=["lin0", "lin1"],
                                 modules_to_save=["lin1"])),
    ("mlp-both-fourier_only", "mlp", dict(n_frequency=12, scaling=50.0, target_modules=["lin0", "lin1"],
                                          bias="fourier_only")),
    ("mlp-bias-all", "mlp", dict(n_frequency=10, target_modules=["lin0"], bias="all", random_loc_seed=3)),
    ("gpt2-c_attn", "gpt2", dict(n_frequency=20, target_modules=["c_attn"], fan_in_fan_out=True)),
    ("gpt2-default", "gpt2", dict(n_frequency=16, scaling=300.0)),
    ("llama", "llama", dict(n_frequency=20, scaling=100.0, target_modules=["q_proj", "v_proj"])),
    ("llama-layer1", "llama", dict(n_frequency=24, target_modules=["q_proj", "down_proj"], layers_to_transform=[1],
                                   layers_pattern="layers", n_frequency_pattern={"down_proj": 40})),
    ("bert-seqcls", "bert", dict(n_frequency=20, target_modules=["query", "value"], task_type="SEQ_CLS")),
    ("roberta-seqcls-fourier_only", "roberta", dict(n_frequency=20, task_type="SEQ_CLS", bias="fourier_only")),
    ("opt", "opt", dict(n_frequency=20, target_modules=["q_proj", "v_proj"], bias="all")),
]
HF_CASES = [c for c in CASES if c[1] != "mlp"]
# Cases whose adapter is only spectral (no modules_to_save, no trained bias): several of them can be active at once.
SPECTRAL_ONLY = [c for c in CASES if not c[2].get("modules_to_save") and "task_type" not in c[2]
                 and c[2].get("bias", "none") == "none"]


def ids(cases):
    return [c[0] for c in cases]


def make(case, adapter_name: str = "default", dtype=torch.float32):
    """``(ours, model name, kwargs)``: our PeftModel on a fresh base model; saved copies and trained biases are
    perturbed so that they differ from the base model (a check that ignored them would fail)."""
    _, model_name, kwargs = case
    ours = get_peft_model(build(model_name, dtype), FourierFTConfig(**kwargs), adapter_name=adapter_name)
    perturb(ours, seed=5)
    return ours.eval(), model_name, kwargs


@torch.no_grad()
def perturb(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad and not name.endswith(".spectrum"):
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))


def layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FourierFTLayer)]


def base_weights(model):
    return {n: m.base_layer.weight.detach().clone() for n, m in layers(model)}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0, equal_nan=True, msg=f"{k} changed")


def second_kwargs(kwargs):
    """Another adapter on the same layers: other entries (seed) and other coefficients."""
    return {**kwargs, "random_loc_seed": kwargs.get("random_loc_seed", 777) + 1000}


def dw_reference(layer: FourierFTLayer, adapter: str) -> torch.Tensor:
    """float64 ``dW`` (out, in) from the cosine sum, with the entries PEFT draws (``torch.randperm``)."""
    a = layer.fourierft_adapters[adapter]
    flat = torch.randperm(layer.out_features * layer.in_features,
                          generator=torch.Generator().manual_seed(a.seed))[: a.n_frequency]
    rows, cols = flat // layer.in_features, flat % layer.in_features
    return delta_weight_cos(a.spectrum, rows, cols, layer.out_features, layer.in_features, a.scaling)


def trainable(model):
    return sorted(to_peft_name(n) for n, p in model.named_parameters() if p.requires_grad)


# ======================================================================================================================
class TestContract:
    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_forward_matches_peft(self, case):
        ours, m, kwargs = make(case)
        twin = peft_twin(m, {"default": kwargs}, ours)
        got = output(ours, m)
        assert_close(got, output(twin, m))
        assert not torch.allclose(got, output(build(m), m), atol=1e-4), "the adapter has no effect: a vacuous case"
        for name, layer in layers(ours):
            twin_layer = twin.get_submodule(name)
            assert torch.equal(layer.fourierft_adapters["default"].rows, twin_layer.indices["default"][0])
            assert torch.equal(layer.fourierft_adapters["default"].cols, twin_layer.indices["default"][1])
            assert_close(layer.get_delta_weight("default").double(), dw_reference(layer, "default"))

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_merge_matches_unmerged(self, case):
        ours, m, _ = make(case)
        before, w0 = output(ours, m), base_weights(ours)
        safe = copy.deepcopy(ours)
        ours.merge_adapter()
        assert_close(output(ours, m), before)
        for name, layer in layers(ours):
            dw = dw_reference(layer, "default")
            expected = w0[name].double() + (dw.T if layer.fan_in_fan_out else dw)
            assert_close(layer.base_layer.weight.double(), expected)
            assert layer.merged_adapters == ["default"]
        safe.merge_adapter(safe_merge=True)  # PEFT's _test_safe_merge: same weights as an unsafe merge
        assert_same_state(safe, snapshot(ours))

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_merge_is_idempotent(self, case):
        ours, m, _ = make(case)
        ours.merge_adapter()
        once, out_once = snapshot(ours), output(ours, m)
        ours.merge_adapter()
        ours.merge_adapter(["default"], safe_merge=True)
        assert_same_state(ours, once)
        assert torch.equal(output(ours, m), out_once)
        assert all(layer.merged_adapters == ["default"] for _, layer in layers(ours))

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_unmerge_restores(self, case):
        ours, m, _ = make(case)
        before, w0 = output(ours, m), base_weights(ours)
        ours.merge_adapter()
        ours.unmerge_adapter()
        for name, layer in layers(ours):
            assert not layer.merged
            assert_close(layer.base_layer.weight, w0[name], rtol=1e-6)
        assert_close(output(ours, m), before)
        ours.unmerge_adapter()  # nothing merged: nothing changes
        assert_close(output(ours, m), before)

    @pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_safe_merge_rejects_non_finite(self, case, bad):
        ours, m, _ = make(case)
        # Break the *last* adapted layer, so a merge that went layer by layer would already have changed the others.
        with torch.no_grad():
            layers(ours)[-1][1].fourierft_adapters["default"].spectrum[0] = bad
        before = snapshot(ours)
        with pytest.raises(ValueError):
            ours.merge_adapter(safe_merge=True)
        assert_same_state(ours, before)
        assert not any(layer.merged for _, layer in layers(ours))
        with pytest.raises(ValueError):
            ours.merge_and_unload(safe_merge=True)
        assert_same_state(ours, before)
        assert layers(ours) and ours.peft_config

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_merge_and_unload(self, case):
        ours, m, kwargs = make(case)
        before = output(ours, m)
        twin = peft_twin(m, {"default": kwargs}, ours)
        # (peft's own merge_and_unload crashes on RoBERTa's classification head in modules_to_save: compare with
        # its merged forward instead)
        twin.merge_adapter()
        expected = output(twin, m)
        merged = ours.merge_and_unload()
        assert not any(isinstance(x, (FourierFTLayer, ModulesToSaveWrapper)) for x in merged.modules())
        assert sorted(merged.state_dict()) == sorted(build(m).state_dict())
        assert_close(output(merged, m), expected)
        assert_close(output(merged, m), before)

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_unload(self, case):
        ours, m, kwargs = make(case)
        saved = [n.removeprefix("base_model.model.") + "." for n, x in ours.named_modules()
                 if isinstance(x, ModulesToSaveWrapper)]
        adapted = [n.removeprefix("base_model.model.") + "." for n, _ in layers(ours)]
        unmerged = {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v.clone()
                    for k, v in ours.state_dict().items()}
        ours.merge_adapter()  # unload also unmerges
        plain = ours.unload()
        fresh = build(m).state_dict()
        assert not any(isinstance(x, (FourierFTLayer, ModulesToSaveWrapper)) for x in plain.modules())
        sd = plain.state_dict()
        assert sorted(sd) == sorted(fresh)
        for k in fresh:
            if any(k.startswith(s) for s in saved):  # the original module comes back (peft 0.21: the trained copy)
                assert torch.equal(sd[k], fresh[k]), k
            elif any(k.startswith(s) for s in adapted):  # the weights as they were before merging
                assert_close(sd[k], unmerged[k], rtol=1e-6)
            else:  # untouched, or a trained bias
                assert torch.equal(sd[k], unmerged[k]), k
        if kwargs.get("bias", "none") == "none":  # trained biases stay trained (as in PEFT); otherwise the base comes back
            assert_close(output(plain, m), output(build(m), m))

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_save_load_roundtrip(self, case, tmp_path):
        ours, m, kwargs = make(case)
        expected = output(ours, m)
        ours.save_pretrained(tmp_path)
        assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
        loaded = fourierft.PeftModel.from_pretrained(build(m), tmp_path).eval()
        assert_close(output(loaded, m), expected, rtol=1e-6)
        assert trainable(loaded) == []  # is_trainable=False: inference only
        again = fourierft.PeftModel.from_pretrained(build(m), tmp_path, is_trainable=True)
        assert trainable(again) == trainable(ours)
        # the reference package reads the same folder to the same logits
        theirs = peft.PeftModel.from_pretrained(build(m), str(tmp_path)).eval()
        assert_close(output(theirs, m), expected)

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_save_load_non_default_adapter(self, case, tmp_path):
        ours, m, kwargs = make(case)
        ours.add_adapter("other", FourierFTConfig(**second_kwargs(kwargs)))
        ours.set_adapter("other")
        perturb(ours, seed=6)
        expected_other, expected_default = output(ours, m), None
        ours.set_adapter("default")
        expected_default = output(ours, m)
        ours.save_pretrained(tmp_path)
        assert os.path.isfile(tmp_path / "other" / "adapter_model.safetensors")
        assert os.path.isfile(tmp_path / "other" / "adapter_config.json")
        other = fourierft.PeftModel.from_pretrained(build(m), tmp_path, subfolder="other", adapter_name="other")
        assert other.active_adapters == ["other"]
        assert_close(output(other.eval(), m), expected_other, rtol=1e-6)
        both = fourierft.PeftModel.from_pretrained(build(m), tmp_path).eval()
        both.load_adapter(tmp_path / "other", "other")
        assert both.active_adapters == ["default"]
        assert_close(output(both, m), expected_default, rtol=1e-6)
        both.set_adapter("other")
        assert_close(output(both, m), expected_other, rtol=1e-6)

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_disable_adapter(self, case):
        ours, m, kwargs = make(case)
        twin = peft_twin(m, {"default": kwargs}, ours)
        with twin.disable_adapter():
            base = output(twin, m)
        if kwargs.get("bias", "none") == "none":
            assert_close(base, output(build(m), m), rtol=1e-6)
        adapted = output(ours, m)
        with ours.disable_adapter():
            assert_close(output(ours, m), base)
        assert_close(output(ours, m), adapted)
        # merged: disabled gives the base outputs, and the merge is back afterwards
        ours.merge_adapter()
        merged = base_weights(ours)
        with ours.disable_adapter():
            assert_close(output(ours, m), base)
        assert all(layer.merged_adapters == ["default"] for _, layer in layers(ours))
        for name, w in base_weights(ours).items():
            assert_close(w, merged[name], rtol=1e-6)
        assert_close(output(ours, m), adapted)

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_delete_active_adapter(self, case):
        ours, m, kwargs = make(case)
        only_default = output(ours, m)
        ours.add_adapter("other", FourierFTConfig(**second_kwargs(kwargs)))
        ours.set_adapter("other")
        assert not torch.allclose(output(ours, m), only_default)
        ours.delete_adapter("other")
        assert ours.active_adapters == ["default"]
        assert list(ours.peft_config) == ["default"]
        assert not [n for n, _ in ours.named_parameters() if ".other." in n or n.endswith(".other")]
        assert_close(output(ours, m), only_default, rtol=1e-6)
        assert trainable(ours) == trainable(make(case)[0])

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_delete_inactive_adapter(self, case):
        ours, m, kwargs = make(case)
        only_default, names = output(ours, m), trainable(ours)
        ours.add_adapter("other", FourierFTConfig(**second_kwargs(kwargs)))
        ours.delete_adapter("other")
        assert ours.active_adapters == ["default"] and list(ours.peft_config) == ["default"]
        assert not [n for n, _ in ours.named_parameters() if ".other." in n or n.endswith(".other")]
        assert_close(output(ours, m), only_default, rtol=1e-6)
        assert trainable(ours) == names

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_delete_unknown_or_merged_adapter_raises(self, case):
        ours, m, _ = make(case)
        before = snapshot(ours)
        with pytest.raises(ValueError):
            ours.delete_adapter("unknown")
        assert_same_state(ours, before)
        ours.merge_adapter()
        merged = snapshot(ours)
        with pytest.raises(ValueError):  # PEFT: test_delete_merged_adapter_raises_without_mutation
            ours.delete_adapter("default")
        assert_same_state(ours, merged)
        assert list(ours.peft_config) == ["default"]

    @pytest.mark.parametrize("case", SPECTRAL_ONLY, ids=ids(SPECTRAL_ONLY))
    def test_several_active_adapters_are_summed(self, case):
        ours, m, kwargs = make(case)
        kwargs_b = second_kwargs(kwargs)
        ours.add_adapter("b", FourierFTConfig(**kwargs_b))
        ours.set_adapter(["default", "b"])
        assert ours.active_adapters == ["default", "b"]
        twin = peft_twin(m, {"default": kwargs, "b": kwargs_b}, ours, active=["default", "b"])
        both = output(ours, m)
        assert_close(both, output(twin, m))
        g = torch.Generator().manual_seed(0)
        for _, layer in layers(ours):  # y = base(x) + x dWa^T + x dWb^T, against the float64 formula
            x = torch.randn(3, layer.in_features, generator=g)
            with torch.no_grad():
                got = layer(x).double() - layer.base_layer(x).double()
            expected = x.double() @ (dw_reference(layer, "default") + dw_reference(layer, "b")).T
            assert_close(got, expected)
        ours.merge_adapter()
        assert all(sorted(layer.merged_adapters) == ["b", "default"] for _, layer in layers(ours))
        assert_close(output(ours, m), both)

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_only_adapter_params_trainable(self, case):
        ours, m, kwargs = make(case)
        twin = peft_twin(m, {"default": kwargs}, ours)
        twin.train()  # peft sets requires_grad at creation; copying values does not change it
        assert trainable(ours) == sorted(n for n, p in twin.named_parameters() if p.requires_grad)
        trainable_count, total = ours.get_nb_trainable_parameters()
        assert (trainable_count, total) == twin.get_nb_trainable_parameters()

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_training_changes_only_trainable(self, case):
        ours, m, _ = make(case)
        before = {n: p.detach().clone() for n, p in ours.named_parameters()}
        names = {n for n, p in ours.named_parameters() if p.requires_grad}
        opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
        ours.train()
        for _ in range(3):
            opt.zero_grad()
            loss_of(ours, m).backward()
            opt.step()
        for n, p in ours.named_parameters():
            if n in names:
                assert p.grad is not None, n
                # (a key bias gets no gradient: softmax ignores a shift of all scores of a query)
                if n.endswith(".spectrum") or p.grad.abs().max() > 1e-8:
                    assert not torch.equal(p, before[n]), f"{n} was not trained"
            else:
                assert torch.equal(p, before[n]), f"{n} changed but is frozen"
                assert p.grad is None

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_half_precision_forward(self, case, dtype):
        ours, m, kwargs = make(case, dtype=dtype)
        out = output(ours, m)
        assert out.dtype == dtype and torch.isfinite(out).all()
        eps = torch.finfo(dtype).eps
        g = torch.Generator().manual_seed(0)
        for _, layer in layers(ours):
            assert layer.base_layer.weight.dtype == dtype
            x = torch.randn(4, layer.in_features, generator=g).to(dtype)
            with torch.no_grad():
                y = layer(x)
                contribution = y.double() - layer.base_layer(x).double()
            assert y.dtype == dtype
            reference = x.double() @ dw_reference(layer, "default").T
            err = (contribution - reference).abs().max().item()
            assert err <= 2 * eps * y.double().abs().max().item() + 1e-6, err
        # the whole model, against peft in the same dtype with the same coefficients
        twin = peft_twin(m, {"default": kwargs}, ours)
        scale = out.float().abs().max().item()
        assert (out.float() - output(twin, m).float()).abs().max().item() <= 16 * eps * max(scale, 1.0)

    @pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
    @pytest.mark.parametrize("case", HF_CASES, ids=ids(HF_CASES))
    def test_gradient_checkpointing(self, case, reentrant):
        ours, m, _ = make(case)
        reference = copy.deepcopy(ours).train()
        loss_of(reference, m).backward()
        ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        base = ours.get_base_model()
        assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
        ours.train()
        loss_of(ours, m).backward()
        ref_params = dict(reference.named_parameters())
        for n, p in ours.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
                assert_close(p.grad, ref_params[n].grad, rtol=1e-4)
            else:
                assert p.grad is None

    @pytest.mark.parametrize("case", CASES, ids=ids(CASES))
    def test_low_cpu_mem_usage(self, case, tmp_path):
        ours, m, kwargs = make(case)
        expected = output(ours, m)
        ours.save_pretrained(tmp_path)
        lazy = get_peft_model(build(m), FourierFTConfig(**kwargs), low_cpu_mem_usage=True)
        spectra = [a.spectrum for _, layer in layers(lazy) for a in layer.fourierft_adapters.values()]
        assert spectra and all(s.is_meta for s in spectra)
        loaded = fourierft.PeftModel.from_pretrained(build(m), tmp_path, low_cpu_mem_usage=True).eval()
        assert not any(p.is_meta for p in loaded.parameters())
        assert not any(b.is_meta for b in loaded.buffers())
        assert_close(output(loaded, m), expected, rtol=1e-6)
        # load_adapter with low_cpu_mem_usage beside an existing adapter
        holder = fourierft.PeftModel.from_pretrained(build(m), tmp_path).eval()
        holder.load_adapter(tmp_path, "again", low_cpu_mem_usage=True)
        holder.set_adapter("again")
        assert not any(p.is_meta for p in holder.parameters())
        assert_close(output(holder, m), expected, rtol=1e-6)


def test_full_spectrum_of_ones_by_hand():
    """All ``d1 d2`` coefficients equal to 1: ``ifft2`` of an all-ones spectrum is a unit impulse, so
    ``dW = scaling`` at ``[0, 0]`` and 0 elsewhere, whatever order the entries are drawn in."""
    base = torch.nn.Sequential(torch.nn.Linear(3, 4))
    w0 = base[0].weight.detach().clone()
    model = get_peft_model(base, FourierFTConfig(n_frequency=12, scaling=2.0, target_modules=["0"], init_weights=True))
    layer = layers(model)[0][1]
    with torch.no_grad():
        layer.fourierft_adapters["default"].spectrum.fill_(1.0)
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    with torch.no_grad():
        delta = model(x) - layer.base_layer(x)
    expected = torch.zeros(2, 4)
    expected[:, 0] = 2.0 * x[:, 0]
    torch.testing.assert_close(delta, expected, atol=1e-6, rtol=0)
    model.merge_adapter()
    expected_w = w0.clone()
    expected_w[0, 0] += 2.0
    torch.testing.assert_close(layer.base_layer.weight.detach(), expected_w, atol=1e-6, rtol=0)


# ======================================================================================================================
# PEFT's tests/test_custom_models.py, FourierFT entries
VANILLA_MLP = [  # TEST_CASES, verbatim
    ("Vanilla MLP 1 FourierFT", dict(n_frequency=10, target_modules="lin0", init_weights=True)),
    ("Vanilla MLP 2 FourierFT", dict(n_frequency=10, target_modules=["lin0"], init_weights=True)),
    ("Vanilla MLP 3 FourierFT", dict(n_frequency=10, target_modules=["lin1"], init_weights=True)),
    ("Vanilla MLP 5 FourierFT", dict(n_frequency=10, target_modules=["lin0"], modules_to_save=["lin1"],
                                     init_weights=True)),
    ("Vanilla MLP 6 FourierFT", dict(n_frequency=10, target_modules=["lin0", "lin1"], modules_to_save=["lin1"],
                                     init_weights=True)),
    ("Vanilla MLP 7 FourierFT", dict(n_frequency_pattern={"lin0": 5, "lin1": 10}, target_modules=["lin0", "lin1"],
                                     modules_to_save=["lin1"], init_weights=True)),
]
MULTIPLE_ACTIVE = [  # MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES, verbatim
    ("FourierFT Same", dict(n_frequency=10, target_modules=["lin0"]), dict(n_frequency=10, target_modules=["lin0"])),
    ("FourierFT Different", dict(n_frequency=10, target_modules=["lin0"]),
     dict(n_frequency=10, target_modules=["lin1"])),
]


class TestCustomModelCases:
    @pytest.mark.parametrize("name, kwargs", VANILLA_MLP, ids=[c[0] for c in VANILLA_MLP])
    def test_vanilla_mlp_init_weights_is_identity(self, name, kwargs):
        ours = get_peft_model(build("mlp"), FourierFTConfig(**kwargs)).eval()
        twin = peft_twin("mlp", {"default": kwargs}, ours)  # also checks the same layers are adapted, same n
        for n, layer in layers(ours):
            spectrum = layer.fourierft_adapters["default"].spectrum
            assert torch.equal(spectrum, torch.zeros_like(spectrum))
            assert spectrum.numel() == twin.get_submodule(n).fourierft_n_frequency["default"]
        assert torch.equal(output(ours, "mlp"), output(build("mlp"), "mlp"))
        assert "default" in ours.peft_config and ours.active_adapter == "default"

    @pytest.mark.parametrize("name, kwargs", VANILLA_MLP, ids=[c[0] for c in VANILLA_MLP])
    def test_vanilla_mlp_adapter_name(self, name, kwargs, tmp_path):
        # PEFT's _test_adapter_name / _test_save_pretrained with a custom name and init_weights=False
        kwargs = {**kwargs, "init_weights": False}
        ours = get_peft_model(build("mlp"), FourierFTConfig(**kwargs), adapter_name="custom").eval()
        assert ours.active_adapter == "custom"
        assert all("custom" in layer.fourierft_adapters for _, layer in layers(ours))
        twin = peft_twin("mlp", {"custom": kwargs}, ours)
        assert_close(output(ours, "mlp"), output(twin, "mlp"))
        ours.save_pretrained(tmp_path)
        loaded = fourierft.PeftModel.from_pretrained(build("mlp"), tmp_path / "custom", adapter_name="custom")
        assert_close(output(loaded.eval(), "mlp"), output(ours, "mlp"), rtol=1e-6)

    # --- TestMultipleActiveAdapters ---------------------------------------------------------------------------------
    @staticmethod
    def _two(kw1, kw2, names=("adapter_1", "adapter_2")):
        torch.manual_seed(0)
        model = get_peft_model(build("mlp"), FourierFTConfig(**kw1), adapter_name=names[0])
        model.add_adapter(names[1], FourierFTConfig(**kw2))
        return model.eval()

    @pytest.mark.parametrize("name, kw1, kw2", MULTIPLE_ACTIVE, ids=[c[0] for c in MULTIPLE_ACTIVE])
    def test_multiple_active_adapters_forward(self, name, kw1, kw2):
        model = self._two(kw1, kw2)
        model.set_adapter("adapter_1")
        out1 = output(model, "mlp")
        model.set_adapter("adapter_2")
        out2 = output(model, "mlp")
        model.set_adapter(["adapter_1", "adapter_2"])
        combined = output(model, "mlp")
        assert not torch.allclose(out1, out2, atol=1e-5)
        assert not torch.allclose(out1, combined, atol=1e-5)
        assert not torch.allclose(out2, combined, atol=1e-5)
        twin = peft_twin("mlp", {"adapter_1": kw1, "adapter_2": kw2}, model, active=["adapter_1", "adapter_2"])
        assert_close(combined, output(twin, "mlp"))
        set_active_peft(twin, ["adapter_2"])
        assert_close(out2, output(twin, "mlp"))

    @pytest.mark.parametrize("name, kw1, kw2", MULTIPLE_ACTIVE, ids=[c[0] for c in MULTIPLE_ACTIVE])
    def test_multiple_active_adapters_merge_and_unmerge(self, name, kw1, kw2):
        base = output(build("mlp"), "mlp")
        model = self._two(kw1, kw2)
        model.set_adapter(["adapter_1", "adapter_2"])
        combined = output(model, "mlp")
        model.merge_adapter()
        assert_close(output(model, "mlp"), combined)
        model.unmerge_adapter()
        assert_close(output(model, "mlp"), combined)
        with model.disable_adapter():
            assert_close(output(model, "mlp"), base)

    @pytest.mark.parametrize("name, kw1, kw2", MULTIPLE_ACTIVE, ids=[c[0] for c in MULTIPLE_ACTIVE])
    def test_merge_layers_multi(self, name, kw1, kw2):
        model = self._two(kw1, kw2, names=("default", "adapter-2"))
        out1 = output(model, "mlp")
        model.set_adapter("adapter-2")
        out2 = output(model, "mlp")
        assert not torch.allclose(out1, out2, atol=1e-3, rtol=1e-3)
        model.set_adapter("default")
        assert torch.equal(output(model, "mlp"), out1)
        twin = peft_twin("mlp", {"default": kw1, "adapter-2": kw2}, model)
        copy1, copy2 = copy.deepcopy(model), copy.deepcopy(model)
        merged_all = model.merge_and_unload(adapter_names=["adapter-2", "default"])
        assert_close(output(merged_all, "mlp"), output(twin.merge_and_unload(adapter_names=["adapter-2", "default"]),
                                                       "mlp"))
        assert not torch.allclose(output(merged_all, "mlp"), out1, atol=1e-3, rtol=1e-3)
        assert not torch.allclose(output(merged_all, "mlp"), out2, atol=1e-3, rtol=1e-3)
        assert_close(output(copy1.merge_and_unload(adapter_names=["adapter-2"]), "mlp"), out2)
        assert_close(output(copy2.merge_and_unload(adapter_names=["default"]), "mlp"), out1)

    @pytest.mark.parametrize("name, kw1, kw2", MULTIPLE_ACTIVE, ids=[c[0] for c in MULTIPLE_ACTIVE])
    def test_sequential_merge_matches_batch_merge(self, name, kw1, kw2):
        model = self._two(kw1, kw2)
        sequential = copy.deepcopy(model)
        model.merge_adapter(["adapter_1", "adapter_2"])
        sequential.merge_adapter(["adapter_1"])
        sequential.merge_adapter(["adapter_2"])
        assert_close(output(sequential, "mlp"), output(model, "mlp"))
        # and both equal base + dW_1 + dW_2 from the float64 formula
        w = build("mlp").state_dict()
        for n, layer in layers(model):
            expected = w[f"{n.removeprefix('base_model.model.')}.weight"].double()
            for a in layer.merged_adapters:
                expected = expected + dw_reference(layer, a)
            assert_close(layer.base_layer.weight.double(), expected)

    @pytest.mark.parametrize("name, kw1, kw2", MULTIPLE_ACTIVE, ids=[c[0] for c in MULTIPLE_ACTIVE])
    def test_unmerge_after_sequential_merge_restores_base(self, name, kw1, kw2):
        base = output(build("mlp"), "mlp")
        model = self._two(kw1, kw2)
        model.merge_adapter(["adapter_1"])
        model.merge_adapter(["adapter_2"])
        model.unmerge_adapter()
        with model.disable_adapter():
            assert_close(output(model, "mlp"), base)

    # --- TestPeftCustomModel / TestRequiresGrad ---------------------------------------------------------------------
    @pytest.mark.parametrize("same", [False, True], ids=["different_targets", "same_targets"])
    def test_requires_grad_fourierft(self, same):
        model = get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"]))
        model.add_adapter("adapter1", FourierFTConfig(n_frequency=10, target_modules=["lin0" if same else "lin1"]))
        first = ["base_model.model.lin0.fourierft_spectrum.default"]
        second = [f"base_model.model.{'lin0' if same else 'lin1'}.fourierft_spectrum.adapter1"]
        assert trainable(model) == first
        model.set_adapter("default")
        assert trainable(model) == first
        model.set_adapter("adapter1")
        assert trainable(model) == second
        with model.disable_adapter():
            # PEFT's check_requires_grad inside disable_adapter() expects nothing trainable
            assert trainable(model) == [], "disable_adapter() leaves the adapter trainable"
        assert trainable(model) == second

    def test_multiple_active_adapters_with_same_modules_to_save_raises(self):
        # A full module cannot be summed: PEFT refuses several active adapters saving the same module.
        model = get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"],
                                                             modules_to_save=["lin1"]))
        model.add_adapter("other", FourierFTConfig(n_frequency=10, target_modules=["lin0"], modules_to_save=["lin1"]))
        with pytest.raises(ValueError):
            model.set_adapter(["default", "other"])

    def test_delete_adapter_multiple_adapters_with_modules_to_save(self):
        model = get_peft_model(build("mlp"), FourierFTConfig(n_frequency=10, target_modules=["lin0"],
                                                             modules_to_save=["lin1"]))
        model.add_adapter("adapter1", FourierFTConfig(n_frequency=10, target_modules=["lin0"],
                                                      modules_to_save=["lin1"]))
        model.add_adapter("adapter2", FourierFTConfig(n_frequency=10, target_modules=["lin0"],
                                                      modules_to_save=["lin1"]))
        wrapper = model.get_base_model().lin1
        assert set(wrapper.modules_to_save) == {"default", "adapter1", "adapter2"}
        model.set_adapter("adapter1")
        model.delete_adapter("adapter1")
        assert set(wrapper.modules_to_save) == {"default", "adapter2"}
        assert model.active_adapters == ["default"] and wrapper.active_adapter == "default"
        model.delete_adapter("adapter2")
        assert set(wrapper.modules_to_save) == {"default"}
