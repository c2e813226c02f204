"""``fourierft`` command line: ``train``, ``merge``, ``info``, ``eval``.

Every failure the user can cause ends as one line on stderr and a non-zero exit code, never a traceback
(``--verbose`` shows the traceback of an unexpected one).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from ._errors import CLIError

__all__ = ["main", "build_parser", "CLIError"]

EPILOG = """examples:
  fourierft train                                  # embedded default: all-MiniLM-L6-v2 on Rotten Tomatoes
  fourierft train --model roberta-base --data reviews.csv --text-column review --label-column stars
  fourierft train --model smollm2 --subsample 256  # SmolLM2-135M-Instruct: the reviews as chat instructions
  fourierft train --model gpt2 --data chat.jsonl   # prompt,response columns: causal-LM fine-tuning
  fourierft info runs/fourierft --plot spectrum.png
  fourierft eval runs/fourierft --data rotten-tomatoes
  fourierft merge runs/fourierft --out merged/
"""


def build_parser() -> argparse.ArgumentParser:
    from .argtypes import Formatter, Parser, int_at_least
    from .options import DTYPES, SEED, add_train_arguments

    parser = Parser(prog="fourierft", description="FourierFT fine-tuning from the command line.",
                    epilog=EPILOG, formatter_class=Formatter)
    parser.add_argument("--verbose", action="store_true", help="show library warnings and logs")
    sub = parser.add_subparsers(dest="command", metavar="{train,merge,info,eval}")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=Formatter)

    p = command("train", "fine-tune a model (no arguments: the embedded default task)")
    add_train_arguments(p)

    p = command("merge", "fold an adapter into a copy of its base model and save that as a plain HF model folder")
    p.add_argument("adapter", help="adapter folder (from fourierft train or PEFT's save_pretrained)")
    p.add_argument("--base", default=None, help="base model id or folder (default: the one the adapter names)")
    p.add_argument("--out", required=True, help="folder for the merged model (required)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load, merge and save in")

    p = command("info", "show an adapter's config, task, layers and sizes; --plot its spectrum")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--base", default=None,
                   help="base model for layer shapes the adapter does not record (default: none needed)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw the coefficients at their spectral entries (default: no plot)")

    p = command("eval", "accuracy and loss of an adapter (or a full model folder) on data")
    p.add_argument("adapter", help="adapter folder, or a full model folder from --method full/head")
    p.add_argument("--data", default="rotten-tomatoes", help="file, `datasets` name or rotten-tomatoes")
    p.add_argument("--data-config", default=None, help="`datasets` configuration name (default: none)")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test",
                   help="split of a named dataset to score (files are scored whole)")
    p.add_argument("--split-seed", type=SEED, default=42, help="seed of the split (as in train)")
    p.add_argument("--subsample", type=int_at_least(1), default=None, metavar="N",
                   help="score N examples drawn with --split-seed (default: all)")
    p.add_argument("--base", default=None, help="base model id or folder (default: the one the adapter names)")
    p.add_argument("--text-column", default=None, help="text column (default: the one the adapter was trained on)")
    p.add_argument("--label-column", default=None, help="label column (default: the one the adapter was trained on)")
    p.add_argument("--max-length", type=int_at_least(1), default=None,
                   help="truncate examples to this many tokens (default: as in training)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="evaluation batch")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON (default: no file)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load the model in")
    return parser


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Library chatter (load reports, hub retries, progress bars while loading, deprecation warnings) would bury the
    one error line. Scoped to the command: warning filters and logger levels are restored afterwards, so calling
    ``main`` from Python leaves the caller's settings as they were."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # a documented tokenizers setting, not ours
    import torch

    if not torch.cuda.is_available():  # DeepSpeed (if installed) would pick the CPU anyway, but say so on import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if verbose:
        yield
        return
    names = ["", "transformers", "huggingface_hub", "peft", "accelerate", "datasets", "bitsandbytes", "torch",
             "torchao", "fourierft"]  # "": the root, through whose last-resort handler e.g. bitsandbytes warns
    levels = {name: logging.getLogger(name).level for name in names}
    hf_bars = tf_bars = False
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        hf_bars = not are_progress_bars_disabled()
        disable_progress_bars()
    except ImportError:
        pass
    try:  # "Loading weights", GGUF de-quantizing: transformers' own bars
        from transformers.utils import logging as tf_logging

        tf_bars = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if hf_bars:
            enable_progress_bars()
        if tf_bars:
            tf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `fourierft` (or `fourierft --verbose`) runs the default: train
        args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "train"])
    with _quiet(args.verbose):
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            from .train import run

            return run(args)
        from . import commands, info

        return {"merge": commands.merge, "info": info.info, "eval": commands.evaluate}[args.command](args)
    except CLIError as exc:
        print(f"fourierft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fourierft info ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"fourierft {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still gets one line; --verbose shows where
        if getattr(args, "verbose", False):
            raise
        text = str(exc).strip().splitlines()
        print(f"fourierft {args.command}: error: {type(exc).__name__}: {text[0] if text else ''} "
              "(--verbose shows the traceback)", file=sys.stderr)
        return 1
