"""The math, the entries and the kernels import and run without PEFT, transformers or the other optional packages;
the PEFT integration names PEFT when it is missing; importing fourierft changes nothing in PEFT."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_PEFT = """
import sys
for name in ["transformers", "peft", "accelerate", "bitsandbytes", "torchao", "deepspeed", "matplotlib"]:
    sys.modules[name] = None  # any import of these now fails
import torch, fourierft
from fourierft.kernels import spectral_linear
rows, cols = fourierft.spectral_entries(6, 8, 10, 777)
flat = torch.randperm(48, generator=torch.Generator().manual_seed(777))[:10]
assert torch.equal(rows * 8 + cols, flat)
c = torch.randn(10)
dw = fourierft.delta_weight(c, rows, cols, 6, 8, 2.0)
x = torch.randn(3, 8)
torch.testing.assert_close(spectral_linear(x, c, rows, cols, 6, 8, 2.0, path="auto"), x @ dw.T, rtol=1e-5, atol=1e-5)
try:
    fourierft.FourierFTConfig
except ImportError as err:
    assert "peft" in str(err), err
else:
    raise AssertionError("the PEFT integration imported without peft")
print("ok")
"""

NO_SIDE_EFFECTS = """
import peft
from peft import mapping
before = dict(mapping.PEFT_TYPE_TO_CONFIG_MAPPING), dict(mapping.PEFT_TYPE_TO_TUNER_MAPPING)
import fourierft
from fourierft import FourierFTConfig, FourierFTModel, kernels, layer, tuner  # importing the modules registers nothing
assert (dict(mapping.PEFT_TYPE_TO_CONFIG_MAPPING), dict(mapping.PEFT_TYPE_TO_TUNER_MAPPING)) == before
assert not fourierft.is_registered()
print("ok")
"""


def _run(script: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_math_entries_and_kernels_work_without_optional_packages():
    _run(WITHOUT_PEFT)


def test_import_registers_nothing():
    _run(NO_SIDE_EFFECTS)
