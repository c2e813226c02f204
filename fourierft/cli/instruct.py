"""Classification data as instructions for a causal LM (``--task instruct``): the text as the user turn of the
model's chat template, the class name as the assistant turn; loss on the answer tokens only; scored by the accuracy
of the greedily generated answer, parsed for a class name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from .encode import Encoded

MAX_NEW_TOKENS = 8  # enough for "This review is positive." before training, and for "positive<|im_end|>" after


def instruction(text: str, classes: list[str]) -> str:
    return f"Is the sentiment of this text {' or '.join(classes)}? Answer with one word.\n\n{text}"


def _ids(out: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` gives a list on some transformers versions, a BatchEncoding on others."""
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _prompt_and_answer(tok: Any, text: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (ending where the assistant's reply begins) and of the reply (with end of turn)."""
    user = [{"role": "user", "content": text}]
    if getattr(tok, "chat_template", None):
        prompt = _ids(tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
        full = _ids(tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True))
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return prompt, full[len(prompt):]
    # no chat template (or one that rewrites earlier turns): a plain "Answer:" prompt
    prompt = tok(f"{text}\nAnswer:", add_special_tokens=True)["input_ids"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return prompt, tok(f" {answer}", add_special_tokens=False)["input_ids"] + eos


@dataclass
class InstructSet:
    """``data``: prompt + answer per example (labels -100 on the prompt) for the token-level loss; ``prompts`` and
    ``gold`` (class ids) for the generated-answer accuracy."""

    data: Encoded
    prompts: list[list[int]]
    gold: list[int]

    def __len__(self) -> int:
        return len(self.data)


def encode_instruct(tok: Any, texts: list[str], labels: list[int], classes: list[str], max_length: int
                    ) -> InstructSet:
    """Truncates the text (never the answer) so that prompt + answer fit ``max_length`` tokens."""
    items, prompts = [], []
    overhead = sum(map(len, _prompt_and_answer(tok, instruction("", classes), max(classes, key=len))))
    budget = max(1, max_length - overhead)
    for text, y in zip(texts, labels):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:
            text = tok.decode(ids[:budget])
        prompt, answer = _prompt_and_answer(tok, instruction(text, classes), classes[y])
        ids = (prompt + answer)[:max_length]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                      "labels": ([-100] * len(prompt) + answer)[:max_length]})
        prompts.append(prompt)
    return InstructSet(Encoded(items), prompts, list(labels))


def parse_answer(text: str, classes: list[str]) -> int | None:
    """The class named first in ``text`` (whole words, any case); None when it names none."""
    best: tuple[int, int] | None = None
    for i, name in enumerate(classes):
        m = re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text.lower())
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), i)
    return None if best is None else best[1]


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, tok: Any, prompts: list[list[int]], gold: list[int],
                    classes: list[str], batch_size: int) -> tuple[float, list[str]]:
    """Greedy generation from each prompt (left-padded batches); accuracy of the parsed answers, and the answers."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    texts: dict[int, str] = {}
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id, use_cache=True)
            for i, row in zip(idx, out[:, width:]):
                texts[i] = tok.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    answers = [texts[i] for i in range(len(prompts))]
    correct = sum(parse_answer(a, classes) == y for a, y in zip(answers, gold))
    return correct / max(1, len(gold)), answers


class AnswerAccuracy(TrainerCallback):
    """Adds ``eval_accuracy`` (generated answers on the validation set) to each in-training evaluation's metrics,
    before the callbacks after it (best-weights keeper, progress line) read them."""

    def __init__(self, model: torch.nn.Module, tok: Any, val: InstructSet, classes: list[str], batch_size: int):
        self.model, self.tok, self.val, self.classes, self.batch_size = model, tok, val, classes, batch_size

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        if metrics is not None and "eval_loss" in metrics:
            metrics["eval_accuracy"], _ = answer_accuracy(self.model, self.tok, self.val.prompts, self.val.gold,
                                                          self.classes, self.batch_size)
            if state.log_history and "eval_loss" in state.log_history[-1]:  # logged just before: for the plots
                state.log_history[-1]["eval_accuracy"] = metrics["eval_accuracy"]
