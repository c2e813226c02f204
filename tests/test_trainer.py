"""The plain ``transformers.Trainer`` (no subclass, default arguments where possible) fine-tunes fourierft models.

Reference: PEFT's own FourierFT (``fourierft.unregister()`` then ``peft.get_peft_model``) trained by the same
Trainer on the same data with the same seeds. Models: a tiny GPT-2 (Conv1D, tied embeddings) and a tiny Llama with
``tie_word_embeddings=True``, random weights from configs; no network.

Tolerances, float32: our layers compute ``x @ dW.T`` with other kernels than PEFT's dense ``ifft2`` (another
summation order), so one forward differs by a few float32 ulps (~1e-7 relative). Over a handful of Adam steps
with a decaying learning rate that stays well below 1e-5 relative on a loss near 5; we allow 1e-5 relative.
Runs of *our* model against itself (resume, gradient checkpointing) take the same kernels in the same order on
the CPU, so there we ask for equality to 1e-6 relative.
"""

from __future__ import annotations

import json
import os

import datasets
import huggingface_hub.constants
import peft
import pytest
import torch
import transformers as tf
from peft.tuners.fourierft.layer import FourierFTLayer as PeftFourierFTLayer
from safetensors import safe_open
from safetensors.torch import load_file

import fourierft
from fourierft.layer import FourierFTLayer

VOCAB = 256
TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "down_proj"]}
TASK_TYPES = {"gpt2": None, "llama": "CAUSAL_LM"}  # PEFT's plain PeftModel and PeftModelForCausalLM
N_FREQUENCY = 24


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


peft_own = fourierft.unregistered  # PEFT's own FourierFT inside the block


def base_model(name: str) -> tf.PreTrainedModel:
    """A tiny causal LM with tied input/output embeddings; the same ``name`` always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "gpt2":
            cfg = tf.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
            model = tf.GPT2LMHeadModel(cfg)
        else:
            cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                 tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
            model = tf.LlamaForCausalLM(cfg)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as the test needs
    return model


def wrap(name: str, ours: bool, init_seed: int = 1) -> peft.PeftModel:
    """``base_model(name)`` with a FourierFT adapter: fourierft's layers (``ours``) or PEFT's own."""
    kw = dict(n_frequency=N_FREQUENCY, scaling=100.0, target_modules=TARGETS[name], random_loc_seed=7,
              task_type=TASK_TYPES[name])
    torch.manual_seed(init_seed)  # PEFT's init_weights=False draws the coefficients from torch's CPU generator
    if ours:
        model = fourierft.get_peft_model(base_model(name), fourierft.FourierFTConfig(**kw))
        assert {type(m).__module__ for m in model.modules() if isinstance(m, FourierFTLayer)} == {"fourierft.layer"}
    else:
        with peft_own():
            model = peft.get_peft_model(base_model(name), peft.FourierFTConfig(**kw))
        assert not any(isinstance(m, FourierFTLayer) for m in model.modules())
        assert any(isinstance(m, PeftFourierFTLayer) for m in model.modules())
    assert isinstance(model, peft.PeftModel)
    return model


def dataset(n: int = 12, length: int = 12) -> datasets.Dataset:
    """Token rows with a prompt of 2-5 masked tokens each (so rows count different label tokens) and one column the
    model does not take, which the Trainer's default ``remove_unused_columns=True`` must drop."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    labels = ids.clone()
    for i in range(n):
        labels[i, : 2 + i % 4] = -100
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n,
                                       "labels": labels.tolist(), "doc_id": list(range(n))})


def trainer(model, out: str, eval_dataset=None, **kw) -> tf.Trainer:
    args = dict(output_dir=out, max_steps=6, per_device_train_batch_size=2, learning_rate=5e-2, logging_steps=1,
                save_steps=3, report_to="none")
    args.update(kw)
    return tf.Trainer(model=model, args=tf.TrainingArguments(**args), train_dataset=dataset(),
                      eval_dataset=eval_dataset)


def losses(tr: tf.Trainer, after: int = 0) -> list[float]:
    """The logged training losses of the steps after ``after``."""
    return [h["loss"] for h in tr.state.log_history if "loss" in h and h["step"] > after]


def spectra(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "fourierft_spectrum" in k}


