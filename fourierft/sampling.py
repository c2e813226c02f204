"""How an adapter's spectral entries are chosen, beyond PEFT's uniform draw.

``entry_sampling`` in :class:`fourierft.FourierFTConfig`:

* ``"uniform"`` (default): PEFT's seeded ``randperm`` prefix (:func:`fourierft.entries.spectral_entries`); entries
  are regenerated from ``random_loc_seed`` and never stored, so checkpoints stay PEFT's.
* ``"frequency_biased"``: the paper's frequency bias (Gao et al. 2024, Sec. 3, Eq. 5): entries drawn uniformly,
  without repetition, from the band of frequencies whose distance to the zero frequency lies within
  ``frequency_center +- frequency_width / 2``. Our reading of the distance, in index units (cycles per side) and
  periodic (``u`` and ``d1 - u`` are the same frequency, as for the DFT of a real matrix):
  ``f(u, v) = sqrt(min(u, d1 - u)^2 + min(v, d2 - v)^2)``.
* ``"stored"``: entries given explicitly (e.g. by :func:`fourierft.compose.add_weighted_adapter`); a new layer gets
  placeholder entries that the checkpoint (or the caller) overwrites.

Every non-uniform adapter stores its entries in the checkpoint (``<layer>.fourierft_rows`` / ``fourierft_cols``)
and is saved with ``peft_type`` :data:`STORED_PEFT_TYPE`, which PEFT does not know: PEFT refuses such a
checkpoint instead of regenerating other entries and silently computing another ``dW``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .entries import randperm_prefix, spectral_entries

SAMPLINGS = ("uniform", "frequency_biased", "stored")
STORED_PEFT_TYPE = "FOURIERFT_STORED_ENTRIES"
Sampler = Callable[[int, int, int, int], tuple[torch.Tensor, torch.Tensor]]
_CHUNK = 1 << 22  # band masks are built over at most this many entries at a time


def _band_mask(rows: torch.Tensor, d1: int, d2: int, lo: float, hi: float) -> torch.Tensor:
    """``(len(rows), d2)`` bool: entries ``(u, v)`` of these rows with ``lo <= f(u, v) <= hi``."""
    du = torch.minimum(rows, d1 - rows).to(torch.float64)[:, None]
    v = torch.arange(d2)
    dv = torch.minimum(v, d2 - v).to(torch.float64)[None, :]
    f = torch.sqrt(du * du + dv * dv)
    return (f >= lo) & (f <= hi)


def frequency_biased_entries(d1: int, d2: int, n: int, seed: int, center: float,
                             width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct entries, uniform over the band ``|f(u, v) - center| <= width / 2``: ``(n,)`` int64 each.

    Memory O(d2 * chunk + d1 + n): the band is counted row by row, ``n`` band positions are drawn with the O(n)
    seeded shuffle prefix, and only the chosen rows' masks are rebuilt. Raises ``ValueError`` if the band holds
    fewer than ``n`` entries.
    """
    lo, hi = center - width / 2, center + width / 2
    step = max(1, _CHUNK // d2)
    counts = torch.cat([_band_mask(torch.arange(s, min(s + step, d1)), d1, d2, lo, hi).sum(1)
                        for s in range(0, d1, step)])  # (d1,)
    total = int(counts.sum())
    if total < n:
        raise ValueError(
            f"the frequency band {center} +- {width / 2} of a {d1}x{d2} weight holds {total} entries, fewer than "
            f"n_frequency={n}: widen frequency_width or lower n_frequency"
        )
    flat = randperm_prefix(total, n, seed) if total > 1 else torch.zeros(n, dtype=torch.int64)
    ends = counts.cumsum(0)
    rows = torch.searchsorted(ends, flat, right=True)  # (n,) the row holding each drawn band position
    offset = flat - (ends[rows] - counts[rows])
    cols = torch.empty_like(rows)
    for u in rows.unique().tolist():  # the offset-th band entry of row u
        pick = rows == u
        band_cols = _band_mask(torch.tensor([u]), d1, d2, lo, hi)[0].nonzero().flatten()
        cols[pick] = band_cols[offset[pick]]
    return rows, cols


def check_entries(rows: torch.Tensor, cols: torch.Tensor, d1: int, d2: int, where: str) -> None:
    """Raise ``ValueError`` unless entries are in range and distinct (a checkpoint could hold anything)."""
    if rows.shape != cols.shape or rows.dim() != 1:
        raise ValueError(f"{where}: rows and cols must be two (n,) vectors, got {tuple(rows.shape)}, "
                         f"{tuple(cols.shape)}")
    if rows.numel() and (rows.min() < 0 or rows.max() >= d1 or cols.min() < 0 or cols.max() >= d2):
        raise ValueError(f"{where}: spectral entries out of range for a {d1}x{d2} weight")
    if torch.unique(rows.long() * d2 + cols.long()).numel() != rows.numel():
        raise ValueError(f"{where}: duplicate spectral entries")


def sampler_for(config) -> Sampler | None:
    """The entry sampler a config asks for; ``None`` means PEFT's uniform entries (the layer's default)."""
    kind = getattr(config, "entry_sampling", "uniform")
    if kind == "uniform":
        return None
    if kind == "frequency_biased":
        center, width = config.frequency_center, config.frequency_width
        return lambda d1, d2, n, seed: frequency_biased_entries(d1, d2, n, seed, center, width)
    # "stored": placeholders of the right size; the checkpoint or the composer writes the real entries.
    return spectral_entries


def check_sampling_fields(entry_sampling: str, center, width) -> None:
    """Validate the sampling fields of a config (``ValueError`` naming the field)."""
    if entry_sampling not in SAMPLINGS:
        raise ValueError(f"entry_sampling must be one of {list(SAMPLINGS)}, got {entry_sampling!r}")
    if entry_sampling == "frequency_biased":
        for name, value in (("frequency_center", center), ("frequency_width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"entry_sampling='frequency_biased' needs a finite number {name}, got {value!r}")
        if center < 0 or width <= 0:
            raise ValueError(f"frequency_center must be >= 0 and frequency_width > 0, got {center!r}, {width!r}")
    elif center is not None or width is not None:
        raise ValueError("frequency_center/frequency_width only apply to entry_sampling='frequency_biased'")
