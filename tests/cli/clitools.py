"""Run the CLI the way a user does: ``python -m fourierft ...`` in a subprocess, offline."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell, offline (no test may reach the network), with this checkout importable."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **(env or {})}
    return full_env


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fourierft ARGS`` like a user would, offline, and return the finished process.

    No timeout: a loaded CI machine may be slow, and CI's own budget bounds the run."""
    return subprocess.run([sys.executable, "-m", "fourierft", *args], cwd=cwd, env=cli_env(env), capture_output=True,
                          text=True)


def popen(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``python -m fourierft ARGS`` started in the background (output discarded), for tests that kill it."""
    return subprocess.Popen([sys.executable, "-m", "fourierft", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Lines that third-party packages print while being imported (before the CLI's main runs, so it cannot quiet
# them): torchao builds without this torch's extensions, torch's pytree deprecation notes, bitsandbytes' kernel probe.
_IMPORT_NOISE = re.compile(r"^(Failed to load .*torchao|W\d{4} .*torch/utils/_pytree\.py|Failed to load CPU .* from "
                           r"kernels-community)")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The process's stderr lines, less third-party import-time chatter."""
    return [line for line in proc.stderr.strip().splitlines() if not _IMPORT_NOISE.match(line)]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path
