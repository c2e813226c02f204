"""Run folders that never leave a half-written result behind (no heavy imports: errors here come first)."""

from __future__ import annotations

import os
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
    """Move a finished run into place (replacing an old one only now, after success)."""
    if not keep_checkpoints:
        shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    (partial / "before.json").unlink(missing_ok=True)
    (partial / "best_trainable.pt").unlink(missing_ok=True)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)


def latest_checkpoint(partial: Path) -> str | None:
    ckpts = sorted((partial / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None
