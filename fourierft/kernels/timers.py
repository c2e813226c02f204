"""The clocks ``auto`` measures candidate paths with (:func:`fourierft.kernels.dispatch.tune`).

Two regimes, two clocks. A call over many rows keeps the GPU busy while the host has long queued the next layer's
kernels, so what counts is device time (:func:`cuda_timer`). A call over a few rows (a decoding step) finishes on
the GPU before the host has issued the next one, so what counts is the host's time to issue it, launches included
(:func:`host_timer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# GPU cycles of busy-waiting queued before a timed batch (about 5 ms at an H200's 1.98 GHz): the host enqueues the
# timed calls while the GPU is still busy, so the events measure GPU time. Without it a path of many small kernels
# (factored: ~30 launches a training call) was timed by its launch latency: measured alone it lost to lowrank by
# 1.6x on every LLaMA shape, in the model it trained the all-linear step 8% faster (H200, bench/train_step.py
# and bench/kernels.py, 2026-12-01). Inside a model the host runs ahead of the big GEMMs just so.
_PAD_CYCLES = 10_000_000


def cuda_timer(path: str, fn: Callable[[], object], calls: int = 3) -> float:
    """Seconds of GPU time per call of ``fn()`` (of ``path``) on the current CUDA stream, by CUDA events around
    ``calls`` back-to-back calls queued behind a busy-wait (``_PAD_CYCLES``), so host launch gaps do not count."""
    pad = getattr(torch.cuda, "_sleep", None)  # PyTorch's own busy-wait kernel; without it, launch gaps count
    if pad is not None:
        pad(_PAD_CYCLES)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def host_timer(path: str, fn: Callable[[], object], calls: int = 10) -> float:
    """Wall-clock seconds per call of ``fn()`` (of ``path``) over ``calls`` back-to-back calls from an idle device
    to its next idle moment: the larger of the host's time to issue a call and the device's time to run it, as a
    decoding step pays it."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls
