"""How ``path="auto"`` picks a path: measured once per layer key on CUDA, a flop model on the CPU and as fallback.

The choice is made per key ``(device, out_features, in_features, n, dtype, training, few_rows)``, where
``few_rows`` says the call has at most :data:`FEW_ROWS` rows (a decoding step, a short prompt):

* on a CUDA device, at the key's first eager use, each candidate path is timed on the call's own inputs (five
  rounds interleaved across the candidates after one untimed call each, the best round counting) and the fastest
  is kept (:func:`tune`); a card other than the one the flop model was fitted on gets its own answer. Many rows
  are timed in device time, few rows in wall-clock time, launches included (:mod:`.timers`): a prefill's choice
  (the factored path's dozen small kernels) is not a decoding step's;
* on the CPU (and wherever nothing was measured, including under ``torch.compile``) the flop model of
  :func:`choose_path` decides.

Every choice made is kept in a table owned by this module (:func:`path_choices` returns it) and logged once on
the ``"fourierft"`` logger at INFO level. Under ``torch.compile`` the choice is a trace-time constant
(:func:`static_path`): the table is read, never written (every candidate runs there: lowrank and factored as
opaque custom ops, :mod:`.opaque`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._cache import invalidate, release
from .factored import split_cost
from .paths import IMPLS
from .timers import cuda_timer, host_timer

logger = logging.getLogger("fourierft")

# Cost of the factored path per row: S * (its flops, ``d * split_cost``, per transform) + K * (d1 + d2). Its small
# batched matmuls run below the big GEMMs' rate (S) and each transform writes and reads a (T, 2d) stage-1 result
# (K, per element of a row). H100: fitted on bench/kernels.py at LLaMA shapes, n = 1000 / 3000 / 10000 (bf16,
# docs/benchmarks.md): lowrank stays best at n = 1000, factored wins training from n ~ 2000 (1.1-2.1x over the next
# path), never inference (the cached-dW GEMM or lowrank do). CPU: a rough fit (2 cores, fp32, 1024^2 and 2048^2).
_FACTORED_COST = {"cuda": (2.0, 5_000.0), "cpu": (2.0, 3_000.0)}
# Training cost of the gemm path per row, in units of d1 d2: forward, input grad and G = g^T x are 6; on the H100 the
# dense complex ifft2 for dW and the rfft2 of G add about as much again (1.6 ms per 4096^2 layer against lowrank's
# 0.9 ms at n = 1000, docs/benchmarks.md).
_GEMM_TRAIN = {"cuda": 10.0, "cpu": 6.0}
# the paths auto chooses from, in tie-break order (eager and under torch.compile alike)
CANDIDATES: tuple[str, ...] = ("lowrank", "gemm", "factored")
# ... for a call of few rows: not gemm, whose cached dW is a second copy of the frozen weight per layer (32 MiB at
# 4096^2 in bf16) for tens of us a decoding step (64 rows, 4096^2, n = 1000: 0.058 against lowrank's 0.088 ms on an
# H200, host clock)
FEW_ROWS_CANDIDATES: tuple[str, ...] = ("lowrank", "factored")
_COMPILED_INFERENCE: tuple[str, ...] = ("lowrank", "factored")  # the paths that keep their caches in a graph
# gemm holds a d1 x d2 dW per layer (saved for backward, cached at inference: peak 3.51 against 2.86 GiB for lowrank,
# all-linear inference of the 4-layer LLaMA-7B-shaped model, H200, bench/train_step.py); measured, it is kept only
# when it is more than this much faster than the best other path
_HOLDS_DENSE: tuple[str, ...] = ("gemm",)
DENSE_MARGIN = 0.05
# A call of at most this many rows (tokens) is host-bound on a GPU: its own key, timed by the wall clock. 64 rows
# decoding one token each through a 4096^2 layer: the GPU finishes any path's kernels in tens of us, the host
# issues the factored path's ~12 launches in about as long again.
FEW_ROWS = 256


def flop_costs(out_features: int, in_features: int, n: int, *, device_type: str, training: bool) -> dict[str, float]:
    """The flop model's cost per row of each candidate path (see :func:`choose_path`)."""
    d1, d2 = out_features, in_features
    s, kf = _FACTORED_COST.get(device_type, _FACTORED_COST["cuda"])
    factored = s * (d1 * split_cost(d1, n)[1] + d2 * split_cost(d2, n)[1]) + kf * (d1 + d2)
    if training:
        gemm = _GEMM_TRAIN.get(device_type, _GEMM_TRAIN["cuda"]) * d1 * d2
        return {"lowrank": 8.0 * n * (d1 + d2), "gemm": gemm, "factored": 2.0 * factored}
    return {"lowrank": 4.0 * n * (d1 + d2), "gemm": 2.0 * d1 * d2, "factored": factored}


