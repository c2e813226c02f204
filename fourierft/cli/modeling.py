"""Models for the CLI: resolve and load a base model, attach an adapter (or pick full / head-only training), and
read saved adapters back with checks that turn "does not fit" into one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import CLIError
from .presets import ModelRef

META_FILE = "fourierft_cli.json"  # CLI metadata beside an adapter: classes, columns, layer shapes (PEFT ignores it)
# files one of which a model folder's tokenizer needs (without them transformers may build an empty vocabulary)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.path, **ref.kwargs)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot use this model"
        where = ("a GGUF file transformers cannot read" if ref.gguf_file else
                 "a model folder without a usable config.json" if ref.is_local else
                 "not a local folder, not found on the Hub")
        raise CLIError(f"cannot load model '{ref.portable}': {where} ({first_line(exc)})") from exc


def is_causal_lm(ref: ModelRef, config: Any | None) -> bool:
    """A decoder LM (GGUF files are; otherwise the saved architectures say so)."""
    if ref.gguf_file:
        return True
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    if ref.is_local and not ref.gguf_file and not any((Path(ref.path) / f).exists() for f in TOKENIZER_FILES):
        raise CLIError(f"model folder {ref.path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:4])}, "
                       "...): save the tokenizer beside the weights (tokenizer.save_pretrained(folder))")
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs)
    except Exception as exc:
        raise CLIError(f"cannot load the tokenizer of '{ref.portable}': {first_line(exc)}") from exc
    probe = tok("the film was good", add_special_tokens=False)["input_ids"]
    if not probe or (tok.unk_token_id is not None and all(i == tok.unk_token_id for i in probe)):
        raise CLIError(f"the tokenizer of '{ref.portable}' maps plain English to unknown tokens only: its vocabulary "
                       "files are missing or empty")
    if tok.pad_token is None:  # GPT-style tokenizers: pad with eos (masked out anyway)
        if tok.eos_token is None:
            raise CLIError(f"tokenizer of '{ref.portable}' has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_base(ref: ModelRef, task: str, classes: list[str] | None, pad_id: int | None,
              dtype: str = "float32", config: Any | None = None) -> tuple[nn.Module, set[str]]:
    """The base model for ``task`` and the names of weights the checkpoint lacked (newly initialised: a head).

    ``dtype`` defaults to float32 whatever the checkpoint holds: transformers 5 otherwise loads a half-precision
    checkpoint in half precision, and training a head (or merging) in fp16 weights loses the small updates."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"output_loading_info": True, **ref.kwargs,
                              "dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if task == "classification":
        assert classes is not None
        config = config if config is not None else load_config(ref)
        config.num_labels = len(classes)
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
        if pad_id is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_id  # GPT-style classifiers find the last token through the pad id
        cls, kwargs["ignore_mismatched_sizes"], kwargs["config"] = AutoModelForSequenceClassification, True, config
    else:  # causal-lm and instruct; a GGUF file's config is read once, with the weights
        cls = AutoModelForCausalLM
        if config is not None and not ref.gguf_file:
            kwargs["config"] = config
    try:
        model, info = cls.from_pretrained(ref.path, **kwargs)
    except Exception as exc:
        raise CLIError(f"cannot load model '{ref.portable}' for {task}: {first_line(exc)}") from exc
    if ref.gguf_file:
        _as_float_model(model, ref)
    model.config.use_cache = False
    # the model's portable name (a hub id), not this machine's path: what adapters trained here record as their base,
    # and what loading one compares with the base it records
    model.config._name_or_path = model.name_or_path = ref.portable
    return model, set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())}


