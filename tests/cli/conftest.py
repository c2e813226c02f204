"""Fixtures for the CLI tests: tiny random models with an offline tokenizer, toy data, and a subprocess runner.

The CLI is driven as a user drives it (``python -m fourierft ...`` in a subprocess); models are tiny BERT / GPT-2
configs saved to a temp folder so the whole suite stays fast on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

# no CLI test may reach the network (the subprocesses get the same settings from clitools.cli_env)
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"

POS = ["good", "great", "fine", "lovely", "superb", "fun"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "and", "very", "story", "acting"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILLER, "?", ".", ","]


def _tokenizer(folder: Path):
    """A WordPiece tokenizer over VOCAB (built from the vocabulary itself: every toy word is a real token)."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True, eos_token="[SEP]")
    assert tok.unk_token_id not in tok("the film was good ?", add_special_tokens=False)["input_ids"]
    tok.save_pretrained(folder)
    return tok


def _bert(folder: Path, hidden: int, seed: int) -> Path:
    """A 2-layer BERT encoder checkpoint (like all-MiniLM: a BertModel, no classifier) with the toy tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    _tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT encoder."""
    return _bert(tmp_path_factory.mktemp("tiny-bert"), hidden=32, seed=0)


@pytest.fixture(scope="session")
def other_bert(tmp_path_factory) -> Path:
    """A BERT with another hidden size: adapters of ``tiny_bert`` must not fit it."""
    return _bert(tmp_path_factory.mktemp("other-bert"), hidden=40, seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (Conv1D weights: exercises fan_in_fan_out) sharing the toy vocabulary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    _tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer LLaMA with grouped-query attention (v_proj 16 x 32: 2 of 4 heads) and tied embeddings, sharing the
    toy vocabulary: SmolLM2's layout at a size the CPU trains in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def review(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILLER, 4) + rng.sample(POS if positive else NEG, 2)
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    """120 rows of text,label with string classes (pos/neg) that depend on the words."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(120):
            w.writerow([review(rng, i % 2 == 0), "pos" if i % 2 == 0 else "neg"])
    return path


@pytest.fixture(scope="session")
def toy_jsonl(tmp_path_factory) -> Path:
    """prompt,response rows for causal-LM fine-tuning."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    with open(path, "w") as fh:
        for i in range(60):
            pos = i % 2 == 0
            fh.write(json.dumps({"prompt": review(rng, pos) + " ?", "response": "good ." if pos else "bad ."}) + "\n")
    return path