def _fastest(costs: dict[str, float], allowed: tuple[str, ...]) -> str:
    best = ""
    for path in allowed:  # a plain loop: dynamo-friendly, ties go to the first listed
        if path in costs and (not best or costs[path] < costs[best]):
            best = path
    return best


def choose_path(out_features: int, in_features: int, n: int, *, device_type: str, training: bool) -> str:
    """The fastest path by a flop model (per row of ``x``; ``d1, d2 = out_features, in_features``).

    * gemm: ``6 d1 d2`` training on CPU (forward, input grad, ``G = g^T x``; ``10 d1 d2`` on GPUs, ``_GEMM_TRAIN``),
      ``2 d1 d2`` inference (``dW`` cached);
    * lowrank: ``8 n (d1 + d2)`` training, ``4 n (d1 + d2)`` inference;
    * factored: ``S (d1 c(d1) + d2 c(d2)) + K (d1 + d2)`` inference, twice that training, ``c`` from
      :func:`~fourierft.kernels.factored.split_cost` (``_FACTORED_COST``).

    Fitted on an H100 (bf16, 4096 rows, LLaMA shapes): lowrank at n=1000, factored for training and gemm for
    inference at n=3000 and above; on CPU (fp32, BERT-sized 384 x 384, n=1000) gemm. Ties go to the first listed.
    """
    costs = flop_costs(out_features, in_features, n, device_type=device_type, training=training)
    return _fastest(costs, CANDIDATES)


@dataclass
class Choice:
    """One row of the table of choices: the path, how it was chosen, and the measured median seconds per call."""

    path: str
    how: str  # "measured" or "flop model"
    seconds: dict[str, float] = field(default_factory=dict)


# (device, out_features, in_features, n, dtype, training, few_rows) -> Choice; owned here, cleared by
# clear_path_choices
_choices: dict[tuple, Choice] = {}


def path_key(x: torch.Tensor, out_features: int, in_features: int, n: int, training: bool) -> tuple:
    few = x.numel() <= FEW_ROWS * x.shape[-1]  # x: (..., in_features), at most FEW_ROWS rows
    return (str(x.device), out_features, in_features, n, x.dtype, training, few)


def path_choices() -> dict[tuple, Choice]:
    """A copy of the choices made so far: ``(device, out, in, n, dtype, training, few_rows) -> Choice``."""
    return dict(_choices)


def clear_path_choices() -> None:
    """Forget every choice (the next use of each key chooses again)."""
    _choices.clear()


def _record(key: tuple, choice: Choice) -> str:
    _choices[key] = choice
    dev, d1, d2, n, dtype, training, few = key
    detail = ", ".join(f"{p} {s * 1e3:.3f} ms" for p, s in choice.seconds.items())
    logger.info(
        "fourierft: %s for %dx%d n=%d %s %s%s on %s (%s%s)", choice.path, d1, d2, n,
        str(dtype).removeprefix("torch."), "training" if training else "inference",
        f" of <= {FEW_ROWS} rows" if few else "", dev, choice.how, f": {detail}" if detail else "",
    )
    return choice.path


