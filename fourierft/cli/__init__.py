"""``fourierft`` command line: ``train``, ``merge``, ``info``, ``eval``.

Every failure the user can cause ends as one line on stderr and a non-zero exit code, never a traceback
(set ``FOURIERFT_DEBUG=1`` to see one anyway).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from ._errors import CLIError

__all__ = ["main", "build_parser", "CLIError"]

EPILOG = """examples:
  fourierft train                                  # embedded default: all-MiniLM-L6-v2 on Rotten Tomatoes
  fourierft train --model roberta-base --data reviews.csv --text-column review --label-column stars
  fourierft train --model gpt2 --data chat.jsonl   # prompt,response columns: causal-LM fine-tuning
  fourierft info runs/fourierft --plot spectrum.png
  fourierft eval runs/fourierft --data rotten-tomatoes
  fourierft merge runs/fourierft --out merged/
"""


def build_parser() -> argparse.ArgumentParser:
    from .options import DTYPES, add_train_arguments

    parser = argparse.ArgumentParser(prog="fourierft", description="FourierFT fine-tuning from the command line.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="show library warnings and logs")
    sub = parser.add_subparsers(dest="command", metavar="{train,merge,info,eval}")

    p = sub.add_parser("train", help="fine-tune a model (no arguments: the embedded default task)")
    add_train_arguments(p)

    p = sub.add_parser("merge", help="fold an adapter into its base model and save a plain HF model")
    p.add_argument("adapter", help="adapter folder (from fourierft train or PEFT's save_pretrained)")
    p.add_argument("--base", default=None, help="base model id or folder (default: the one the adapter names)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load, merge and save in")

    p = sub.add_parser("info", help="show an adapter's config, layers, sizes; --plot its spectrum")
    p.add_argument("adapter")
    p.add_argument("--base", default=None, help="base model for layer shapes (default: the adapter's)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the coefficients at their spectral entries")

    p = sub.add_parser("eval", help="accuracy (or loss) of an adapter on data")
    p.add_argument("adapter", help="adapter folder, or a full model folder from --method full/head")
    p.add_argument("--data", default="rotten-tomatoes", help="file, `datasets` name or rotten-tomatoes")
    p.add_argument("--data-config", default=None)
    p.add_argument("--split", choices=["train", "validation", "test"], default="test",
                   help="split of a named dataset to score (files are scored whole)")
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--base", default=None)
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    return parser


def _quiet() -> None:
    """Library chatter (load reports, hub retries, progress bars while loading) would bury the one error line."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # e.g. bitsandbytes warns through the root's last-resort handler
    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "datasets", "bitsandbytes", "torch",
                 "torchao", "fourierft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    if not torch.cuda.is_available():  # DeepSpeed (if installed) would pick the CPU anyway, but say so on import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `fourierft` (or `fourierft --verbose`) runs the default: train
        args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "train"])
    if not args.verbose:
        _quiet()
    try:
        if args.command == "train":
            from .train import run

            return run(args)
        from . import commands

        return {"merge": commands.merge, "info": commands.info, "eval": commands.evaluate}[args.command](args)
    except CLIError as exc:
        print(f"fourierft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fourierft info ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"fourierft {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still gets one line; FOURIERFT_DEBUG shows where
        if os.environ.get("FOURIERFT_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        print(f"fourierft {args.command}: error: {type(exc).__name__}: {text[0] if text else ''} "
              "(FOURIERFT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
