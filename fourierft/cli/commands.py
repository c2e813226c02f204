"""``fourierft merge`` and ``fourierft eval`` (``fourierft info`` is in :mod:`fourierft.cli.info`)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from ..folder_io import apply_umask, make_fresh_dir, replace_folder
from ._errors import CLIError
from .adapters import load_adapted
from .modeling import META_FILE, load_base, load_config, load_tokenizer
from .presets import resolve_model


def _probe(tok: Any, model: torch.nn.Module) -> torch.Tensor:
    batch = tok(["a quick probe sentence for the merge check", "another one, longer than the first, to pad"],
                return_tensors="pt", padding=True)
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    with torch.no_grad():
        return model(**batch).logits.float()


def merge(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CLIError(f"--out {args.out}: already exists; pass --overwrite to replace it")
    model, tok, info_ = load_adapted(args.adapter, args.base, args.dtype)
    adapted = _probe(tok, model)
    merged = model.merge_and_unload()  # a copy in this process: the base model's own files are never written
    diff = (adapted - _probe(tok, merged)).abs().max().item()
    scale = adapted.abs().max().item() or 1.0
    if diff > 1e-3 * scale + 1e-4:
        raise CLIError(f"merged model's logits differ from the adapter's by {diff:.3g}: not saved")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(make_fresh_dir(str(out.parent / f".{out.name}.merging-")))  # the umask's permissions, not 0700
    try:
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if (Path(args.adapter) / META_FILE).exists():  # task, classes and columns, for fourierft eval
            meta = json.loads((Path(args.adapter) / META_FILE).read_text())
            (tmp / META_FILE).write_text(json.dumps({**meta, "method": "merged", "layer_shapes": {}}, indent=2))
        reloaded, _ = load_base(resolve_model(str(tmp)), info_["task"], info_["classes"], tok.pad_token_id,
                                args.dtype)
        reload_diff = (adapted - _probe(tok, reloaded.eval())).abs().max().item()
        if reload_diff > 1e-3 * scale + 1e-4:
            raise CLIError(f"the saved merged model reloads with logits off by {reload_diff:.3g}: not saved")
        apply_umask(str(tmp))  # safetensors' writer makes 0600 files
        replace_folder(str(tmp), str(out.resolve()))  # as a whole: a kill leaves the old folder or the new one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged: base model {info_['base']} + adapter {args.adapter} (dW added to a copy of the base weights), "
          f"saved as a new model folder {out}/ (Hugging Face format: AutoModel*.from_pretrained('{out}'))")
    print(f"check: max |logits(merged) - logits(adapter)| = {max(diff, reload_diff):.2e} (after save and reload)")
    return 0


def _rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    from .data import load_splits, read_records, rotten_tomatoes, subsample

    if args.data == "rotten-tomatoes":
        rows, source = getattr(rotten_tomatoes(args.split_seed), args.split), f"Rotten Tomatoes {args.split} split"
    elif Path(args.data).exists() or args.data.endswith((".csv", ".jsonl", ".json", ".tsv", ".gz", ".bz2", ".xz")):
        rows, source = read_records(Path(args.data)), args.data
    else:
        splits = load_splits(args.data, validation=None, test=None, data_config=args.data_config,
                             fractions=(0.8, 0.1, 0.1), seed=args.split_seed)
        rows, source = getattr(splits, args.split), f"{args.data} {args.split} split"
    if args.subsample is not None and args.subsample < len(rows):
        rows, source = subsample(rows, args.subsample, args.split_seed), f"{source}, {args.subsample} drawn"
    return rows, source


def evaluate(args: argparse.Namespace) -> int:
    from .data import check_columns, label_ids, texts
    from .encode import CausalCollator, encode_causal, encode_classification

    folder = Path(args.adapter)
    if folder.is_dir() and not (folder / "adapter_config.json").exists() and (folder / "config.json").exists():
        model, tok, info_ = _full_model(folder, args.dtype)  # a --method full/head result, or a merged folder
    else:
        model, tok, info_ = load_adapted(args.adapter, args.base, args.dtype)
    meta, task = info_["meta"], info_["task"]
    rows, source = _rows(args)
    max_len = args.max_length or meta.get("max_length", 128)
    result: dict[str, Any] = {}
    if task in ("classification", "instruct"):
        tcol = args.text_column or meta.get("text_column", "text")
        lcol = args.label_column or meta.get("label_column", "label")
        check_columns(rows, {tcol: "--text-column", lcol: "--label-column"}, "eval data")
        ys = label_ids(rows, lcol, info_["classes"], "eval data")
        if task == "instruct":
            from .instruct import answer_accuracy, encode_instruct

            encoded = encode_instruct(tok, texts(rows, tcol, "eval data"), ys, info_["classes"], max_len)
            data, collate = encoded.data, CausalCollator(tok.pad_token_id)
            result["answer_accuracy"], answers = answer_accuracy(model, tok, encoded.prompts, encoded.gold,
                                                                 info_["classes"], args.batch_size)
            result["answers"] = answers
        else:
            from transformers import DataCollatorWithPadding

            data = encode_classification(tok, texts(rows, tcol, "eval data"), ys, max_len, by_length=True)
            collate = DataCollatorWithPadding(tok)
    else:
        pcol, rcol = meta.get("prompt_column", "prompt"), meta.get("response_column", "response")
        check_columns(rows, {pcol: "--prompt-column", rcol: "--response-column"}, "eval data")
        data = encode_causal(tok, texts(rows, pcol, "eval data", allow_empty=True), texts(rows, rcol, "eval data"),
                             max_len)
        collate = CausalCollator(tok.pad_token_id)
    scored = _score(model, data, collate, args.batch_size, task)
    if task == "instruct":  # the answer is what a user gets; next-token accuracy is kept as a detail
        result.update({"accuracy": result.pop("answer_accuracy"), "token_accuracy": scored["accuracy"],
                       "loss": scored["loss"]})
    else:
        result.update(scored)
    result.update({"examples": len(data), "data": source, "adapter": str(folder), "task": task})
    metric = {"classification": "accuracy", "causal-lm": "token accuracy", "instruct": "answer accuracy"}[task]
    line = f"{metric} {100 * result['accuracy']:.2f}% on {len(data)} examples ({source}), loss {result['loss']:.4f}"
    if task != "classification":
        line += f" per answer token, perplexity {math.exp(min(result['loss'], 50)):.2f}"
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _full_model(folder: Path, dtype: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
    ref = resolve_model(str(folder))
    cfg = load_config(ref)
    archs = getattr(cfg, "architectures", None) or []
    task = meta.get("task") or ("causal-lm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
                                else "classification")
    classes = meta.get("classes") or ([cfg.id2label[i] for i in range(cfg.num_labels)]
                                      if task == "classification" else None)
    tok = load_tokenizer(ref)
    model, _ = load_base(ref, task, classes, tok.pad_token_id, dtype, cfg)
    return model.eval(), tok, {"task": task, "classes": classes, "meta": meta, "base": str(folder)}


def _score(model: torch.nn.Module, data: Any, collate: Any, batch_size: int, task: str) -> dict[str, float]:
    """Accuracy and mean loss: per example (classification) or per labelled token (causal LMs)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = {k: v.to(device) for k, v in
                     collate([data[j] for j in range(i, min(i + batch_size, len(data)))]).items()}
            out = model(**batch)
            labels = batch["labels"]
            if task == "classification":
                loss_sum += out.loss.item() * len(labels)
                correct += int((out.logits.argmax(-1) == labels).sum())
                total += len(labels)
            else:
                pred, gold = out.logits[:, :-1].argmax(-1), labels[:, 1:]
                mask = gold != -100
                n = int(mask.sum())
                loss_sum += out.loss.item() * n
                correct += int((pred[mask] == gold[mask]).sum())
                total += n
    if total == 0:
        raise CLIError("nothing to evaluate: no labelled tokens or examples")
    return {"accuracy": correct / total, "loss": loss_sum / total}
