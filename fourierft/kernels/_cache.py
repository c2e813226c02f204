"""Caches of the kernel paths, owned by the tensors they are built from (so they die with the adapters).

* **Bases and plans** (built from an index vector and a size) hang off the index tensor, weakly keyed: when the
  adapter holding ``rows`` / ``cols`` is freed, its entry goes too. Index tensors with equal *contents* (every layer
  of one shape gets the same entries from the same seed) share one built object through a weak-valued table, so a
  basis lives exactly as long as some adapter uses it and is built once per shape. The content key is a hash of
  the indices, re-computed only when the tensor was written in place (``_version``) or re-pointed (``data_ptr``);
  an inference tensor, which has no version counter, is hashed at every lookup.
* **What inference derives from the coefficients** (the gemm path's dense ``dW``, the factored path's weighted
  inverse twiddles, the lowrank path's ``[c, -c]``) hangs off the spectrum tensor (weakly keyed), one entry per
  kind, and is checked on every lookup against the spectrum's ``_version`` and storage and the caller's key
  (entries' contents, shape, scaling, device, dtype). Fused optimizers (``AdamW(fused=True)``, transformers' default
  ``adamw_torch_fused``) write parameters without bumping ``_version``; so the first time such an entry is cached,
  one global optimizer post-step hook is registered (never at import) that invalidates them all after any optimizer
  step; :func:`clear_caches` removes it. :func:`invalidate` drops one spectrum's entries explicitly (e.g. after
  writing it through ``.data``). Callers that keep coefficient-derived tensors of their own (mixed batches' weights,
  derived from several spectra) key them on :func:`generation` too.

Under ``torch.compile`` none of this is consulted: the callers build inline (nothing Python-side in graphs). Nor
under CUDA graph capture for the spectrum's entries: a graph replays without this module's checks, so it must
read the coefficients themselves.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._reuse import clear_reuse

T = TypeVar("T")


class ById:
    """A table keyed by live tensors' identity whose entries go when their tensor is freed, as
    ``torch.utils.weak.WeakIdKeyDictionary``, but a lookup makes no weak reference (0.2 against 2.3 us on the CPU;
    every layer call looks up its plans or bases here)."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[int, tuple[weakref.ref, object]] = {}  # id(tensor) -> (weak reference to it, value)

    def get(self, key: torch.Tensor, default=None):
        rec = self._d.get(id(key))
        return rec[1] if rec is not None and rec[0]() is key else default

    def __getitem__(self, key: torch.Tensor):
        rec = self._d.get(id(key))
        if rec is None or rec[0]() is not key:
            raise KeyError(key)
        return rec[1]

    def __setitem__(self, key: torch.Tensor, value) -> None:
        k, d = id(key), self._d

        def forget(ref: weakref.ref) -> None:  # the tensor was freed: drop its entry, unless another took the id
            rec = d.get(k)
            if rec is not None and rec[0] is ref:
                del d[k]

        d[k] = (weakref.ref(key, forget), value)

    def setdefault(self, key: torch.Tensor, default):
        value = self.get(key, self)
        if value is self:
            self[key] = value = default
        return value

    def pop(self, key: torch.Tensor, default=None):
        value = self.get(key, self)
        if value is self:
            return default
        del self._d[id(key)]
        return value

    def values(self) -> list:
        return [value for ref, value in list(self._d.values()) if ref() is not None]

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


_lock = threading.RLock()
# index tensor -> [stamp, content key, {(kind, size, dtype): built}]  (the built objects are held here, strongly)
_by_index = ById()
# (kind, content key, size, device, dtype) -> built: shared between index tensors of equal contents, weakly
_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# spectrum tensor -> {kind: (key tuple, value)}
_by_spectrum = ById()
_generation = 0
_hook: list = []  # the optimizer post-step hook's handle, once registered


def clear_caches() -> None:
    """Drop every cached basis, plan and coefficient-derived tensor and this thread's reused input transform (e.g.
    to free device memory), and remove the optimizer hook; what is kept elsewhere under :func:`generation` (mixed
    batches' weights) is rebuilt at its next use."""
    clear_reuse()
    _bump_generation()
    with _lock:
        _by_index.clear()
        _shared.clear()
        _by_spectrum.clear()
        while _hook:
            _hook.pop().remove()


def invalidate(spectrum: torch.Tensor, kind: str | None = None) -> None:
    """Forget what is cached on ``spectrum`` (only ``kind``'s entry if given), and what is kept elsewhere under
    :func:`generation` for any spectrum (mixed batches' weights)."""
    _bump_generation()
    with _lock:
        if kind is None:
            _by_spectrum.pop(spectrum, None)
        else:
            _by_spectrum.get(spectrum, {}).pop(kind, None)


def cache_sizes() -> dict[str, int]:
    """How many index tensors and shared built objects are cached now, and how many spectra hold a dense ``dW``
    (``"dense"``) or another coefficient-derived entry (``"weighted"``) (for tests and debugging)."""
    kinds = [kind for entries in _by_spectrum.values() for kind in entries]
    return {"indices": len(_by_index), "built": len(_shared), "dense": kinds.count("dense"),
            "weighted": len(kinds) - kinds.count("dense")}


