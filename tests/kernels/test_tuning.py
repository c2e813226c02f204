"""``auto`` by measurement: a fake timer (injected through ``tune``'s ``timer`` parameter) decides on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch
from kernel_ref import make_entries, reference, rel

import fourierft.kernels as K
from fourierft.kernels import clear_path_choices, path_choices, spectral_linear, tune
from fourierft.kernels import dispatch

D1, D2, N = 24, 20, 30


@pytest.fixture(autouse=True)
def fresh_table():
    clear_path_choices()
    yield
    clear_path_choices()


def inputs(grad=True, tokens=dispatch.FEW_ROWS + 1):  # many rows: every candidate timed, device clock
    rows, cols = make_entries(D1, D2, N)
    return torch.randn(tokens, D2, requires_grad=grad), torch.randn(N, requires_grad=grad), rows, cols


class FakeTimer:
    """Runs the candidate's call (so a broken path would show) and reports the seconds given for it: a number, an
    exception to raise, or a list (one value per round)."""

    def __init__(self, seconds):
        self.seconds, self.ran = seconds, []

    def __call__(self, path, fn):
        fn()
        value = self.seconds[path]
        if isinstance(value, list):
            value = value[self.ran.count(path)]
        self.ran.append(path)
        if isinstance(value, Exception):
            raise value
        return value


def test_measured_choice_is_recorded_logged_and_used(monkeypatch, caplog):
    x, c, rows, cols = inputs()
    timer = FakeTimer({"lowrank": 3e-3, "gemm": 2e-3, "factored": 1e-3})
    with caplog.at_level(logging.INFO, logger="fourierft"):
        assert tune(x, c, rows, cols, D1, D2, 2.0, training=True, timer=timer) == "factored"
    assert timer.ran == ["lowrank", "gemm", "factored"] * 5  # interleaved rounds
    assert x.grad is None and c.grad is None  # the timing calls ran on copies
    key = ("cpu", D1, D2, N, torch.float32, True, False)
    choice = path_choices()[key]
    assert choice.path == "factored" and choice.how == "measured"
    assert choice.seconds == {"lowrank": 3e-3, "gemm": 2e-3, "factored": 1e-3}
    assert any("factored" in r.getMessage() and "measured" in r.getMessage() for r in caplog.records)

    # spectral_linear(auto) now runs the measured path for this key (training), and still computes x @ dW.T
    used = []
    for name, impl in list(K._IMPLS.items()):
        monkeypatch.setitem(K._IMPLS, name, lambda *a, _n=name, _f=impl, **kw: used.append(_n) or _f(*a, **kw))
    y = spectral_linear(x, c, rows, cols, D1, D2, 2.0)
    assert used == ["factored"]
    ry, _, _ = reference(x.detach(), torch.zeros(x.shape[0], D1), c.detach(), rows, cols, D1, D2, 2.0)
    assert rel(y, ry) < 1e-5
    # another key (inference) is not affected: the CPU's flop model decides, recorded as such
    with torch.no_grad():
        spectral_linear(x, c, rows, cols, D1, D2, 2.0)
    infer = path_choices()[("cpu", D1, D2, N, torch.float32, False, False)]
    assert infer.how == "flop model" and infer.path == K.choose_path(D1, D2, N, device_type="cpu", training=False)


def test_best_round_counts():
    """A slow first round (clock ramp, a neighbour's load) does not decide: the best of the rounds does."""
    x, c, rows, cols = inputs()
    timer = FakeTimer({"lowrank": [9e-3, 1e-3, 1e-3], "gemm": [2e-3] * 3, "factored": [3e-3] * 3})
    assert tune(x, c, rows, cols, D1, D2, 2.0, training=True, timer=timer, rounds=3) == "lowrank"
    assert path_choices()[("cpu", D1, D2, N, torch.float32, True, False)].seconds == {
        "lowrank": 1e-3, "gemm": 2e-3, "factored": 3e-3}


def test_inference_tuning_under_inference_mode_times_every_candidate():
    """Under torch.inference_mode too (the gemm path's dW cache cannot validate inference tensors)."""
    x, c, rows, cols = inputs(grad=False)
    timer = FakeTimer({"lowrank": 3e-3, "gemm": 1e-3, "factored": 2e-3})
    with torch.inference_mode():
        assert tune(x, c, rows, cols, D1, D2, 2.0, training=False, timer=timer) == "gemm"
        xi, ci = x.clone(), c.clone()  # inference tensors themselves
        assert tune(xi, ci, rows, cols, D1, D2, 2.0, training=False, timer=timer) == "gemm"
        y = spectral_linear(xi, ci, rows, cols, D1, D2, 2.0)
    ry, _, _ = reference(x, torch.zeros(x.shape[0], D1), c, rows, cols, D1, D2, 2.0)
    assert rel(y, ry) < 1e-5


@pytest.mark.parametrize(("gemm", "want"), [(0.96e-3, "lowrank"), (0.94e-3, "gemm")])
def test_gemm_must_be_clearly_faster(gemm, want):
    """gemm holds a d1 x d2 tensor per layer: within DENSE_MARGIN (5%) of the best other path, that path wins."""
    x, c, rows, cols = inputs()
    timer = FakeTimer({"lowrank": 1e-3, "gemm": gemm, "factored": 2e-3})
    assert dispatch.DENSE_MARGIN == 0.05
    assert tune(x, c, rows, cols, D1, D2, 2.0, training=True, timer=timer) == want


def test_failing_candidate_is_skipped():
    x, c, rows, cols = inputs()
    timer = FakeTimer({"lowrank": 3e-3, "gemm": RuntimeError("CUDA out of memory"), "factored": 5e-3})
    assert tune(x, c, rows, cols, D1, D2, 2.0, training=False, timer=timer) == "lowrank"
    assert set(path_choices()[("cpu", D1, D2, N, torch.float32, False, False)].seconds) == {"lowrank", "factored"}


def test_every_candidate_failing_is_an_error_naming_the_way_out():
    x, c, rows, cols = inputs()
    timer = FakeTimer(dict.fromkeys(dispatch.CANDIDATES, RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="force one with path="):
        tune(x, c, rows, cols, D1, D2, 2.0, training=True, timer=timer)
    assert not path_choices()


def test_flop_model_choice_logged_once(caplog):
    x, c, rows, cols = inputs()
    with caplog.at_level(logging.INFO, logger="fourierft"):
        for _ in range(3):
            spectral_linear(x, c, rows, cols, D1, D2, 2.0)
    lines = [r for r in caplog.records if r.name == "fourierft"]
    assert len(lines) == 1 and "flop model" in lines[0].getMessage()
    assert path_choices()[("cpu", D1, D2, N, torch.float32, True, False)].how == "flop model"


def test_compiled_auto_uses_the_measured_choice():
    """Under torch.compile the table is read (never written): the measured choice, factored included (it runs as an
    opaque custom op there). A graph serves every row count: the many-rows key's choice counts."""
    x, c, rows, cols = inputs()
    tune(x, c, rows, cols, D1, D2, 2.0, training=True,
         timer=FakeTimer({"lowrank": 2e-3, "gemm": 3e-3, "factored": 1e-3}))
    assert dispatch.static_path(D1, D2, N, "cpu", torch.float32, True) == "factored"
    tune(x, c, rows, cols, D1, D2, 2.0, training=True,
         timer=FakeTimer({"lowrank": 2e-3, "gemm": 1e-3, "factored": 3e-3}))
    assert dispatch.static_path(D1, D2, N, "cpu", torch.float32, True) == "gemm"
    # at inference a measured gemm (its dW cache is out of a graph's reach) gives way to the best opaque path
    tune(x, c, rows, cols, D1, D2, 2.0, training=False,
         timer=FakeTimer({"lowrank": 2e-3, "gemm": 1e-3, "factored": 1.5e-3}))
    assert dispatch.static_path(D1, D2, N, "cpu", torch.float32, False) == "factored"
    # nothing measured for this key: the flop model, between lowrank and gemm
    assert dispatch.static_path(4096, 4096, 10000, "cuda:0", torch.bfloat16, True) in ("lowrank", "gemm")
    tune(x[:4], c, rows, cols, D1, D2, 2.0, training=False,  # a few-rows choice is not a graph's
         timer=FakeTimer({"lowrank": 1e-3, "gemm": 3e-3, "factored": 2e-3}))
    assert dispatch.static_path(D1, D2, N, "cpu", torch.float32, False) == "factored"
    x = x[:6].detach().requires_grad_()
    before = path_choices()
    torch._dynamo.reset()
    fn = torch.compile(lambda x, c: spectral_linear(x, c, rows, cols, D1, D2, 2.0), backend="eager", fullgraph=True)
    y = fn(x, c)
    ry, _, _ = reference(x.detach(), torch.zeros(x.shape[0], D1), c.detach(), rows, cols, D1, D2, 2.0)
    assert rel(y, ry) < 1e-5 and path_choices() == before


def test_timing_calls_do_not_trigger_an_enclosing_checkpoint():
    """Tuning inside a non-reentrant activation checkpoint: its hooks must not capture the timing calls."""
    from torch.utils.checkpoint import checkpoint

    x, c, rows, cols = inputs()

    def fn(x):
        tune(x, c, rows, cols, D1, D2, 2.0, training=True,
             timer=FakeTimer({"lowrank": 1e-3, "gemm": 2e-3, "factored": 3e-3}))
        return spectral_linear(x, c, rows, cols, D1, D2, 2.0).tanh()

    checkpoint(fn, x, use_reentrant=False).sum().backward()
    x2, c2 = x.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    spectral_linear(x2, c2, rows, cols, D1, D2, 2.0).tanh().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6) and torch.allclose(c.grad, c2.grad, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("grad", [True, False])
def test_cuda_auto_measures_once(grad):
    x, c, rows, cols = inputs(grad)
    xc, cc = x.detach().cuda().requires_grad_(grad), c.detach().cuda().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = spectral_linear(xc, cc, rows.cuda(), cols.cuda(), D1, D2, 2.0)
        choice = path_choices()[(str(xc.device), D1, D2, N, torch.float32, grad, False)]
        assert choice.how == "measured" and set(choice.seconds) == set(dispatch.CANDIDATES)
        spectral_linear(xc, cc, rows.cuda(), cols.cuda(), D1, D2, 2.0)
    assert path_choices()[(str(xc.device), D1, D2, N, torch.float32, grad, False)] is choice
    ry, _, _ = reference(x.detach(), torch.zeros(x.shape[0], D1), c.detach(), rows, cols, D1, D2, 2.0)
    assert rel(y, ry) < 1e-4


@pytest.mark.parametrize("training", [True, False])
def test_the_losers_caches_are_dropped_and_the_winners_kept(training):
    """Timing a candidate builds its bases, plans or (at inference, on the layer's own spectrum) dense dW; only the
    chosen path's stay on the layer's tensors."""
    from fourierft.kernels import _cache

    _cache.clear_caches()
    x, c, rows, cols = inputs(grad=False)
    timer = FakeTimer({"lowrank": 2e-3, "gemm": 3e-3, "factored": 1e-3})
    assert tune(x, c, rows, cols, D1, D2, 2.0, training=training, timer=timer) == "factored"
    kinds = {key[0] for idx in (rows, cols) for key in _cache._by_index[idx][2]}
    assert kinds == {"plan"}  # lowrank's bases gone, factored's plans kept
    assert _cache.cache_sizes()["dense"] == 0  # gemm's dW on c (inference) gone
    timer = FakeTimer({"lowrank": 1e-3, "gemm": 3e-3, "factored": 2e-3})
    clear_path_choices()
    assert tune(x, c, rows, cols, D1, D2, 2.0, training=training, timer=timer) == "lowrank"
    assert {key[0] for idx in (rows, cols) for key in _cache._by_index[idx][2]} == {"basis"}


@pytest.mark.parametrize("training", [True, False])
def test_few_rows_are_their_own_key_timed_by_the_wall_clock(monkeypatch, training):
    """A decoding step (at most FEW_ROWS rows) is host-bound: it is measured apart from a prefill of the same layer,
    by the host-inclusive clock, and the caches of the path the other key chose stay built."""
    from fourierft.kernels import _cache

    _cache.clear_caches()
    clocks = {"device": FakeTimer({"lowrank": 2e-3, "gemm": 3e-3, "factored": 1e-3}),
              "host": FakeTimer({"lowrank": 1e-4, "gemm": 3e-4, "factored": 2e-4})}
    monkeypatch.setattr(dispatch, "cuda_timer", clocks["device"])
    monkeypatch.setattr(dispatch, "host_timer", clocks["host"])
    x, c, rows, cols = inputs(grad=training, tokens=2 * dispatch.FEW_ROWS)
    with torch.set_grad_enabled(training):
        assert tune(x, c, rows, cols, D1, D2, 2.0, training=training) == "factored"
        assert len(clocks["device"].ran) == 15 and not clocks["host"].ran
        one_step = x[: dispatch.FEW_ROWS].reshape(dispatch.FEW_ROWS // 4, 4, D2)  # (batch, 4 tokens, in)
        assert tune(one_step, c, rows, cols, D1, D2, 2.0, training=training) == "lowrank"
        assert clocks["host"].ran == ["lowrank", "factored"] * 5  # not gemm: its dW is a copy of the weight
        assert len(clocks["device"].ran) == 15
    key = ("cpu", D1, D2, N, torch.float32, training)
    assert path_choices()[(*key, False)].path == "factored" and path_choices()[(*key, True)].path == "lowrank"
    kinds = {k[0] for idx in (rows, cols) for k in _cache._by_index[idx][2]}
    assert kinds == {"plan", "basis"}  # both chosen paths' bases and plans kept, nothing of gemm's
    assert _cache.cache_sizes()["dense"] == 0
