"""Argument types that reject bad values while parsing (argparse then exits 2 with one line, see ``Parser``), and
the help formatter that shows every default."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends ``(default: X)`` to each option whose help does not state it."""

    def _get_help_string(self, action: argparse.Action) -> str:  # argparse's documented extension point
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
            return f"{text} (default: {'on' if action.default else 'off'})"
        value = action.default
        if isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return f"{text} (default: {value})"


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None):
    """An int in [low, high]."""
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            want = f"at least {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    """A finite float in the interval (``low_open``/``high_open``: exclusive ends)."""
    def parse(text: str) -> float:
        value = float(_number(text, float))
        bad = value < low or value > high or (low_open and value == low) or (high_open and value == high)
        if bad:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            want = f"> {low:g}" if high == math.inf and low_open else f">= {low:g}" if high == math.inf else \
                f"in {lo}{low:g}, {high:g}{hi}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def nonzero_float(text: str) -> float:
    value = float(_number(text, float))
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0 (dW = scaling * ...: 0 would train nothing)")
    return value


def max_steps(text: str) -> int:
    value = int(_number(text, int))
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"must be a positive step count, or -1 for --epochs; got {value}")
    return value


def csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return items


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in csv_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"layer indices must be >= 0, got {text!r}")
    return values


def pattern(text: str) -> dict[str, int]:
    """``--n-frequency-pattern 'query=2000,value=500'`` or a JSON object; each n >= 1."""
    try:
        if text.strip().startswith("{"):
            value = json.loads(text)
        else:
            value = {k.strip(): int(v) for k, v in (item.split("=", 1) for item in csv_list(text))}
    except (ValueError, json.JSONDecodeError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected 'name=n,...' or a JSON object, got {text!r}") from exc
    if not isinstance(value, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                              for n in value.values()):
        raise argparse.ArgumentTypeError("expected a mapping of layer names to n_frequency (integers >= 1)")
    return value


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(t) for t in csv_list(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three fractions like 0.8,0.1,0.1, got {text!r}") from exc
    if len(parts) != 3 or any(not p > 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def check_regex(flag: str, text: str) -> None:
    """A clear error for a pattern that does not compile (PEFT would raise a bare re.error at wrap time)."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: not a valid regular expression ({exc})") from exc