def _timed_call(path, x, spectrum, rows, cols, out_features, in_features, scaling, training):
    """One call of ``path`` (forward, plus backward when training, then on detached copies of the inputs)."""
    if not training:  # inference leaves its inputs alone: no copies (under inference_mode they could not be cached on)
        return lambda: IMPLS[path](x, spectrum, rows, cols, out_features, in_features, scaling)
    xs = x.detach().clone().requires_grad_()
    cs = spectrum.detach().clone().requires_grad_()
    g = torch.randn(*x.shape[:-1], out_features, device=x.device, dtype=x.dtype)

    def call():
        # identity saved-tensor hooks on top of the stack: an enclosing activation checkpoint's hooks must not see
        # (and recompute for) the timing calls
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            xs.grad = cs.grad = None
            IMPLS[path](xs, cs, rows, cols, out_features, in_features, scaling).backward(g)

    return call


def tune(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    *,
    training: bool,
    timer: Callable[[str, Callable[[], object]], float] | None = None,
    candidates: tuple[str, ...] | None = None,
    rounds: int = 5,
) -> str:
    """Measure each candidate path on these inputs, record the fastest for their key and return it.

    ``timer(path, fn)`` returns the seconds one call ``fn()`` of ``path`` takes (default: :func:`.cuda_timer`,
    or :func:`.host_timer` for a call of at most :data:`FEW_ROWS` rows); ``candidates`` default to
    :data:`CANDIDATES` (:data:`FEW_ROWS_CANDIDATES` for a call of few rows); each
    ``fn`` runs the path once (when ``training``: forward and backward with a random upstream gradient, on
    detached copies of ``x`` and ``spectrum``, so the caller's tensors and graph are untouched). Each candidate
    is called once untimed, then timed ``rounds`` times interleaved with the others; the best time counts, except
    that gemm (which holds a ``d1 x d2`` tensor per layer) must beat the best other path by more than
    :data:`DENSE_MARGIN`. A candidate that fails (e.g. out of memory) is skipped. ``x``: ``(..., in_features)``;
    the key is :func:`path_key`'s. The caches the losers built are dropped, except those a path chosen for
    another key of this layer shape reads.
    """
    key = path_key(x, out_features, in_features, spectrum.shape[0], training)
    if timer is None:
        timer = host_timer if key[-1] else cuda_timer
    if candidates is None:
        candidates = FEW_ROWS_CANDIDATES if key[-1] else CANDIDATES
    calls = {}
    for path in candidates:  # a warm-up call each (bases, plans, library heuristics), untimed
        try:
            fn = _timed_call(path, x, spectrum, rows, cols, out_features, in_features, scaling, training)
            fn()
            calls[path] = fn
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            logger.debug("fourierft: %s skipped while tuning %s: %s", path, key, err)
    seconds: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, so that a clock ramp or a neighbour's load hits every candidate alike
        for path, fn in list(calls.items()):
            try:
                t = float(timer(path, fn))
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                logger.debug("fourierft: %s skipped while tuning %s: %s", path, key, err)
                calls.pop(path)
                seconds.pop(path, None)
                continue
            seconds[path] = min(seconds.get(path, t), t)  # the best of the rounds: noise only ever adds time
    if not seconds:
        raise RuntimeError(f"fourierft: no candidate path ran for {key}; force one with path=...")
    best = _fastest(seconds, candidates)
    if best in _HOLDS_DENSE:  # it holds a d1 x d2 tensor per layer: only worth it when clearly faster
        lean = _fastest(seconds, tuple(p for p in candidates if p not in _HOLDS_DENSE))
        if lean and seconds[lean] <= seconds[best] * (1.0 + DENSE_MARGIN):
            best = lean
    used = {best} | {c.path for k, c in _choices.items() if k[:5] == key[:5]}  # this shape's other keys' paths
    _drop_caches([p for p in candidates if p not in used], spectrum, rows, cols)
    return _record(key, Choice(best, "measured", seconds))


