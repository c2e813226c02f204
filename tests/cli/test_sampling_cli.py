"""`fourierft train --entry-sampling frequency_biased`: the band option end to end (train, info --plot, eval, merge)."""

from __future__ import annotations

import json

from clitools import cli, error_lines, ok


def test_frequency_biased_adapter_end_to_end(tiny_bert, toy_csv, tmp_path):
    out = tmp_path / "fb"
    ok(cli("train", "--model", str(tiny_bert), "--data", str(toy_csv), "--n-frequency", "40", "--epochs", "1",
           "--cpu", "--no-plots", "--out", str(out), "--entry-sampling", "frequency_biased",
           "--frequency-center", "4", "--frequency-width", "6"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "FOURIERFT_STORED_ENTRIES"  # PEFT must refuse it rather than misread it
    assert (config["entry_sampling"], config["frequency_center"], config["frequency_width"]) == ("frequency_biased", 4, 6)
    info = ok(cli("info", str(out), "--plot", str(tmp_path / "spec.png")))
    assert "plot:" in info.stdout and (tmp_path / "spec.png").stat().st_size > 0
    ok(cli("eval", str(out), "--data", str(toy_csv)))
    merged = ok(cli("merge", str(out), "--out", str(tmp_path / "merged")))
    assert "max |logits(merged) - logits(adapter)|" in merged.stdout


def test_band_options_without_frequency_biased_sampling_are_refused(tiny_bert, toy_csv, tmp_path):
    proc = cli("train", "--model", str(tiny_bert), "--data", str(toy_csv), "--cpu", "--out", str(tmp_path / "x"),
               "--frequency-center", "3")
    assert proc.returncode == 2 and "frequency_center" in proc.stderr and "Traceback" not in proc.stderr
    assert len(error_lines(proc)) == 1, proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
