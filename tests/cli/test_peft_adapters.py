"""Adapters written by Hugging Face PEFT itself (no CLI metadata beside them) work with info, eval and merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from clitools import cli, ok, write_csv


def test_info_eval_merge_on_a_peft_saved_adapter(tiny_bert: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    cfg = peft.FourierFTConfig(n_frequency=40, scaling=150.0, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = peft.get_peft_model(base, cfg)
    model.save_pretrained(tmp_path / "peft-adapter")
    folder = tmp_path / "peft-adapter"
    png = tmp_path / "s.png"
    proc = ok(cli("info", str(folder), "--base", str(tiny_bert), "--plot", str(png)))
    assert "[32 x 32]" in proc.stdout and png.exists()
    data = write_csv(tmp_path / "d.csv", ["text", "label"], [["good film", 1], ["bad film", 0]])
    assert "on 2 examples" in ok(cli("eval", str(folder), "--base", str(tiny_bert), "--data", str(data))).stdout
    ok(cli("merge", str(folder), "--base", str(tiny_bert), "--out", str(tmp_path / "merged")))
    assert (tmp_path / "merged" / "config.json").exists()
