"""train -> info -> eval -> merge on a tiny BERT and a toy CSV, through the command line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clitools import cli, ok

N_FREQ = 50


@pytest.fixture(scope="module")
def run_dir(tiny_bert: Path, toy_csv: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fft"
    proc = ok(cli("train", "--model", str(tiny_bert), "--data", str(toy_csv), "--epochs", "2", "--batch-size", "16",
                  "--n-frequency", str(N_FREQ), "--target-modules", "query,value", "--out", str(out)))
    assert "accuracy before training" in proc.stdout and "accuracy after training" in proc.stdout
    assert "96 train / 12 validation / 12 test examples (all of it)" in proc.stdout  # honest about the size
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def test_one_readable_line_per_evaluation(run_dir: Path) -> None:
    """Not a terminal: no bar, no raw Trainer dicts, one line per validation pass with the numbers it logged."""
    stdout = (run_dir / "stdout.txt").read_text()
    assert "{'loss'" not in stdout and "'grad_norm'" not in stdout
    lines = [line for line in stdout.splitlines() if line.strip().startswith("step ")]
    evals = [h for h in json.loads((run_dir / "metrics.json").read_text())["history"] if "eval_loss" in h]
    assert len(lines) == len(evals) == 2  # 2 epochs, one validation pass each
    for line, h in zip(lines, evals):
        assert line.strip().startswith(f"step {h['step']}/12, epoch ")
        assert f"validation loss {h['eval_loss']:.4f}" in line and f"accuracy {100 * h['eval_accuracy']:.1f}%" in line
        assert line.endswith("steps/s") and float(line.split(", ")[-1].split()[0]) > 0


def test_train_writes_peft_adapter_metrics_and_plots(run_dir: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "loss.png", "accuracy.png",
                 "fourierft_cli.json", "run_args.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoints").exists()  # checkpoints are for --resume only
    assert not run_dir.with_name(run_dir.name + ".partial").exists()
    config = json.loads((run_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "FOURIERFT" and config["n_frequency"] == N_FREQ
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["params"]["adapter"] == 4 * N_FREQ  # 2 layers x (query, value)
    assert m["params"]["head"] > 0 and m["params"]["total"] > m["params"]["trainable"]
    assert {"val_accuracy", "test_accuracy"} <= set(m["before"]) and {"val_accuracy", "test_accuracy"} <= set(m["after"])
    assert m["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert m["time_total_s"] > 0 and m["classes"] == ["neg", "pos"]


def test_adapter_loads_in_peft(run_dir: Path, tiny_bert: Path) -> None:
    """Same checkpoint format: Hugging Face PEFT reads the adapter the CLI wrote."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = peft.PeftModel.from_pretrained(base, str(run_dir))
    assert model.peft_config["default"].n_frequency == N_FREQ


def test_info_prints_layers_and_plots_spectrum(run_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "spectrum.png"
    proc = ok(cli("info", str(run_dir), "--plot", str(png)))
    assert "n_frequency: 50" in proc.stdout and "task: sequence classification (PEFT task_type SEQ_CLS)" in proc.stdout
    assert "[?]" not in proc.stdout and "task None" not in proc.stdout
    assert "encoder.layer.0.attention.self.query  [32 x 32]" in proc.stdout
    assert f"parameters: {4 * N_FREQ:,} adapter" in proc.stdout
    assert "adapter_model.safetensors" in proc.stdout and "bytes" in proc.stdout
    assert png.stat().st_size > 1000


def _reference_scores(run_dir: Path, tiny_bert: Path, rows: list[dict]) -> tuple[float, float]:
    """Accuracy and mean loss computed here, with PEFT's loader and plain torch: the numbers eval must print."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import fourierft

    fourierft.register()  # PEFT builds fourierft's layers for the FOURIERFT type
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    model = PeftModel.from_pretrained(base, str(run_dir)).eval()
    y = torch.tensor([["neg", "pos"].index(r["label"]) for r in rows])
    with torch.no_grad():
        logits = torch.cat([model(**tok([r["text"] for r in rows[i:i + 16]], return_tensors="pt", padding=True,
                                        truncation=True, max_length=128)).logits for i in range(0, len(rows), 16)])
    return float((logits.argmax(-1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))


def test_eval_prints_the_accuracy_and_loss_of_the_adapter(run_dir: Path, tiny_bert: Path, toy_csv: Path,
                                                          tmp_path: Path) -> None:
    import csv

    rows = list(csv.DictReader(open(toy_csv)))
    acc, loss = _reference_scores(run_dir, tiny_bert, rows)
    out = tmp_path / "eval.json"
    proc = ok(cli("eval", str(run_dir), "--data", str(toy_csv), "--json", str(out)))
    assert f"accuracy {100 * acc:.2f}% on 120 examples" in proc.stdout and f"loss {loss:.4f}" in proc.stdout
    result = json.loads(out.read_text())
    assert result["accuracy"] == pytest.approx(acc) and result["loss"] == pytest.approx(loss, rel=1e-4)
    proc = ok(cli("eval", str(run_dir), "--data", str(toy_csv), "--subsample", "10"))
    assert "on 10 examples" in proc.stdout and "10 drawn" in proc.stdout


def test_run_folder_files_get_the_umask_permissions(run_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter_model.safetensors", "adapter_config.json"):  # PEFT's writes (safetensors' makes 0600)
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~umask, name


def test_merge_gives_the_adapted_logits(run_dir: Path, tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fourierft import PeftModel

    merged_dir = tmp_path / "merged"
    proc = ok(cli("merge", str(run_dir), "--base", str(tiny_bert), "--out", str(merged_dir)))
    assert "max |logits(merged) - logits(adapter)|" in proc.stdout
    assert " into " not in proc.stdout and f"saved as a new model folder {merged_dir}/" in proc.stdout
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok(["the film was good", "a dull boring plot and weak acting"], return_tensors="pt", padding=True)
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    adapted = PeftModel.from_pretrained(base, str(run_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits, atol=1e-4, rtol=1e-4)
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(merged_dir.stat().st_mode) == 0o777 & ~umask  # the umask's, not mkdtemp's 0700
    for path in merged_dir.iterdir():  # and not safetensors' 0600
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path
    (merged_dir / "stale.txt").write_text("from before")
    ok(cli("merge", str(run_dir), "--base", str(tiny_bert), "--out", str(merged_dir), "--overwrite"))
    assert not (merged_dir / "stale.txt").exists() and (merged_dir / "config.json").is_file()  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging folder left