def check_adapter_dir(path: str, model) -> int:
    """``path`` holds a PEFT adapter and no base weight: only ``fourierft_spectrum`` tensors, one per adapted layer,
    and a file of kilobytes. Returns the file's size in bytes."""
    names = os.listdir(path)
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    assert not [n for n in names if n.startswith(("model", "pytorch_model"))], names
    file = os.path.join(path, "adapter_model.safetensors")
    with safe_open(file, "pt") as f:
        keys = list(f.keys())
        numel = sum(f.get_slice(k).get_shape()[0] for k in keys)
    n_layers = sum(isinstance(m, (FourierFTLayer, PeftFourierFTLayer)) for m in model.modules())
    assert len(keys) == n_layers and all(k.endswith("fourierft_spectrum") for k in keys), keys
    assert numel == n_layers * N_FREQUENCY
    size = os.path.getsize(file)
    base_bytes = sum(p.numel() * p.element_size() for p in model.get_base_model().parameters()) - 4 * numel
    assert size <= 4 * numel + 4096 and size < base_bytes / 100, (size, base_bytes)  # kilobytes, base ~0.5 MB
    with open(os.path.join(path, "adapter_config.json")) as f:
        assert json.load(f)["peft_type"] == "FOURIERFT"
    return size


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_plain_trainer_matches_peft_checkpoints_adapter_sized(name, tmp_path):
    ours, theirs = wrap(name, ours=True), wrap(name, ours=False)
    assert type(ours) is type(theirs)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    before = spectra(ours)
    tr_ours = trainer(ours, str(tmp_path / "ours"), gradient_accumulation_steps=2)
    batch = next(iter(tr_ours.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # remove_unused_columns saw the model's forward
    tr_ours.train()
    tr_theirs = trainer(theirs, str(tmp_path / "theirs"), gradient_accumulation_steps=2)
    tr_theirs.train()
    ours_l, theirs_l = losses(tr_ours), losses(tr_theirs)
    assert len(ours_l) == 6 and len(set(ours_l)) > 1  # it trained
    assert ours_l == pytest.approx(theirs_l, rel=1e-5, abs=0)
    assert all(not torch.equal(before[k], v) for k, v in spectra(ours).items())  # every layer learned
    for step in (3, 6):
        size = check_adapter_dir(str(tmp_path / "ours" / f"checkpoint-{step}"), ours)
        assert size == os.path.getsize(tmp_path / "theirs" / f"checkpoint-{step}" / "adapter_model.safetensors")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_resume_from_checkpoint_reaches_the_uninterrupted_coefficients(name, tmp_path):
    full = wrap(name, ours=True)
    tr_full = trainer(full, str(tmp_path / "full"))
    tr_full.train()
    # another initial draw: only loading checkpoint-3 can bring this model onto the uninterrupted run's path
    resumed = wrap(name, ours=True, init_seed=2)
    assert not torch.equal(*(next(iter(spectra(m).values())) for m in (full, resumed)))
    tr_resumed = trainer(resumed, str(tmp_path / "resumed"))
    tr_resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert len(losses(tr_resumed, after=3)) == 3
    assert losses(tr_resumed, after=3) == pytest.approx(losses(tr_full, after=3), rel=1e-6, abs=0)
    got, want = spectra(resumed), spectra(full)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_save_model_writes_an_adapter_peft_and_fourierft_load_alike(name, tmp_path):
    model = wrap(name, ours=True)
    tr = trainer(model, str(tmp_path), max_steps=3, save_strategy="no")
    tr.train()
    tr.save_model()
    check_adapter_dir(str(tmp_path), model)
    ids = torch.tensor(dataset()["input_ids"][:2])
    trained = logits(model, ids)
    with peft_own():
        by_peft = peft.PeftModel.from_pretrained(base_model(name), str(tmp_path))
    assert not any(isinstance(m, FourierFTLayer) for m in by_peft.modules())
    by_ours = fourierft.PeftModel.from_pretrained(base_model(name), str(tmp_path))
    assert any(isinstance(m, FourierFTLayer) for m in by_ours.modules())
    # one forward through another summation order: float32 ulps of logits of size ~1
    torch.testing.assert_close(logits(by_ours, ids), trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(by_peft, ids), trained, rtol=1e-5, atol=1e-5)
    assert (trained - logits(base_model(name), ids)).abs().max() > 1e-2  # the adapter changes the outputs
    greedy = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(by_ours.generate(input_ids=ids, **greedy), by_peft.generate(input_ids=ids, **greedy))


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}], ids=["default", "reentrant"])
def test_gradient_checkpointing_with_frozen_embeddings_trains_the_same(kwargs, tmp_path):
    """The Trainer's ``gradient_checkpointing=True`` on a model whose embeddings are frozen: the coefficients still
    get their gradients (reentrant checkpointing needs PEFT's ``enable_input_require_grads``, reached through the
    wrapper) and take the same steps as without checkpointing."""
    plain, ckpt = wrap("llama", ours=True), wrap("llama", ours=True)
    tr_plain = trainer(plain, str(tmp_path / "plain"), max_steps=3, save_strategy="no")
    tr_plain.train()
    tr_ckpt = trainer(ckpt, str(tmp_path / "ckpt"), max_steps=3, save_strategy="no", gradient_checkpointing=True,
                      gradient_checkpointing_kwargs=kwargs)
    tr_ckpt.train()
    assert ckpt.get_base_model().is_gradient_checkpointing
    assert losses(tr_ckpt) == pytest.approx(losses(tr_plain), rel=1e-6, abs=0)
    got, want = spectra(ckpt), spectra(plain)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_bf16_autocast_training_matches_peft(tmp_path):
    """``bf16=True`` (CPU autocast here, as on a GPU): matmuls run in bfloat16 (8-bit mantissa, eps 2**-8), and
    the two implementations round at different points, so logits differ by ~eps relative; the mean loss over ~100
    tokens averages that down. We allow 2e-3 relative (a lost adapter or a wrong dtype path moves it by > 1e-2)."""
    runs = {}
    for ours in (True, False):
        model = wrap("llama", ours=ours)
        tr = trainer(model, str(tmp_path / str(ours)), max_steps=3, save_strategy="no", bf16=True, use_cpu=True)
        tr.train()
        runs[ours] = losses(tr)
        assert all(p.dtype == torch.float32 for p in spectra(model).values())  # autocast keeps the masters fp32
    assert len(runs[True]) == 3
    assert runs[True] == pytest.approx(runs[False], rel=2e-3, abs=0)


