"""`fourierft train` under torchrun (DDP through transformers' Trainer, gloo on the CPU): no code change needed.

The library-level check that data-parallel training equals one process is tests/test_distributed.py; here the CLI
must run on two processes, print and write once (rank 0), save an ordinary adapter that loads anywhere, and close
the process group its Trainer started (only that one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from clitools import REPO, ok

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# What `python -m fourierft` runs (fourierft/__main__.py), then a report of whether a process group is left: one
# left to interpreter shutdown lets gloo's worker threads abort a finished run (pytorch/pytorch#190489).
_MAIN_THEN_REPORT = """
import sys, torch.distributed as dist
from fourierft.cli import main
code = main(sys.argv[1:])
print("exit", code, "group left", dist.is_initialized())
sys.exit(code)
"""


def test_train_under_torchrun_two_processes(tiny_bert, toy_csv, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "fourierft_main.py"
    script.write_text(_MAIN_THEN_REPORT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "train", "--model", str(tiny_bert), "--data", str(toy_csv), "--n-frequency", "64",
         "--epochs", "1", "--batch-size", "8", "--no-plots", "--out", str(out)],
        env=_env(), capture_output=True, text=True,
    )
    ok(proc)
    assert proc.stdout.count("exit 0 group left False") == 2  # each process closed the group its Trainer started
    assert "x 2 devices" in proc.stdout  # the run reports what it ran: 2 data-parallel processes
    assert proc.stdout.count("accuracy after training") == 1  # rank 0 alone reports
    adapters = [p for p in out.rglob("adapter_model.safetensors")]
    assert adapters, f"no adapter saved under {out}"
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    # the Trainer itself ran data-parallel (without a GPU, transformers needs use_cpu for that; the CLI sets it):
    # 2 processes, each step one batch of 8 per process
    assert metrics["world_size"] == 2
    n_train = metrics["sizes"]["train"]
    assert metrics["global_step"] == -(-n_train // 16)

    from transformers import AutoModelForSequenceClassification

    import fourierft

    folder = adapters[0].parent
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "FOURIERFT"
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = fourierft.PeftModel.from_pretrained(base, folder)
    spectra = [p for n, p in model.named_parameters() if ".fourierft_spectrum." in n]
    assert len(spectra) == 4 and all(s.numel() == 64 for s in spectra)


def test_train_leaves_a_process_group_its_caller_started(tiny_bert, toy_csv, tmp_path, monkeypatch):
    """A script that set up torch.distributed itself and calls the CLI's ``main`` keeps its group."""
    import torch.distributed as dist

    from fourierft.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        code = main(["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--n-frequency", "16",
                     "--epochs", "1", "--batch-size", "16", "--no-plots", "--out", str(tmp_path / "run")])
        assert code == 0 and dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
