"""FourierFT on quantized base layers: bitsandbytes 4-bit / 8-bit (CPU backend) and torchao int8 weight-only.

The adapter's contribution on a quantized layer must equal its contribution on the dequantized float layer with the
same coefficients, forward and backward; merging refuses unless asked to dequantize.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fourierft
from fourierft.quantized import dequantized_weight, quantization_kind
from helpers import dw64

bnb = pytest.importorskip("bitsandbytes")
from transformers import BitsAndBytesConfig  # noqa: E402

TOKENS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
CONFIG = dict(n_frequency=30, target_modules=["q_proj", "v_proj", "down_proj"], scaling=30.0)
QUANT = {
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                       bnb_4bit_compute_dtype=torch.float32),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory):
    torch.manual_seed(0)
    # intermediate 128, not 96: bitsandbytes 0.50's CPU 4-bit inference path fails (no adapter involved) when
    # in_features is not a multiple of its 64-element block.
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=64))
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    return path


def load(path, quant: str | None):
    kwargs = {} if quant is None else dict(quantization_config=BitsAndBytesConfig(**QUANT[quant]), device_map="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaForCausalLM.from_pretrained(path, **kwargs).eval()


def dequantized_copy(quantized_model, path):
    """The float model whose adapted layers hold exactly the weights the quantized layers compute with."""
    model = load(path, None)
    for name, module in quantized_model.named_modules():
        if quantization_kind(module):
            model.get_submodule(name).weight.data = dequantized_weight(module).float().clone()
    return model


@pytest.mark.parametrize("quant", list(QUANT))
def test_adapter_contribution_equals_float_layer(saved_base, quant):
    q = load(saved_base, quant)
    layer = q.model.layers[0].self_attn.q_proj
    assert quantization_kind(layer) and type(layer).__name__ in ("Linear4bit", "Linear8bitLt")
    float_model = dequantized_copy(q, saved_base)
    torch.manual_seed(1)
    qm = fourierft.get_peft_model(q, fourierft.FourierFTConfig(**CONFIG))
    torch.manual_seed(1)
    fm = fourierft.get_peft_model(float_model, fourierft.FourierFTConfig(**CONFIG))
    for qn in ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]:
        ql = qm.base_model.model.get_submodule(qn)
        fl = fm.base_model.model.get_submodule(qn)
        xin = torch.randn(5, ql.in_features, requires_grad=True)
        xf = xin.detach().clone().requires_grad_(True)
        q_delta = ql(xin) - ql.base_layer(xin)
        f_delta = fl(xf) - fl.base_layer(xf)
        # the adapter path is the same code on the same coefficients: equal up to the base matmul's rounding
        torch.testing.assert_close(q_delta, f_delta, rtol=2e-3, atol=2e-3)
        assert isinstance(ql, fourierft.Linear) and ql.scaling("default") == 30.0
        ref = xin.detach().double() @ dw64(ql).T
        assert ((q_delta.detach().double() - ref).norm() / ref.norm()) < 1e-2
        # the adapter alone (no base matmul rounding): the float64 formula's
        torch.testing.assert_close(ql.adapter_output("default", xin).detach().double(), ref, rtol=1e-4, atol=1e-5)
        g = torch.randn(5, ql.out_features)  # a plain .sum() would give the spectrum a zero gradient (sum_j cos = 0)
        (ql(xin) * g).sum().backward()
        (fl(xf) * g).sum().backward()
        gq = ql.fourierft_spectrum["default"].grad
        gf = fl.fourierft_spectrum["default"].grad
        assert gq is not None and gq.abs().sum() > 0
        torch.testing.assert_close(gq, gf, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(xin.grad, xf.grad, rtol=5e-2, atol=5e-2)  # through the quantized base matmul


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_training_step_updates_only_coefficients(saved_base, quant):
    model = fourierft.get_peft_model(load(saved_base, quant), fourierft.FourierFTConfig(**CONFIG))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dim() == 1 and p.numel() == 30 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    loss = model(input_ids=TOKENS, labels=TOKENS).loss
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, trainable))


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_save_load_same_logits(saved_base, quant, tmp_path):
    model = fourierft.get_peft_model(load(saved_base, quant), fourierft.FourierFTConfig(**CONFIG))
    with torch.no_grad():
        expected = model(input_ids=TOKENS).logits
    model.save_pretrained(tmp_path)
    loaded = fourierft.PeftModel.from_pretrained(load(saved_base, quant), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=TOKENS).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quant", ["nf4-double", "int8"])
def test_merge_refuses_and_dequantized_merge_is_exact(saved_base, quant):
    q = load(saved_base, quant)
    with torch.no_grad():
        q(input_ids=TOKENS)  # bitsandbytes repacks 4-bit weights / moves 8-bit scales at the first inference call
    float_model = dequantized_copy(q, saved_base)
    torch.manual_seed(4)
    model = fourierft.get_peft_model(q, fourierft.FourierFTConfig(**CONFIG))
    torch.manual_seed(4)
    reference = fourierft.get_peft_model(float_model, fourierft.FourierFTConfig(**CONFIG))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    packed = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="bitsandbytes .*-bit weight"):
        model.merge_adapter()
    with pytest.raises(ValueError, match="dequantize=True"):
        model.merge_and_unload()
    assert torch.equal(layer.base_layer.weight, packed) and not layer.merged
    merged = model.merge_and_unload(dequantize=True)
    for name in CONFIG["target_modules"]:
        module = next(m for n, m in merged.named_modules() if n.endswith(name))
        twin = next(m for n, m in reference.named_modules() if n.endswith(name) and hasattr(m, "base_layer"))
        assert type(module) is torch.nn.Linear
        # exactly dequantize(W) + dW
        expected = twin.base_layer.weight + twin.get_delta_weight("default")
        torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-6)
    assert quantization_kind(merged.model.layers[0].self_attn.k_proj)  # layers without adapters stay quantized


def test_torchao_int8_weight_only():
    torchao = pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.ReLU(), torch.nn.Linear(40, 24))
    quantize_(base, Int8WeightOnlyConfig())
    assert quantization_kind(base[0]).startswith("torchao")
    float_base = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.ReLU(), torch.nn.Linear(40, 24))
    for i in (0, 2):
        float_base[i].weight.data = dequantized_weight(base[i]).clone()
        float_base[i].bias.data = base[i].bias.detach().clone()
    config = fourierft.FourierFTConfig(n_frequency=20, target_modules=["0", "2"], scaling=10.0)
    torch.manual_seed(2)
    qm = fourierft.get_peft_model(base, config)
    torch.manual_seed(2)
    fm = fourierft.get_peft_model(float_base, config)
    x = torch.randn(6, 48)
    torch.testing.assert_close(qm(x), fm(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="torchao"):
        qm.merge_adapter()
    merged = qm.merge_and_unload(dequantize=True)
    torch.testing.assert_close(merged(x), fm(x), rtol=1e-4, atol=1e-4)
    assert torchao is not None


def test_mixed_batch_on_a_quantized_base(saved_base):
    """Rows through different adapters (two sharing entries, one not) on 4-bit layers equal each row alone. Checked
    per layer: bitsandbytes' CPU 4-bit kernel computes in reduced precision (an input change of 1e-6 moves its output
    by 1e-3), so whole-model logits amplify float32 rounding differences between equally exact adapter paths."""
    model = fourierft.get_peft_model(load(saved_base, "nf4-double"), fourierft.FourierFTConfig(**CONFIG), "a")
    model.add_adapter("b", fourierft.FourierFTConfig(**dict(CONFIG, scaling=80.0)))  # a's entries
    model.add_adapter("c", fourierft.FourierFTConfig(**dict(CONFIG, random_loc_seed=5)))
    model.eval()
    names = ["c", "a", "__base__", "b"]
    for key in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        layer = model.base_model.model.get_submodule(key)
        assert quantization_kind(layer.base_layer) == "bitsandbytes 4-bit"
        x = torch.randn(4, 7, layer.in_features, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            mixed = layer(x, adapter_names=names)
            for i, name in enumerate(names):
                want = layer.base_layer(x[i:i + 1])[0].double()
                if name != "__base__":
                    want = want + x[i].double() @ dw64(layer, name).T
                torch.testing.assert_close(mixed[i].double(), want, rtol=1e-5, atol=1e-5)
            # a and b share entries, not coefficients
            assert not torch.allclose(mixed[3], layer.base_layer(x[3:])[0] + layer.adapter_output("a", x[3]),
                                      atol=1e-4)
