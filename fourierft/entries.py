"""Spectral entries: which ``n`` of the ``d1 x d2`` frequencies an adapter trains.

The reference (PEFT 0.21, ``FourierFTLayer.update_layer``) draws them as

    flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
    rows, cols = flat // d2, flat % d2            # permutation order kept, not sorted

and never stores them: checkpoints hold only the coefficients, so a reimplementation must reproduce these indices
bit for bit. ``randperm`` costs O(d1 d2) time and memory per layer (minutes for a 7B model with every linear layer).

PyTorch's CPU ``randperm(N)`` for ``N < 2**32 / 20`` is a forward Fisher-Yates shuffle driven by a standard
mt19937 seeded with ``seed``: ``for i in 0..N-2: z = mt() % (N - i); swap(r[i], r[i + z])``. Slot ``i`` is final after
step ``i``, so the first ``n`` slots need only ``n`` draws and a map of the slots displaced so far: O(n) time and
memory. :func:`_fast_path_reproduces_torch` checks this against the installed torch once per process; where it does
not hold (another torch, seeds outside ``[0, 2**32)``, huge ``N``) we fall back to ``torch.randperm``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

_MASK32 = 0xFFFFFFFF
# torch switches to a different (64-bit draw) algorithm from this size on (aten/src/ATen/native/TensorFactories.cpp).
_FISHER_YATES_MAX_N = (2**32 - 1) // 20


def _mt19937(seed: int) -> Iterator[int]:
    """The raw 32-bit output stream of the reference MT19937 (Matsumoto & Nishimura, init_genrand)."""
    mt = [0] * 624
    mt[0] = seed & _MASK32
    for i in range(1, 624):
        mt[i] = (1812433253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & _MASK32
    while True:
        for i in range(624):  # twist
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
            mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        for y in mt:  # temper
            y ^= y >> 11
            y ^= (y << 7) & 0x9D2C5680
            y ^= (y << 15) & 0xEFC60000
            yield y ^ (y >> 18)


def randperm_prefix(total: int, n: int, seed: int) -> torch.Tensor:
    """``torch.randperm(total, generator=Generator().manual_seed(seed))[:n]`` in O(n): ``(n,)`` int64."""
    draws = _mt19937(seed)
    displaced: dict[int, int] = {}
    out = []
    for i in range(min(n, total - 1)):
        j = i + next(draws) % (total - i)
        out.append(displaced.get(j, j))
        displaced[j] = displaced.get(i, i)  # slot i is final now; only slot j keeps what i held
    if n == total:  # the last slot takes no draw
        out.append(displaced.get(total - 1, total - 1))
    return torch.tensor(out, dtype=torch.int64)


def _torch_randperm_prefix(total: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


@functools.cache
def _fast_path_reproduces_torch() -> bool:
    """Whether the installed torch's ``randperm`` is the shuffle we reproduce (checked once, on small sizes)."""
    cases = [(1, 1, 0), (2, 2, 3), (100, 100, 777), (1000, 37, 123456789), (4099, 300, 2**32 - 1)]
    return all(torch.equal(randperm_prefix(*c), _torch_randperm_prefix(*c)) for c in cases)


def _fast_path_applies(total: int, seed: int) -> bool:
    return 0 <= seed < 2**32 and total < _FISHER_YATES_MAX_N and _fast_path_reproduces_torch()


@functools.lru_cache(maxsize=256)
def _spectral_entries(out_features: int, in_features: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = out_features * in_features
    if _fast_path_applies(total, seed):
        flat = randperm_prefix(total, n, seed)
    else:
        flat = _torch_randperm_prefix(total, n, seed)
    return flat // in_features, flat % in_features


def spectral_entries(out_features: int, in_features: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's entries ``(rows, cols)``, each ``(n,)`` int64 on the CPU, cached per (shape, n, seed).

    Every layer of one shape gets the same entries, as in the reference. Returns fresh tensors (the cache is never
    handed out for in-place edits).
    """
    if not 0 < n <= out_features * in_features:
        raise ValueError(
            f"n_frequency must be in [1, out_features * in_features] = [1, {out_features * in_features}] for a "
            f"{out_features}x{in_features} weight, got {n}"
        )
    rows, cols = _spectral_entries(out_features, in_features, n, seed)
    return rows.clone(), cols.clone()
