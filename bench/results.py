"""One schema for every benchmark run: a JSON file per run under ``bench/results/``.

    {
      "schema": 1,
      "benchmark": "train_step",            # which script (bench/<benchmark>.py)
      "date": "2026-12-01T08:00:00Z",       # UTC, when the run ended
      "machine": "NVIDIA H200" | "CPU x86_64 (2 cores)",
      "versions": {"python": ..., "torch": ..., "peft": ..., "transformers": ..., "fourierft": ...},
      "command": "python bench/train_step.py --case gpu",
      "note": "what this run compared",     # optional, one line
      "rows": [ {column: value, ...}, ... ]  # flat records; every row of one run has the same keys
    }

Row values are JSON scalars (str, int, float, bool, null). A ratio is only ever computed between rows of the same
file (one run, one machine). Runs converted from older records carry "unknown" where the record did not say.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

SCHEMA = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_PACKAGES = ("torch", "peft", "transformers", "triton", "fourierft")
_REQUIRED = ("benchmark", "date", "machine", "versions", "command", "rows")
_SCALARS = (str, int, float, bool, type(None))


def machine() -> str:
    """The GPU's name when one is visible to torch, else the CPU and its core count."""
    try:
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            name = torch.cuda.get_device_name()
            return name if count == 1 else f"{count} x {name}"
    except ImportError:
        pass
    return f"CPU {platform.machine()} ({os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def check_rows(benchmark: str, rows: list[dict]) -> None:
    """Raise ``ValueError`` unless ``rows`` is a non-empty list of flat dicts that all have the same keys in order."""
    if not rows:
        raise ValueError(f"{benchmark}: no rows to write")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{benchmark}: row {i} is a {type(row).__name__}, expected a dict of column -> value")
        if list(row) != keys:
            raise ValueError(f"{benchmark}: every row needs the columns {keys}, row {i} has {list(row)}")
        nested = [k for k, v in row.items() if not isinstance(v, _SCALARS)]
        if nested:
            raise ValueError(f"{benchmark}: row {i} column(s) {nested} are not str/int/float/bool/None; "
                             "flatten them into columns of their own")


def write_results(benchmark: str, rows: list[dict], *, command: str | None = None,
                  out: str | os.PathLike | None = None, note: str | None = None, date: str | None = None,
                  machine_name: str | None = None, versions_used: dict[str, str] | None = None) -> Path:
    """Write one run's ``rows`` in the schema above and return the file's path.

    ``out`` defaults to ``bench/results/<benchmark>-<UTC timestamp>.json``. Rows must be flat dicts with the same keys.
    ``date``, ``machine_name`` and ``versions_used`` default to now and this process's machine and packages; they are
    given only when recording a run made elsewhere. Nothing is written when a check fails, and the file appears whole
    or not at all (written beside it, then renamed).
    """
    check_rows(benchmark, rows)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    record = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "date": date or now.isoformat().replace("+00:00", "Z"),
        "machine": machine_name or machine(),
        "versions": versions_used if versions_used is not None else versions(),
        "command": command or shlex.join(["python", _script(sys.argv[0]), *sys.argv[1:]]),
    }
    if note:
        record["note"] = note
    record["rows"] = rows
    text = json.dumps(record, indent=1) + "\n"  # serialise first: a failure here leaves no file behind
    stamp = (_dt.datetime.fromisoformat(date.replace("Z", "+00:00")) if date else now).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) if out else RESULTS_DIR / f"{benchmark}-{stamp}.json"
    for i in range(2, 100):  # two runs in one second get two files, not one overwritten
        if out or not path.exists():
            break
        path = RESULTS_DIR / f"{benchmark}-{stamp}-{i}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _script(argv0: str) -> str:
    """The script as a path from the repo root when it lies inside it (``bench/x.py``), else as given."""
    path = Path(argv0).resolve()
    try:
        return path.relative_to(RESULTS_DIR.parent.parent).as_posix()
    except ValueError:
        return Path(argv0).as_posix()


def load_results(path: str | os.PathLike) -> dict:
    """Read one results file, checking its schema version, its fields and that its rows share one set of columns."""
    record = json.loads(Path(path).read_text())
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {record.get('schema')!r}, expected {SCHEMA}")
    missing = set(_REQUIRED) - set(record)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}")
    check_rows(f"{path}", record["rows"])
    return record