# What each path leaves cached on the layer's own tensors (``_cache.py``). Timing a candidate builds it; left there,
# the losers' bases, plans and (at inference, on the real spectrum) dense dW were 0.11-0.14 GiB of training peak and
# 0.28-0.42 GiB of inference peak that the chosen path never reads (H200, bench/train_step.py, 2026-12-01).
_CACHE_KINDS = {"lowrank": ("basis",), "factored": ("plan",), "fused": ("full-plan",)}
# ... and on its spectrum, at inference (``_cache.spectrum_cached``)
_SPECTRUM_KINDS = {"gemm": "dense", "lowrank": "coefficients", "factored": "weighted"}


def _drop_caches(paths: list[str], spectrum: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    for path in paths:
        if path in _SPECTRUM_KINDS:
            invalidate(spectrum, _SPECTRUM_KINDS[path])
        for kind in _CACHE_KINDS.get(path, ()):
            release(kind, rows)
            release(kind, cols)


def static_path(out_features: int, in_features: int, n: int, device: str, dtype: torch.dtype, training: bool) -> str:
    """The path under ``torch.compile``: the measured choice if there is one, else the flop model's between
    lowrank and gemm. Read-only. At inference a measured gemm gives way to the fastest measured opaque path: its
    cached ``dW`` cannot be consulted in a graph, which would rebuild ``dW`` on every call (all-linear LLaMA
    inference 1.53x the frozen model against 1.39x eager, H200, bench/train_step.py).

    Written to be traced by dynamo with Python ints (constant-folded) or symbolic sizes (``dynamic=True``, shapes
    read off tensors): only comparisons, which dynamo turns into guards, so the choice is a constant of the graph
    either way. (Not ``assume_constant_result``: it rejects symbolic arguments.)"""
    for key, hit in _choices.items():  # a compiled graph serves every row count: the many-rows choice
        if key[0] == device and key[4] == dtype and key[5] == training and not key[6] \
                and key[1] == out_features and key[2] == in_features and key[3] == n:
            if training or hit.path != "gemm":
                return hit.path
            best = _fastest(hit.seconds, _COMPILED_INFERENCE)
            if best:
                return best
    device_type = device.split(":")[0]
    d1, d2 = out_features, in_features
    if training:
        lowrank, gemm = 8.0 * n * (d1 + d2), _GEMM_TRAIN.get(device_type, _GEMM_TRAIN["cuda"]) * d1 * d2
    else:
        lowrank, gemm = 4.0 * n * (d1 + d2), 2.0 * d1 * d2
    return "gemm" if gemm < lowrank else "lowrank"  # ties to lowrank, as in choose_path


def resolve_path(
    x: torch.Tensor,
    spectrum: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out_features: int,
    in_features: int,
    scaling: float,
    training: bool,
) -> str:
    """The path ``auto`` runs for this call (see the module docstring)."""
    if torch.compiler.is_compiling():
        return static_path(out_features, in_features, spectrum.shape[0], str(x.device), x.dtype, training)
    return resolve_choice(x, spectrum, rows, cols, out_features, in_features, scaling, training).path


def resolve_choice(x: torch.Tensor, spectrum: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                   out_features: int, in_features: int, scaling: float, training: bool) -> Choice:
    """The recorded choice for this call's key, made now if there is none (eager calls only): measured on CUDA
    (:func:`tune`), the flop model elsewhere and under CUDA graph capture."""
    n = spectrum.shape[0]
    key = path_key(x, out_features, in_features, n, training)
    hit = _choices.get(key)
    if hit is not None:
        return hit
    if x.device.type == "cuda" and x.numel() > 0 and not torch.cuda.is_current_stream_capturing():
        tune(x, spectrum, rows, cols, out_features, in_features, scaling, training=training)
    else:
        _record(key, Choice(choose_path(out_features, in_features, n, device_type=x.device.type, training=training),
                            "flop model"))
    return _choices[key]
