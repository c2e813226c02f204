"""Conv2d and Embedding: forward, merge/unmerge, save/load and mixed batches against float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fourierft
from fourierft.layers_extra import embedding_delta
from helpers import VOCAB, assert_close, build, dw64, peft_own_layers


class TinyCNN(nn.Module):
    """A ViT-style patch embedding (4x4 patches, stride 4), a grouped 3x3 conv, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.conv = nn.Conv2d(16, 8, kernel_size=3, padding=1, groups=2, dilation=1, bias=False)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.patch(x)))).flatten(1))


def cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


def images(n=3):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def test_conv2d_forward_is_conv_with_w_plus_dw_and_merges(tmp_path):
    model = fourierft.get_peft_model(cnn(), fourierft.FourierFTConfig(target_modules=["patch", "conv"],
                                                                      n_frequency=30, scaling=50.0)).eval()
    ref = cnn().double()
    with torch.no_grad():
        for name in ("patch", "conv"):
            layer = model.base_model.model.get_submodule(name)
            assert (layer.out_features, layer.in_features) == {"patch": (16, 48), "conv": (8, 72)}[name]
            ref.get_submodule(name).weight += dw64(layer).reshape(ref.get_submodule(name).weight.shape)
        x = images()
        out = model(x)
        assert_close(out, ref(x.double()).float())
        assert not torch.allclose(out, cnn()(x), atol=1e-3)
        model.merge_adapter()
        assert_close(model(x), out)
        model.unmerge_adapter()
        assert_close(model(x), out)
        assert_close(model.base_model.model.patch.base_layer.weight, cnn().patch.weight)
        model.save_pretrained(tmp_path)
        loaded = fourierft.PeftModel.from_pretrained(cnn(), tmp_path)
        assert isinstance(loaded.base_model.model.conv, fourierft.Conv2d)
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert type(merged.patch) is nn.Conv2d and type(merged.conv) is nn.Conv2d
        assert_close(merged(x), out)


def test_patch_embedding_equals_the_linear_layer_on_unfolded_patches():
    """Why the (out, in * kh * kw) view: a stride-k patch conv is a Linear on patches, and gets the same dW."""
    conv = cnn().patch
    linear = nn.Linear(48, 16)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(16, 48))
        linear.bias.copy_(conv.bias)
    cfg = dict(n_frequency=40, random_loc_seed=5)
    wrap = lambda m: fourierft.get_peft_model(nn.Sequential(m), fourierft.FourierFTConfig(target_modules=["0"], **cfg))
    conv_model, lin_model = wrap(conv), wrap(linear)
    conv_layer, lin_layer = (m.base_model.model[0] for m in (conv_model, lin_model))
    assert isinstance(conv_layer, fourierft.Conv2d) and isinstance(lin_layer, fourierft.Linear)
    assert all(torch.equal(a, b) for a, b in zip(conv_layer.entries("default"), lin_layer.entries("default")))
    with torch.no_grad():
        lin_layer.fourierft_spectrum["default"].copy_(conv_layer.fourierft_spectrum["default"])
    x = images()
    patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (N, 16 patches, 48)
    with torch.no_grad():
        via_conv = conv_model(x).flatten(2).transpose(1, 2)  # (N, 16 patches, 16 channels)
        via_linear = lin_model(patches)
    assert_close(via_conv, via_linear)


def test_embedding_rows_match_the_dense_formula_and_its_gradient():
    emb = nn.Embedding(50, 12)
    model = fourierft.get_peft_model(nn.Sequential(emb),
                                     fourierft.FourierFTConfig(target_modules=["0"], n_frequency=25))
    layer = model.base_model.model[0]
    assert isinstance(layer, fourierft.Embedding)
    spectrum = layer.fourierft_spectrum["default"]
    ids = torch.tensor([[3, 7, 3, 49], [0, 7, 11, 25]])
    rows = embedding_delta(spectrum, *layer.entries("default"), 50, 12, layer.scaling("default"), ids)
    dense = dw64(layer)
    torch.testing.assert_close(rows.double(), dense[ids], rtol=1e-5, atol=1e-5 * dense.abs().max().item())
    g = torch.randn(rows.shape)
    (rows * g).sum().backward()
    grad = spectrum.grad.clone()
    spectrum.grad = None
    (F.embedding(ids, layer.get_delta_weight("default")) * g).sum().backward()
    torch.testing.assert_close(grad, spectrum.grad, rtol=1e-4, atol=1e-4)
    # the layer's own forward is the base lookup plus these rows
    spectrum.grad = None
    with torch.no_grad():
        assert_close(layer(ids), emb(ids) + rows.detach())


