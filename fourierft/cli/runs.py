"""Run folders that never leave a half-written result behind (no heavy imports: errors here come first)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from pathlib import Path

from ._errors import CLIError


def run_folders(out: str | None, method: str, *, resume: bool, overwrite: bool,
                check: bool = True) -> tuple[Path, Path]:
    """``(final, partial)``: everything is written into ``partial`` (``<final>.partial``, which also holds the
    checkpoints that ``--resume`` continues from) and renamed to ``final`` only when the run succeeded.

    Under torchrun only rank 0 checks (``check``): the others take rank 0's folders once the process group is up
    (see ``loop.fit``), so a folder rank 0 just created cannot make them fail."""
    if not check:
        final = Path(out) if out is not None else Path("runs") / method
        return final, final.with_name(final.name + ".partial")
    if out is not None:
        final = Path(out)
        if final.exists() and not final.is_dir():
            raise CLIError(f"--out {out}: is a file")
        if final.exists() and any(final.iterdir()) and not overwrite:
            raise CLIError(f"--out {out}: already exists; pass --overwrite to replace it, or pick another --out")
        partial = final.with_name(final.name + ".partial")
        if partial.exists() and not resume:
            raise CLIError(f"{partial} holds an interrupted run: pass --resume to continue it, or delete it")
        if resume and not partial.exists():
            raise CLIError(f"--resume: no interrupted run at {partial}")
        return final, partial
    root = Path("runs")
    partials = sorted(root.glob(f"{method}*.partial"), key=lambda p: p.stat().st_mtime)
    if resume:
        if not partials:
            raise CLIError(f"--resume: no interrupted {method} run under runs/ (pass --out)")
        return partials[-1].with_name(partials[-1].name.removesuffix(".partial")), partials[-1]
    for i in range(1, 10_000):
        final = root / (method if i == 1 else f"{method}-{i}")
        partial = final.with_name(final.name + ".partial")
        if not final.exists() and not partial.exists():
            return final, partial
    raise CLIError("runs/ is full: pass --out")


def publish(partial: Path, final: Path, *, keep_checkpoints: bool = False) -> None:
    """Move a finished run into place, replacing an old one only now (after success) and as a whole: the run is
    first renamed to a staging name of its own (so that a kill never leaves a finished run where ``--resume`` looks
    for an interrupted one), then swapped with the old run in one step (:func:`fourierft.folder_io.replace_folder`).
    A process killed in between leaves the old run in place; its staging folder is removed by the next publish."""
    from ..folder_io import remove_stale, replace_folder

    if not keep_checkpoints:
        shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    (partial / "before.json").unlink(missing_ok=True)
    (partial / "best_trainable.pt").unlink(missing_ok=True)
    prefix = f".{final.name}.publishing-"
    remove_stale(str(final.parent), prefix)
    staging = final.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(partial, staging)
    replace_folder(str(staging), str(final))


ARGS_FILE = "run_args.json"
# arguments that may change between an interrupted run and its --resume: where and how it runs, not what it computes
_FREE = {"resume", "overwrite", "verbose", "num_workers", "report_to", "keep_checkpoints", "no_plots", "command",
         "eval_batch_size"}
# what the Trainer writes into a checkpoint; trainer_state.json comes last, after the weights and optimizer state
_CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin",
            "model.safetensors.index.json")


def record_args(partial: Path, args: argparse.Namespace, *, resume: bool) -> None:
    """Write the run's arguments into ``partial`` (a new run), or refuse a ``--resume`` whose arguments differ."""
    mine = {k: v for k, v in sorted(vars(args).items()) if k not in _FREE}
    mine = json.loads(json.dumps(mine, default=str))  # tuples as lists, as they read back
    path = partial / ARGS_FILE
    if resume:
        if not path.exists():
            raise CLIError(f"--resume: {partial} does not record its arguments ({ARGS_FILE}); start a new run")
        before = json.loads(path.read_text())
        changed = [k for k in sorted(set(before) | set(mine)) if before.get(k) != mine.get(k)]
        if changed:
            what = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} -> {mine.get(k)!r}" for k in changed[:4])
            raise CLIError(f"--resume with other arguments than the interrupted run ({what}): pass the same ones, or "
                           "start a new run")
        return
    partial.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine, indent=2))
    os.replace(tmp, path)


def is_complete(checkpoint: Path) -> bool:
    """A Trainer checkpoint with its state, optimizer, scheduler and weights (a kill mid-save leaves some out)."""
    return all((checkpoint / f).is_file() for f in _CHECKPOINT_FILES) and any(
        (checkpoint / f).is_file() for f in _WEIGHTS)


def latest_checkpoint(partial: Path) -> str | None:
    """The newest complete checkpoint of an interrupted run (an incomplete newer one is passed over)."""
    ckpts = [p for p in (partial / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if is_complete(ckpt):
            return str(ckpt)
    return None
