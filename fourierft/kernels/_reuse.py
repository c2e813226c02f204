"""One transformed layer input, kept for the next layer that reads the same tensor through the same operand.

Every layer of one shape gets the same entries (PEFT draws them from one seed per shape), and transformers feed one
tensor to several such layers in a row: a LLaMA block's ``q_proj``, ``k_proj`` and ``v_proj`` read the same hidden
states (all 4096 x 4096 in LLaMA-7B, so one plan for their column frequencies), ``gate_proj`` and ``up_proj``
another. The first layer's analysis of its input (``X_k``, ``(2n, T)``, also what its backward saves) is then
exactly the next one's: :func:`reuse` hands it over instead of computing it again, and autograd saves one tensor for
all of them instead of one each. Without autograd (``torch.no_grad``, as transformers' ``generate`` and pipelines
run) the factored path keeps the analysis already gathered into the synthesis' layout, keyed by the pair of plans,
so layers with the same row entries too (``q_proj``, ``k_proj`` and ``v_proj`` again) share the gather as well.

It is a cache of a pure function, never a state. It keeps transforms only inside a :func:`reuse_scope`, which the
tuner opens around each forward and ``generate`` of the model (PEFT's ``_enable_peft_forward_hooks``), so nothing
is kept across calls, and it holds one entry per thread: the last transform, let go of when the input is freed or
the scope ends. A hit needs the very same tensor object, unchanged since (its version counter and storage), and the
very same operand object (plans and bases are cached per entries' contents, so equal entries give one object). It
is off for inference tensors (no version counter), under CUDA graph capture (a graph must record the analysis it
replays) and inside ``torch.compile`` (inductor reuses buffers without bumping versions). Writes that bypass the
version counter (through ``.data``, or a raw-pointer kernel) into an activation between two layers that read it,
within one forward, would go unseen.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_local = threading.local()


class _Entry:
    __slots__ = ("__weakref__", "input", "operand", "stamp", "value")

    def __init__(self, x: torch.Tensor, operand: object, value: torch.Tensor) -> None:
        me = weakref.ref(self)  # not self: no reference cycle, so a replaced entry is freed at once
        self.input = weakref.ref(x, lambda _: _forget(me()))  # a freed input frees the value with it
        self.operand = weakref.ref(operand)
        self.stamp = _stamp(x)
        self.value: torch.Tensor | None = value

    def hit(self, x: torch.Tensor, operand: object) -> torch.Tensor | None:
        if self.value is not None and self.input() is x and self.operand() is operand and self.stamp == _stamp(x):
            return self.value
        return None


def _forget(entry: _Entry | None) -> None:
    if entry is not None:
        entry.value = None


def _stamp(x: torch.Tensor) -> tuple:
    return (x._version, x.data_ptr(), x.shape, x.stride(), x.dtype)


def _usable(x: torch.Tensor) -> bool:
    return not x.is_inference() and not (x.is_cuda and torch.cuda.is_current_stream_capturing())


@contextmanager
def reuse_scope() -> Iterator[None]:
    """Let :func:`reuse` keep transforms inside this block (nestable); the kept one is dropped when the outermost
    block ends."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            _local.entry = None


def reuse(x: torch.Tensor, operand: object, transform: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``transform()`` (a pure function of ``x``'s values and ``operand``, run without autograd), or, inside a
    :func:`reuse_scope`, its result for the same unchanged ``x`` and ``operand`` from the call before."""
    if not getattr(_local, "depth", 0) or not _usable(x):
        with torch.no_grad():
            return transform()
    entry = getattr(_local, "entry", None)
    value = None if entry is None else entry.hit(x, operand)
    if value is None:
        with torch.no_grad():
            value = transform()
        _local.entry = _Entry(x, operand, value)
    return value


def clear_reuse() -> None:
    """Forget this thread's kept transform."""
    _local.entry = None
