"""Caches shared by the kernel paths: cos/sin bases and factored-DFT plans per (size, entries), and dense ``dW`` for
inference.

Nothing here may go stale silently:

* bases depend only on the *values* of an index vector and a size, so they are keyed on a content hash of the
  indices (computed once per index tensor and re-computed whenever that tensor's ``_version`` changes, i.e. after any
  in-place write). Layers of the same shape share entries (same seed), so they share one basis.
* the dense ``dW`` cache is keyed on the spectrum tensor itself (weakly, so it dies with the parameter) and checks
  ``spectrum._version`` (bumped by every optimizer step or in-place edit), the entries' versions, the shape,
  the scaling, the device and the dtype on every lookup.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

T = TypeVar("T")
_lock = threading.Lock()
# index tensor -> (its _version when hashed, content key)
_index_keys: WeakIdKeyDictionary = WeakIdKeyDictionary()
# (kind, content key, size, device, dtype) -> what that kind builds from the indices: the (size, 2n) basis
# [cos | sin] ("basis", lowrank path) or a factored-DFT plan ("plan", factored path)
_built: dict[tuple, object] = {}
# spectrum tensor -> (key tuple, dW)
_dense: WeakIdKeyDictionary = WeakIdKeyDictionary()


def clear_caches() -> None:
    """Drop every cached basis and dense ``dW`` (e.g. to free device memory)."""
    with _lock:
        _index_keys.clear()
        _built.clear()
        _dense.clear()


def index_key(idx: torch.Tensor) -> str:
    """A content hash of an index vector; re-hashed only when ``idx`` was written or re-pointed since the last call."""
    # data_ptr too: ``buf.data = other`` swaps the storage without bumping ``_version``
    stamp = (idx._version, idx.data_ptr(), idx.numel())
    hit = _index_keys.get(idx)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    data = idx.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    key = hashlib.blake2b(data, digest_size=16).hexdigest()
    _index_keys[idx] = (stamp, key)
    return key


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
    """``build(idx, size, dtype)``, cached per (kind, content of ``idx``, size, device, dtype); under
    ``torch.compile`` it is built inline (no Python-side cache in graphs)."""
    if torch.compiler.is_compiling():
        return build(idx, size, dtype)
    key = (kind, index_key(idx), size, idx.device, dtype)
    hit = _built.get(key)
    if hit is None:
        hit = build(idx, size, dtype)
        with _lock:
            _built[key] = hit
    return hit  # type: ignore[return-value]


def basis(idx: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Cached :func:`make_basis`."""
    return cached("basis", idx, size, dtype, make_basis)


# Fused optimizers (torch.optim.AdamW(fused=True), transformers' default "adamw_torch_fused") write parameters
# without bumping ``_version``, so a version check alone serves a stale dW after a step. Every optimizer step
# anywhere bumps this generation through torch's global post-step hook, which invalidates every cached dW.
_generation = 0


def _bump_generation(*_: object) -> None:
    global _generation
    _generation += 1


register_optimizer_step_post_hook(_bump_generation)


def _dense_key(spectrum: torch.Tensor, key: tuple) -> tuple:
    # data_ptr: `param.data = new_tensor` swaps storage without touching the old tensor's version.
    return (key, _generation, spectrum.data_ptr())


def dense_get(spectrum: torch.Tensor, key: tuple) -> torch.Tensor | None:
    """The cached dense ``dW`` for ``spectrum`` if it was built with exactly ``key`` (versions included) and no
    optimizer has stepped since."""
    hit = _dense.get(spectrum)
    if hit is not None and hit[0] == _dense_key(spectrum, key):
        return hit[1]
    return None


def dense_put(spectrum: torch.Tensor, key: tuple, dw: torch.Tensor) -> None:
    with _lock:
        _dense[spectrum] = (_dense_key(spectrum, key), dw)
