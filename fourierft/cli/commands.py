"""``fourierft info``, ``fourierft merge`` and ``fourierft eval``."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import _api
from ._errors import CLIError
from .modeling import META_FILE, first_line, load_adapted, load_base, load_config, load_tokenizer, read_adapter, \
    read_weights, resolve_model

_PREFIX = "base_model.model."


def _layers(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Split saved tensors into ``{layer: {kind: tensor}}`` for the adapter and the rest (head, biases)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    other: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        plain = key.removeprefix(_PREFIX)
        for marker in (".fourierft_spectrum", ".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B"):
            if marker in plain:
                layer, _ = plain.split(marker, 1)
                layers.setdefault(layer, {})[marker[1:]] = t
                break
        else:
            other[plain] = t
    return layers, other


def _shapes_from_base(base: str | None, config: dict[str, Any], layers: list[str], n_labels: int | None
                      ) -> dict[str, list[int]]:
    """Layer shapes from the base model's config alone (built on the meta device: no weights are read)."""
    if not base:
        return {}
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = load_config(resolve_model(base)[0])
    cls = AutoModelForCausalLM if config.get("task_type") == "CAUSAL_LM" else AutoModelForSequenceClassification
    if n_labels and cls is AutoModelForSequenceClassification:
        cfg.num_labels = n_labels
    with torch.device("meta"):
        model = cls.from_config(cfg)
    mods = dict(model.named_modules())
    shapes = {}
    for layer in layers:
        w = getattr(mods.get(layer), "weight", None)
        if w is not None:
            conv1d = type(mods[layer]).__name__ == "Conv1D"
            shapes[layer] = list(w.shape)[::-1] if conv1d else list(w.shape)
    return shapes


def info(args: argparse.Namespace) -> int:
    path, config, meta, weights = read_adapter(args.adapter)
    state = read_weights(weights)
    layers, other = _layers(state)
    n_labels = len(meta["classes"]) if meta.get("classes") else None
    shapes = meta.get("layer_shapes") or {}
    if args.plot or args.base:  # only then is it worth reading the base model's config
        try:
            shapes = {**_shapes_from_base(args.base or meta.get("base_model") or config.get("base_model_name_or_path"),
                                          config, list(layers), n_labels), **shapes}
        except CLIError:
            if args.base:
                raise
    adapter_n = sum(t.numel() for parts in layers.values() for t in parts.values())
    other_n = sum(t.numel() for t in other.values())
    print(f"adapter: {path}  ({config['peft_type']}, task {config.get('task_type')}, "
          f"base {config.get('base_model_name_or_path')})")
    print("config:")
    for key in sorted(config):
        if config[key] not in (None, [], {}, "") or key in ("target_modules", "modules_to_save"):
            print(f"  {key}: {json.dumps(config[key], default=str)}")
    print(f"layers ({len(layers)}):")
    for layer, parts in layers.items():
        shape = shapes.get(layer)
        dims = f"{shape[0]} x {shape[1]}" if shape else "?"
        sizes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in parts.items())
        print(f"  {layer}  [{dims}]  {sizes}  = {sum(t.numel() for t in parts.values()):,}")
    if other:
        print(f"trained in full (modules_to_save / bias): {len(other)} tensors, {other_n:,} parameters")
        for key, t in other.items():
            print(f"  {key}  {tuple(t.shape)}")
    folder_bytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"parameters: {adapter_n:,} adapter + {other_n:,} other = {adapter_n + other_n:,}")
    print(f"file: {weights.name} {weights.stat().st_size:,} bytes ({weights.stat().st_size / 1024:.1f} KiB); "
          f"folder {folder_bytes:,} bytes")
    if meta.get("classes"):
        print(f"classes: {', '.join(meta['classes'])}")
    if args.plot:
        _plot(args.plot, config, layers, shapes)
    return 0


