"""Tiny models (PEFT's test MLP, transformers models from configs with random weights) and a PEFT twin builder.

Every builder is deterministic: two calls give bit-identical weights, so a model wrapped by ``fourierft`` can be
compared with the same model wrapped by the real ``peft`` package, or with a fresh copy of the base model.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

VOCAB = 64


class MLP(nn.Module):
    """PEFT's ``tests/test_custom_models.py::MLP``: lin0 (10 -> 20), ReLU, Dropout, lin1 (20 -> 2), LogSoftmax."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X):
        X = X.to(next(self.parameters()).dtype)
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(X)))))


def _hf_model(name: str) -> nn.Module:
    import transformers as tf

    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg)
    if name == "llama":
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        return tf.LlamaForCausalLM(cfg)
    if name == "opt":
        cfg = tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                           max_position_embeddings=32, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                           bos_token_id=0, eos_token_id=0, pad_token_id=1)
        return tf.OPTForCausalLM(cfg)
    if name in ("bert", "roberta"):
        kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=40, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if name == "bert":
            return tf.BertForSequenceClassification(tf.BertConfig(**kw))
        return tf.RobertaForSequenceClassification(tf.RobertaConfig(pad_token_id=1, **kw))
    raise KeyError(name)


_BUILT: dict[str, nn.Module] = {}


def build(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh base model in eval mode; the same ``name`` always gives the same weights (a copy of a cached one)."""
    if name not in _BUILT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = MLP() if name == "mlp" else _hf_model(name)
        if name != "mlp":
            model.config.use_cache = False
        _BUILT[name] = model.eval()
    return copy.deepcopy(_BUILT[name]).to(dtype).eval()


def inputs(name: str) -> dict[str, torch.Tensor]:
    if name == "mlp":
        return {"X": torch.arange(90).view(9, 10)}  # PEFT's prepare_inputs_for_testing
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on one row
    return {"input_ids": ids, "attention_mask": mask}


def output(model: nn.Module, name: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs(name))
    return out if isinstance(out, torch.Tensor) else out.logits


def loss_of(model: nn.Module, name: str) -> torch.Tensor:
    out = model(**inputs(name))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return (logits.float() ** 2).mean() if name != "mlp" else -logits[:, 0].mean()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal within ``rtol`` of the expected tensor's scale (max |expected|), elementwise."""
    expected = expected.to(actual.dtype)
    scale = expected.abs().max().clamp_min(1.0).item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# --- the real peft package as a reference --------------------------------------------------------------------------
_OURS_SPECTRUM = re.compile(r"\.fourierft_adapters\.([^.]+)\.spectrum$")


def to_peft_name(name: str) -> str:
    """Our parameter name -> PEFT's (``<layer>.fourierft_adapters.<a>.spectrum`` -> ``<layer>.fourierft_spectrum.<a>``;
    everything else, ``base_layer``, ``original_module``, ``modules_to_save.<a>``, has PEFT's layout already)."""
    return _OURS_SPECTRUM.sub(r".fourierft_spectrum.\1", name)


def peft_twin(model_name: str, adapters: dict[str, dict], ours: nn.Module, active: list[str] | None = None):
    """The same base model wrapped by the real ``peft`` with the same adapters, every parameter copied from ``ours``.

    ``adapters`` maps adapter name -> FourierFTConfig kwargs (first one created by ``get_peft_model``). Asserts that
    both models have the same parameter names (after :func:`to_peft_name`) and shapes, so nothing is left uncopied.
    """
    import peft

    base = build(model_name, dtype=next(ours.parameters()).dtype)
    names = list(adapters)
    twin = peft.get_peft_model(base, peft.FourierFTConfig(**adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        twin.add_adapter(name, peft.FourierFTConfig(**adapters[name]))
    ours_params = {to_peft_name(k): v for k, v in ours.named_parameters()}
    twin_params = dict(twin.named_parameters())
    assert sorted(ours_params) == sorted(twin_params), "parameter layout differs from peft's"
    with torch.no_grad():
        for key, p in twin_params.items():
            assert p.shape == ours_params[key].shape, key
            p.copy_(ours_params[key])
    set_active_peft(twin, active or [names[0]])
    return twin.eval()


def set_active_peft(twin, names: list[str]) -> None:
    """Several active adapters in peft, as its own tests do it (layer by layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in twin.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            module.set_adapter(names if len(names) > 1 else names[0])


# --- PEFT's own FourierFT layers as the peer (fourierft.unregister()) ----------------------------------------------
def peft_own_layers():
    """A context in which PEFT builds its *own* FourierFT layers (``fourierft.unregister()``); the registration
    state from before is restored on exit. Models built inside keep PEFT's layers."""
    import fourierft

    return fourierft.unregistered()


def fourierft_layers_of(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(ours, peft's)``: the FourierFT layers of a model built by fourierft and by PEFT itself."""
    import fourierft
    from peft.tuners.fourierft import FourierFTLayer as PeftLayer

    mods = list(model.modules())
    return ([m for m in mods if isinstance(m, fourierft.FourierFTLayer)],
            [m for m in mods if isinstance(m, PeftLayer)])


def dw64(layer: nn.Module, adapter: str = "default") -> torch.Tensor:
    """``dW`` of one adapter of a fourierft layer from the float64 cosine sum (independent of the FFT):
    ``(out_features, in_features)`` float64."""
    from fourierft.spectral import delta_weight_cos

    rows, cols = layer.entries(adapter)
    return delta_weight_cos(layer.fourierft_spectrum[adapter], rows.cpu(), cols.cpu(), layer.out_features,
                            layer.in_features, layer.scaling(adapter))