def test_load_best_model_at_end_loads_the_chosen_checkpoint(tmp_path):
    """``load_best_model_at_end`` reloads the adapter of the best checkpoint into the trained model (PEFT's
    ``load_adapter``). "Best" is the highest eval loss here, so that it is not the last step's adapter."""
    model = wrap("llama", ours=True)
    tr = trainer(model, str(tmp_path), max_steps=4, save_steps=2, eval_strategy="steps", eval_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True,
                 eval_dataset=dataset(4))
    tr.train()
    evals = [h["eval_loss"] for h in tr.state.log_history if "eval_loss" in h]
    best = 2 * (1 + evals.index(max(evals)))
    assert best != 4  # the precondition: the last step's adapter is not the one to be loaded
    assert tr.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best}")
    saved = load_file(os.path.join(tr.state.best_model_checkpoint, "adapter_model.safetensors"))
    got = spectra(model)
    assert saved.keys() == {k.removesuffix(".default") for k in got}
    for key, value in saved.items():
        assert torch.equal(got[key + ".default"], value), key
    assert all(p.requires_grad for n, p in model.named_parameters() if "fourierft_spectrum" in n)


def _train_and_eval(model, out: str) -> tuple[list[float], list[float]]:
    tr = trainer(model, out, max_steps=4, save_strategy="no", eval_strategy="steps", eval_steps=1,
                 eval_dataset=dataset(4))
    tr.train()
    return losses(tr), [h["eval_loss"] for h in tr.state.log_history if "eval_loss" in h]


@pytest.fixture(scope="module")
def peft_train_eval(tmp_path_factory):
    return _train_and_eval(wrap("llama", ours=False), str(tmp_path_factory.mktemp("peft")))


@pytest.mark.parametrize("path", ["dense", "gemm", "lowrank", "factored"])  # "auto": every other test
def test_every_compute_path_trains_and_evaluates_as_peft(path, peft_train_eval, tmp_path):
    """An evaluation after every step: each path's inference caches (dW, bases) are built under no_grad, then the
    Trainer's (accelerate-wrapped) optimizer changes the coefficients in place; a stale cache would repeat an eval
    loss or drift from PEFT's."""
    model = wrap("llama", ours=True)
    model.base_model.set_compute_path(path)
    train, evals = _train_and_eval(model, str(tmp_path))
    want_train, want_evals = peft_train_eval
    assert len(evals) == 4 and len(set(evals)) == 4
    assert train == pytest.approx(want_train, rel=1e-5, abs=0)
    assert evals == pytest.approx(want_evals, rel=1e-5, abs=0)
