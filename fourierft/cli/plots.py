"""PNG plots: training curves for ``train`` and the learned spectrum for ``info --plot`` (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or GPU machines
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict[str, Any]], before: dict[str, float], out: Path, task: str) -> list[str]:
    """``loss.png`` (train loss per logging step, validation loss per evaluation) and ``accuracy.png``."""
    plt = _plt()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"], h.get("eval_accuracy")) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val or "val_loss" in before:
        pts = [(0, before.get("val_loss"))] + [(s, l) for s, l, _ in val]
        ax.plot(*zip(*[p for p in pts if p[1] is not None]), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(0, before.get("val_accuracy"))] + [(s, a) for s, _, a in val]
    pts = [(s, 100 * a) for s, a in pts if a is not None]
    if pts:
        ax.plot(*zip(*pts), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("token accuracy (%)" if task == "causal-lm" else "accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "accuracy.png")
    plt.close("all")
    return ["loss.png", "accuracy.png"]


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def short_name(name: str, width: int) -> str:
    """``name`` if it fits, else "..." and its longest tail of whole dotted parts that fits (never cut mid-word)."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 3 > width:
            break
        tail = f"{part}.{tail}"
    return "..." + tail


def spectrum(layers: list[tuple[str, list[int], torch.Tensor, torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Each layer's coefficients at their (row u, column v) spectral entries, coloured by value (diverging map)."""
    plt = _plt()
    n = len(layers)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    vmax = max(float(c.abs().max()) for *_, c in layers) or 1.0
    for ax, (name, shape, u, v, c) in zip(axes.flat, layers):
        sc = ax.scatter(v.numpy(), u.numpy(), c=c.float().numpy(), cmap="coolwarm", vmin=-vmax, vmax=vmax, s=4)
        ax.set_xlim(0, shape[1])
        ax.set_ylim(shape[0], 0)  # row 0 at the top, like the matrix
        ax.set_title(short_name(name, 36), fontsize=7)
        ax.set_xlabel("column frequency v", fontsize=7)
        ax.set_ylabel("row frequency u", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.8, label="coefficient")
    fig.suptitle("learned FourierFT coefficients at their spectral entries")
    _save(fig, path)
    plt.close("all")