def _plot(target: str, config: dict[str, Any], layers: dict[str, dict[str, torch.Tensor]],
          shapes: dict[str, list[int]]) -> None:
    if config["peft_type"] not in ("FOURIERFT", "FOURIERFT_STORED_ENTRIES"):
        raise CLIError(f"--plot draws FourierFT spectra; this is a {config['peft_type']} adapter")
    missing = [layer for layer in layers if layer not in shapes]
    if missing:
        raise CLIError(f"--plot needs the layer shapes: pass --base MODEL (unknown: {missing[0]})")
    drawn = []
    for layer, parts in layers.items():
        c = parts["fourierft_spectrum"].flatten()
        out_f, in_f = shapes[layer]
        if "fourierft_rows" in parts:  # entries stored in the checkpoint (frequency-biased or composed adapters)
            u, v = parts["fourierft_rows"].flatten(), parts["fourierft_cols"].flatten()
        else:
            u, v = _api.spectral_entries(out_f, in_f, c.numel(), int(config.get("random_loc_seed", 777)))
        drawn.append((layer, shapes[layer], u, v, c))
    from .plots import spectrum

    out = Path(target)
    if out.parent and not out.parent.exists():
        raise CLIError(f"--plot {target}: folder {out.parent} does not exist")
    spectrum(drawn[:16], out)
    print(f"plot: {target} ({min(16, len(drawn))} of {len(drawn)} layers)")


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
    merged = model.merge_and_unload()
    diff = (adapted - _probe(tok, merged)).abs().max().item()
    scale = adapted.abs().max().item() or 1.0
    if diff > 1e-3 * scale + 1e-4:
        raise CLIError(f"merged model's logits differ from the adapter's by {diff:.3g}: not saved")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        reloaded, _ = load_base(str(tmp), info_["task"], info_["classes"], tok.pad_token_id, args.dtype)
        reload_diff = (adapted - _probe(tok, reloaded.eval())).abs().max().item()
        if reload_diff > 1e-3 * scale + 1e-4:
            raise CLIError(f"the saved merged model reloads with logits off by {reload_diff:.3g}: not saved")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"merged {args.adapter} into {info_['base']} -> {out} (Hugging Face format, loads with from_pretrained)")
    print(f"check: max |logits(merged) - logits(adapter)| = {max(diff, reload_diff):.2e} (after save and reload)")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .data import load_splits, rotten_tomatoes
    from .encode import CausalCollator, encode_causal, encode_classification
    from .data import label_ids, texts

    folder = Path(args.adapter)
    if folder.is_dir() and not (folder / "adapter_config.json").exists() and (folder / "config.json").exists():
        model, tok, info_ = _full_model(folder, args.dtype)  # a --method full/head result
    else:
        model, tok, info_ = load_adapted(args.adapter, args.base, args.dtype)
    meta = info_["meta"]
    if args.data == "rotten-tomatoes":
        rows = getattr(rotten_tomatoes(args.split_seed), args.split)
        source = f"Rotten Tomatoes {args.split} split"
    elif Path(args.data).exists() or args.data.endswith((".csv", ".jsonl", ".json", ".tsv", ".gz", ".bz2", ".xz")):
        from .data import read_records

        rows, source = read_records(Path(args.data)), args.data
    else:
        splits = load_splits(args.data, validation=None, test=None, data_config=args.data_config,
                             fractions=(0.8, 0.1, 0.1), seed=args.split_seed)
        rows, source = getattr(splits, args.split), f"{args.data} {args.split} split"
    from .data import check_columns

    max_len = args.max_length or meta.get("max_length", 128)
    if info_["task"] == "classification":
        tcol = args.text_column or meta.get("text_column", "text")
        lcol = args.label_column or meta.get("label_column", "label")
        check_columns(rows, {tcol: "--text-column", lcol: "--label-column"}, "eval data")
        ys = label_ids(rows, lcol, info_["classes"], "eval data")
        data = encode_classification(tok, texts(rows, tcol, "eval data"), ys, max_len, by_length=True)
        from transformers import DataCollatorWithPadding

        collate: Any = DataCollatorWithPadding(tok)
    else:
        pcol, rcol = meta.get("prompt_column", "prompt"), meta.get("response_column", "response")
        check_columns(rows, {pcol: "--prompt-column", rcol: "--response-column"}, "eval data")
        data = encode_causal(tok, texts(rows, pcol, "eval data", allow_empty=True), texts(rows, rcol, "eval data"),
                             max_len)
        collate = CausalCollator(tok.pad_token_id)
    result = _score(model, data, collate, args.batch_size, info_["task"])
    result.update({"examples": len(data), "data": source, "adapter": str(folder)})
    metric = "accuracy" if info_["task"] == "classification" else "token accuracy"
    line = f"{metric} {100 * result['accuracy']:.2f}% on {len(data)} examples ({source}), loss {result['loss']:.4f}"
    print(line + (f", perplexity {math.exp(min(result['loss'], 50)):.2f}" if info_["task"] != "classification" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _full_model(folder: Path, dtype: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
    task = meta.get("task", "classification")
    cfg = load_config(str(folder))
    classes = meta.get("classes") or [cfg.id2label[i] for i in range(cfg.num_labels)]
    tok = load_tokenizer(str(folder))
    model, _ = load_base(str(folder), task, classes, tok.pad_token_id, dtype)
    return model.eval(), tok, {"task": task, "classes": classes, "meta": meta, "base": str(folder)}


def _score(model: torch.nn.Module, data: Any, collate: Any, batch_size: int, task: str) -> dict[str, float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = {k: v.to(device) for k, v in collate([data[j] for j in range(i, min(i + batch_size, len(data)))]).items()}
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