def _content(idx: torch.Tensor) -> str:
    data = idx.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _entry(idx: torch.Tensor) -> list:
    """The (fresh) cache entry of ``idx``: re-hashed, with its built objects dropped, when ``idx`` changed."""
    # An inference tensor (made under torch.inference_mode) has no version counter, and writes into it inside
    # inference_mode go unrecorded: its contents are its stamp, hashed at every lookup (a copy to the host). Layers
    # never hand such entries over (they build theirs outside inference_mode, fourierft.layer).
    content = _content(idx) if idx.is_inference() else None
    # data_ptr too: ``buf.data = other`` swaps the storage without bumping ``_version``
    stamp = (idx._version if content is None else content, idx.data_ptr(), idx.numel(), idx.device)
    hit = _by_index.get(idx)
    if hit is not None and hit[0] == stamp:
        return hit
    hit = [stamp, content or _content(idx), {}]
    _by_index[idx] = hit
    return hit


def index_key(idx: torch.Tensor) -> str:
    """A content hash of an index vector; re-hashed only when ``idx`` was written or re-pointed since the last call."""
    with _lock:
        return _entry(idx)[1]


def make_basis(idx: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``[cos(2 pi j idx_k / size) | sin(2 pi j idx_k / size)]`` for ``j < size``: shape ``(size, 2n)``.

    The phase is reduced exactly in integers (``j * idx mod size``) before the float conversion, so the basis is
    accurate to the dtype's rounding even for large ``size``. Computed in float64 for float64, else float32, then cast.
    """
    j = torch.arange(size, device=idx.device, dtype=torch.int64)[:, None]  # (size, 1)
    m = (j * idx.to(torch.int64)[None, :]) % size  # (size, n), exact
    work = torch.float64 if dtype == torch.float64 else torch.float32
    angle = m.to(work) * (2 * math.pi / size)
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1).to(dtype)


def cached(kind: str, idx: torch.Tensor, size: int, dtype: torch.dtype, build: Callable[..., T]) -> T:
    """``build(idx, size, dtype)``, cached on ``idx`` (and shared with index tensors of equal contents); under
    ``torch.compile`` it is built inline."""
    if torch.compiler.is_compiling():
        return build(idx, size, dtype)
    with _lock:
        entry = _entry(idx)
        hit = entry[2].get((kind, size, dtype))
        if hit is None:
            shared_key = (kind, entry[1], size, idx.device, dtype)
            hit = _shared.get(shared_key)
            if hit is None:
                # built as normal tensors even under inference_mode: training may save them for its backward
                with torch.inference_mode(False):
                    hit = build(idx, size, dtype)
                _shared[shared_key] = hit
            entry[2][(kind, size, dtype)] = hit
    return hit  # type: ignore[return-value]


def release(kind: str, idx: torch.Tensor) -> None:
    """Let go of everything of ``kind`` built from ``idx`` (it is freed unless another index tensor of equal
    contents still uses it)."""
    with _lock:
        hit = _by_index.get(idx)
        if hit is not None:
            for key in [k for k in hit[2] if k[0] == kind]:
                del hit[2][key]


def basis(idx: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Cached :func:`make_basis`."""
    return cached("basis", idx, size, dtype, make_basis)


def _bump_generation(*_: object) -> None:
    global _generation
    _generation += 1


def generation() -> int:
    """A counter bumped by every optimizer step (once :func:`watch_steps` was called) and by :func:`invalidate` and
    :func:`clear_caches`: part of the key of whatever is derived from coefficients."""
    return _generation


def watch_steps() -> None:
    """Register the optimizer post-step hook that bumps :func:`generation` (once; never at import)."""
    with _lock:
        if not _hook:
            _hook.append(register_optimizer_step_post_hook(_bump_generation))


def _spectrum_key(spectrum: torch.Tensor, key: tuple) -> tuple:
    # data_ptr: `param.data = new_tensor` swaps storage without touching the old tensor's version.
    return (key, spectrum._version, _generation, spectrum.data_ptr(), spectrum.device)


def spectrum_cached(kind: str, spectrum: torch.Tensor, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()`` (a tensor derived from ``spectrum``'s values alone), cached on ``spectrum`` under ``kind`` while
    ``key`` (its index tensors by content, :func:`index_key`; other items by ``==``, identity for plans), the
    spectrum's version and storage are unchanged and no optimizer has stepped. Built uncached under
    ``torch.compile``, during CUDA graph capture and for inference tensors (no version counter to check)."""
    if (torch.compiler.is_compiling() or spectrum.is_inference()
            or (spectrum.is_cuda and torch.cuda.is_current_stream_capturing())):
        return build()
    full = _spectrum_key(spectrum, tuple(index_key(k) if isinstance(k, torch.Tensor) else k for k in key))
    hit = _by_spectrum.get(spectrum, {}).get(kind)
    if hit is not None and hit[0] == full:
        return hit[1]
    value = build()
    watch_steps()
    with _lock:
        _by_spectrum.setdefault(spectrum, {})[kind] = (full, value)
    return value