def _as_float_model(model: nn.Module, ref: ModelRef) -> None:
    """A GGUF file de-quantized at load is a float model; transformers >= 5.2x still marks it quantized (its GGUF
    quantizer, which neither trains nor saves), older ones do not. Drop the mark through the quantizer's public
    ``remove_quantization_config``; weights kept in GGUF blocks (a GPU with the ``kernels`` package) cannot train."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if any(not p.dtype.is_floating_point for p in model.parameters()) or any(
            "gguf" in type(m).__module__ for m in model.modules()):  # packed blocks, GGUF matmul modules
        raise CLIError(f"model '{ref.portable}': transformers kept its GGUF weights quantized (the 'kernels' package "
                       "is installed); training needs them de-quantized: pip uninstall kernels")
    quantizer.remove_quantization_config(model)


def head_modules(model: nn.Module, task: str, missing: set[str]) -> list[str]:
    """The task head, trained in full beside the adapter: modules the checkpoint lacked, the classifier, and the
    pooler (for BERT-style classifiers it feeds only the classifier; the reference measurement trains it too)."""
    names = {k.rsplit(".", 1)[0] for k in missing if "." in k}
    if task == "classification":
        for mod_name, _ in model.named_modules():
            if mod_name.split(".")[-1] in ("classifier", "score", "pooler"):
                names.add(mod_name)
    # keep the outermost name: "classifier" already covers "classifier.dense"
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    # ... then name the modules that own the parameters (BertPooler -> pooler.dense): PEFT's merge_and_unload
    # copies ``.weight`` from each saved module and fails on a container without one (PEFT 0.21)
    mods = dict(model.named_modules())
    leaves = []
    for name in outer:
        owners = [sub for sub, m in mods[name].named_modules() if any(True for _ in m.parameters(recurse=False))] \
            if name in mods else [""]
        leaves += [f"{name}.{sub}" if sub else name for sub in owners]
    return sorted(leaves)


def is_head_param(param_name: str, head: list[str]) -> bool:
    dotted = f".{param_name}."
    return any(f".{h}." in dotted for h in head)


def attach(model: nn.Module, method: str, head: list[str], task: str, fft_kwargs: dict[str, Any],
           lora: dict[str, Any]) -> nn.Module:
    """Wrap or freeze ``model`` for ``method``: fourierft | lora | full | head."""
    task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    try:
        if method == "fourierft":
            import fourierft

            cfg = fourierft.FourierFTConfig(task_type=task_type, modules_to_save=head or None, **fft_kwargs)
            return fourierft.get_peft_model(model, cfg)
        if method == "lora":
            import peft

            return peft.get_peft_model(model, peft.LoraConfig(task_type=task_type, modules_to_save=head or None,
                                                              **lora))
    except (ValueError, TypeError, KeyError) as exc:
        raise CLIError(f"cannot attach the {method} adapter: {first_line(exc)}") from exc
    for name, p in model.named_parameters():
        p.requires_grad_(method == "full" or is_head_param(name, head))
    if method == "head" and not head:
        raise CLIError("--method head: this model has no classification head to train")
    return model


def param_counts(model: nn.Module, head: list[str]) -> dict[str, int]:
    """Trainable adapter (or body) and head parameters, and the total the model holds (PEFT's convention)."""
    adapter = head_n = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if is_head_param(name, head):
                head_n += p.numel()
            else:
                adapter += p.numel()
    if hasattr(model, "get_nb_trainable_parameters"):
        total = int(model.get_nb_trainable_parameters()[1])
    else:
        total = sum(p.numel() for p in model.parameters())
    return {"adapter": adapter, "head": head_n, "trainable": adapter + head_n, "total": total}


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{module name in the base model: [out_features, in_features]}`` of each adapted layer.

    Adapted layers are the modules that wrap a ``base_layer`` and own adapter weights (PEFT's and this package's
    layers both do; their parameter names differ, so only that structure is relied on)."""
    shapes: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, nn.Module) or not any(
                m in pn for pn, _ in module.named_parameters() for m in ("spectrum", "lora_A")):
            continue
        w = base.weight  # GPT-2 Conv1D stores W as (in, out)
        out_f, in_f = (w.shape[1], w.shape[0]) if type(base).__name__ == "Conv1D" else (w.shape[0], w.shape[1])
        shapes[name.removeprefix("base_model.model.")] = [int(out_f), int(in_f)]
    return shapes
