"""pytest plugin that runs PEFT's own test files, unchanged, against fourierft.

Loaded with ``-p plugin`` (this folder on ``PYTHONPATH``) from a copy of the peft sdist's ``tests/`` folder (see ``run.py``). It

* calls :func:`fourierft.register`, so every PEFT entry point the tests use (``get_peft_model``,
  ``PeftModel.from_pretrained``, ``inject_adapter_in_model``, ``load_adapter``, ...) builds fourierft's layers;
* supplies what PEFT's own ``tests/conftest.py`` would (the sdist lacks it): the ``--regression`` option;
* fails any test in which a FourierFT layer built by PEFT itself appears, so no test passes on PEFT's layers.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--regression", action="store_true", default=False, help="PEFT's regression tests (skipped)")


def pytest_configure(config):
    config.addinivalue_line("markers", "regression: PEFT's regression tests")
    import fourierft

    fourierft.register()
    _count_peft_built_layers()


_PEFT_BUILT: list[str] = []


def _count_peft_built_layers() -> None:
    """Record every FourierFT layer PEFT's own code constructs (cheaper than scanning the heap after each test)."""
    from peft.tuners.fourierft.layer import FourierFTLayer as PeftLayer

    original = PeftLayer.__init__

    def counting_init(self, *args, **kwargs):
        _PEFT_BUILT.append(type(self).__name__)
        original(self, *args, **kwargs)

    PeftLayer.__init__ = counting_init


@pytest.fixture(autouse=True)
def _only_fourierft_layers():
    _PEFT_BUILT.clear()
    yield
    if _PEFT_BUILT:
        pytest.fail(f"{len(_PEFT_BUILT)} FourierFT layer(s) built by PEFT itself, not by fourierft: {_PEFT_BUILT[:3]}")
