"""pytest plugin that runs PEFT's own test files, unchanged, against fourierft.

Loaded with ``-p fourierft_peft_plugin`` from a copy of the peft sdist's ``tests/`` folder (see ``run.py``). It

* calls :func:`fourierft.register`, so every PEFT entry point the tests use (``get_peft_model``,
  ``PeftModel.from_pretrained``, ``inject_adapter_in_model``, ``load_adapter``, ...) builds fourierft's layers;
* supplies what PEFT's own ``tests/conftest.py`` would (the sdist lacks it): the ``--regression`` option;
* fails any test in which a FourierFT layer built by PEFT itself appears, so no test passes on PEFT's layers.
"""

from __future__ import annotations

import gc

import pytest


def pytest_addoption(parser):
    parser.addoption("--regression", action="store_true", default=False, help="PEFT's regression tests (skipped)")


def pytest_configure(config):
    config.addinivalue_line("markers", "regression: PEFT's regression tests")
    import fourierft

    fourierft.register()


def _peft_built_fourierft_layers() -> int:
    from peft.tuners.fourierft.layer import FourierFTLayer as PeftLayer

    return sum(1 for obj in gc.get_objects() if isinstance(obj, PeftLayer))


@pytest.fixture(autouse=True)
def _only_fourierft_layers():
    yield
    count = _peft_built_fourierft_layers()
    if count:
        pytest.fail(f"{count} FourierFT layer(s) built by PEFT itself, not by fourierft")