def llama_with_embeddings(**kw):
    torch.manual_seed(0)
    config = fourierft.FourierFTConfig(target_modules=["embed_tokens", "q_proj"], n_frequency=40, scaling=3000.0, **kw)
    return fourierft.get_peft_model(build("llama"), config).eval()


def test_embedding_in_a_model_forward_merge_save_load(tmp_path):
    model = llama_with_embeddings()
    emb = model.base_model.model.model.embed_tokens
    assert isinstance(emb, fourierft.FourierFTLayer) and (emb.out_features, emb.in_features) == (VOCAB, 32)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.base_model.model.model.embed_tokens(ids)
        assert_close(got, F.embedding(ids, emb.base_layer.weight.double() + dw64(emb)).float())
        out = model(input_ids=ids).logits
        # saved first: PEFT saves a targeted embedding's base weight too (save_embedding_layers), and merge +
        # unmerge leave float rounding in it
        model.save_pretrained(tmp_path)
        model.merge_adapter()
        assert_close(model(input_ids=ids).logits, out)
        model.unmerge_adapter()
        assert_close(model(input_ids=ids).logits, out)
        loaded = fourierft.PeftModel.from_pretrained(build("llama"), tmp_path)
        assert isinstance(loaded.base_model.model.model.embed_tokens, fourierft.Embedding)
        torch.testing.assert_close(loaded(input_ids=ids).logits, out, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert type(merged.model.embed_tokens) is nn.Embedding
        assert_close(merged(input_ids=ids).logits, out)
    import peft

    with peft_own_layers(), pytest.raises((TypeError, ValueError), match="not supported"):
        peft.PeftModel.from_pretrained(build("llama"), tmp_path)  # PEFT's own FourierFT refuses the Embedding loudly


def test_mixed_batches_on_conv_and_embedding():
    model = fourierft.get_peft_model(cnn(), fourierft.FourierFTConfig(target_modules=["patch", "conv"], n_frequency=30,
                                                                      scaling=50.0), "a")
    model.add_adapter("b", fourierft.FourierFTConfig(target_modules=["conv"], n_frequency=20, random_loc_seed=2,
                                                     scaling=80.0))
    model.eval()
    x, names = images(3), ["b", "__base__", "a"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    ref = model(x[i:i + 1])
            else:
                model.set_adapter(name)
                ref = model(x[i:i + 1])
            assert_close(mixed[i], ref[0])
    lm = llama_with_embeddings()
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed = lm(input_ids=ids, adapter_names=["default", "__base__"]).logits
        assert_close(mixed[0], lm(input_ids=ids[:1]).logits[0])
        with lm.disable_adapter():
            assert_close(mixed[1], lm(input_ids=ids[1:]).logits[0])


def test_targeting_and_refusals():
    model = fourierft.get_peft_model(build("llama"),
                                     fourierft.FourierFTConfig(target_modules="all-linear", n_frequency=8))
    assert not isinstance(model.base_model.model.model.embed_tokens, fourierft.FourierFTLayer)
    with pytest.raises(TypeError, match="max_norm"):
        fourierft.get_peft_model(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)),
                                 fourierft.FourierFTConfig(target_modules=["0"], n_frequency=4))
    grouped = fourierft.get_peft_model(cnn(), fourierft.FourierFTConfig(target_modules=["conv"], n_frequency=8))
    with pytest.raises(ValueError, match="groups=1"):
        fourierft.export_lora(grouped, "/nonexistent/never-written")


def test_conv2d_and_embedding_export_to_peft_lora(tmp_path):
    import peft

    model = fourierft.get_peft_model(cnn(), fourierft.FourierFTConfig(target_modules=["patch"], n_frequency=30,
                                                                      scaling=50.0)).eval()
    assert fourierft.export_lora(model, tmp_path / "cnn").max_relative_error < 1e-6
    theirs = peft.PeftModel.from_pretrained(cnn(), tmp_path / "cnn").eval()
    with torch.no_grad():
        assert_close(theirs(images()), model(images()))
    lm = llama_with_embeddings()
    assert fourierft.export_lora(lm, tmp_path / "lm").max_relative_error < 1e-6
    theirs = peft.PeftModel.from_pretrained(build("llama"), tmp_path / "lm").eval()
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(theirs(input_ids=ids).logits, lm(input_ids=ids).logits)
