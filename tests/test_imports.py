"""The library needs only torch, safetensors and numpy: transformers, peft and the rest stay optional."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys, tempfile
for name in ["transformers", "peft", "accelerate", "bitsandbytes", "torchao", "deepspeed", "matplotlib"]:
    sys.modules[name] = None  # any import of these now fails
import torch, fourierft
model = fourierft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                 fourierft.FourierFTConfig(n_frequency=10, target_modules=["0"]))
model(torch.randn(2, 8)).sum().backward()
folder = tempfile.mkdtemp()
model.save_pretrained(folder)
fourierft.PeftModel.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 8)), folder)
print("ok")
"""


def test_core_works_without_optional_packages():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
