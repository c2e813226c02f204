"""Tokenised datasets and collators for the two tasks (plain torch Datasets: ``datasets`` stays optional)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class Encoded(Dataset):
    """A list of feature dicts (``input_ids``, ``attention_mask``, ``labels``, ...), unpadded."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def encode_classification(tokenizer: Any, texts: list[str], labels: list[int], max_length: int,
                          *, by_length: bool = False) -> Encoded:
    """Tokenise without padding (the collator pads per batch: RT snippets average 27 tokens, so this is ~2x faster
    than padding to 64). ``by_length`` sorts evaluation sets so batches hold similar lengths; order does not change
    accuracy."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    items = [{**{k: enc[k][i] for k in keys}, "labels": labels[i]} for i in range(len(texts))]
    if by_length:
        items.sort(key=lambda it: len(it["input_ids"]))
    return Encoded(items)


def encode_causal(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int) -> Encoded:
    """``prompt + response + eos``; the loss covers the response only (prompt positions are labelled -100)."""
    p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    items = []
    for p, r in zip(p_ids, r_ids):
        ids = (p + r + eos)[:max_length]
        labels = ([-100] * len(p) + r + eos)[:max_length]
        if all(x == -100 for x in labels):  # prompt fills the window: keep the last response token trainable
            ids, labels = (p[: max_length - 1] + r[:1]), [-100] * (max_length - 1) + r[:1]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Encoded(items)


class CausalCollator:
    """Right-pads ``input_ids`` with the pad id, ``attention_mask`` with 0 and ``labels`` with -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for b in batch:
            gap = width - len(b["input_ids"])
            out["input_ids"].append(b["input_ids"] + [self.pad_id] * gap)
            out["attention_mask"].append(b["attention_mask"] + [0] * gap)
            out["labels"].append(b["labels"] + [-100] * gap)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    """Classification accuracy from the Trainer's (logits, labels)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def argmax_logits(logits: Any, labels: Any) -> torch.Tensor:
    """Keep only the predicted token ids: the Trainer would otherwise hold (examples x length x vocab) logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(-1)


def token_accuracy(eval_pred: Any) -> dict[str, float]:
    """Next-token accuracy over response tokens (position t predicts label t+1)."""
    preds, labels = eval_pred.predictions[:, :-1], eval_pred.label_ids[:, 1:]
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else 0.0}
