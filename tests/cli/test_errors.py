"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clitools import cli, error_lines, ok, write_csv


class Done:
    """The parts of a finished run the checks read (subprocess or in-process)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def inproc(capsys):
    """``main(argv)`` in this process: the many data checks need no fresh interpreter (same code path, faster)."""
    import logging

    from fourierft.cli import main

    level = logging.getLogger().level

    def run(*argv: str) -> Done:
        try:
            rc = main(list(argv))
        except SystemExit as exc:  # argparse's exit for a bad flag value
            rc = exc.code
        out, err = capsys.readouterr()
        return Done(rc, out, err)

    yield run
    logging.getLogger().setLevel(level)


def fails(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = error_lines(proc) if isinstance(proc, subprocess.CompletedProcess) else proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("fourierft ") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train_argv(model: Path | str, data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "1", *extra]


def train(model: Path | str, data: Path | str, out: Path, *extra: str):
    return cli(*train_argv(model, data, out, *extra))


@pytest.mark.parametrize(
    "header,rows,needles",
    [
        (["review", "label"], [["good film", "pos"]] * 20, ["no column 'text'", "--text-column"]),
        (["text", "label"], [], ["no data rows"]),
        (["text", "label"], [[f"film {i}", i / 10 + 0.05] for i in range(20)], ["is not a class"]),
        (["text", "label"], [[f"film {i}", "pos"] for i in range(20)], ["only one class"]),
        (["text", "label"], [[f"film {i}", f"id{i}"] for i in range(20)], ["not classes"]),
        (["text", "label"], [[f"film {i}", "pos" if i % 2 else ""] for i in range(20)], ["is not a class"]),
    ],
    ids=["wrong-columns", "empty", "fractional-labels", "one-class", "ids-not-classes", "blank-label"],
)
def test_bad_training_data(tiny_bert: Path, tmp_path: Path, header, rows, needles, inproc) -> None:
    data = write_csv(tmp_path / "d.csv", header, rows)
    fails(inproc("train", "--model", str(tiny_bert), "--data", str(data), "--out", str(tmp_path / "out")), *needles)
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_missing_data_file(tiny_bert: Path, tmp_path: Path) -> None:
    fails(train(tiny_bert, tmp_path / "nope.csv", tmp_path / "out"), "nope.csv: no such file")
    assert not (tmp_path / "out").exists()


def test_unknown_model(toy_csv: Path, tmp_path: Path, inproc) -> None:
    fails(inproc(*train_argv("no-such-user/no-such-model-xyz", toy_csv, tmp_path / "out")), "cannot load model")
    fails(inproc(*train_argv(tmp_path / "missing-folder", toy_csv, tmp_path / "out")), "no such folder")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_existing_out_is_not_overwritten(tiny_bert: Path, toy_csv: Path, tmp_path: Path, inproc) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails(inproc(*train_argv(tiny_bert, toy_csv, out)), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_not_an_adapter(tmp_path: Path, inproc) -> None:
    (tmp_path / "empty").mkdir()
    fails(cli("info", str(tmp_path / "empty")), "not an adapter folder")  # one real process, the rest in-process
    fails(inproc("info", str(tmp_path / "nowhere")), "no such adapter folder")
    fails(inproc("eval", str(tmp_path / "empty"), "--data", "x.csv"), "not an adapter folder")
    fails(inproc("merge", str(tmp_path / "empty"), "--out", str(tmp_path / "m")), "not an adapter folder")
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def small_adapter(tiny_bert: Path, toy_csv: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errs") / "adapter"
    proc = ok(cli("train", "--model", str(tiny_bert), "--data", str(toy_csv), "--out", str(out), "--max-steps", "1",
                  "--n-frequency", "16", "--no-plots", "--lr", "1e-4"))
    assert "warning: --lr 0.0001 is far too small for FourierFT" in proc.stderr  # the PEFT-benchmark trap
    return out


def test_coefficient_lr_far_too_small_warns(small_adapter: Path) -> None:
    assert (small_adapter / "adapter_model.safetensors").exists()  # the warning is checked where it is trained


def test_adapter_does_not_fit_base(small_adapter: Path, other_bert: Path, toy_csv: Path, tmp_path: Path,
                                   inproc) -> None:
    fails(inproc("eval", str(small_adapter), "--base", str(other_bert), "--data", str(toy_csv)), "does not fit")
    fails(inproc("merge", str(small_adapter), "--base", str(other_bert), "--out", str(tmp_path / "m")),
          "does not fit")
    assert not (tmp_path / "m").exists()


def test_eval_labels_outside_the_adapters_classes(small_adapter: Path, tmp_path: Path, inproc) -> None:
    data = write_csv(tmp_path / "e.csv", ["text", "label"], [["good film", "pos"], ["bad film", "meh"]])
    fails(inproc("eval", str(small_adapter), "--data", str(data)), "'meh' is not one of the classes")


def test_dataset_name_without_datasets_package(tiny_bert: Path, tmp_path: Path, inproc, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    fails(inproc("train", "--model", str(tiny_bert), "--data", "some/hub-dataset", "--out", str(tmp_path / "o")),
          "'datasets' package is not installed")


def test_datasets_name_uses_its_splits_and_skips_unlabelled_test(tiny_bert: Path, tmp_path: Path, inproc,
                                                                 monkeypatch) -> None:
    """A `datasets` name (faked here: the package is optional) trains from its own train/validation splits."""
    import importlib.machinery
    import json
    import sys
    import types

    rows = [{"sentence": f"the film was {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(40)]
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    fake.Dataset = fake.IterableDataset = type("Dataset", (), {})  # transformers' isinstance checks look these up
    fake.load_dataset = lambda name, config=None: {
        "train": rows, "validation": rows[:8], "test": [{"sentence": "x", "label": -1}] * 5}
    monkeypatch.setitem(sys.modules, "datasets", fake)
    out = tmp_path / "run"
    done = inproc("train", "--model", str(tiny_bert), "--data", "glue", "--data-config", "sst2", "--text-column",
                  "sentence", "--max-steps", "1", "--no-plots", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "datasets:glue (sst2)" in done.stdout and "'test' split has no labels" in done.stdout
    assert json.loads((out / "metrics.json").read_text())["sizes"] == {"train": 36, "validation": 8, "test": 4}


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--epochs", "0"], ["--epochs", "must be >= 1"]),
        (["--epochs", "-1"], ["--epochs", "must be >= 1"]),
        (["--epochs", "nan"], ["--epochs", "finite"]),
        (["--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["--max-length", "0"], ["--max-length", "at least 1"]),
        (["--max-length", "-5"], ["--max-length", "at least 1"]),
        (["--lr", "0"], ["--lr", "must be > 0"]),
        (["--lr=-1e-3"], ["--lr", "must be > 0"]),
        (["--head-lr", "inf"], ["--head-lr", "finite"]),
        (["--n-frequency", "0"], ["--n-frequency", "at least 1"]),
        (["--scaling", "0"], ["--scaling", "must not be 0"]),
        (["--subsample", "1"], ["--subsample", "at least 2"]),
        (["--max-steps", "0"], ["--max-steps", "positive step count"]),
        (["--grad-accum", "0"], ["--grad-accum", "at least 1"]),
        (["--eval-batch-size", "0"], ["--eval-batch-size", "at least 1"]),
        (["--warmup", "-0.1"], ["--warmup", ">= 0"]),
        (["--warmup", "2.5"], ["--warmup 2.5", "whole number"]),
        (["--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
        (["--lora-r", "0"], ["--lora-r", "at least 1"]),
        (["--lora-dropout", "1"], ["--lora-dropout", "in [0, 1)"]),
        (["--seed", "-1"], ["--seed", "in [0, 4294967295]"]),
        (["--random-loc-seed", str(2**70)], ["--random-loc-seed", "in [0, "]),
        (["--evals-per-epoch", "0"], ["--evals-per-epoch", "at least 1"]),
        (["--num-workers", "-1"], ["--num-workers", "at least 0"]),
        (["--n-frequency-pattern", "query=0"], ["--n-frequency-pattern", "integers >= 1"]),
        (["--target-modules", "q(uery"], ["--target-modules 'q(uery'", "not a valid regular expression"]),
        (["--exclude-modules", "[a-"], ["--exclude-modules", "not a valid regular expression"]),
        (["--modules-to-save", "classifier("], ["--modules-to-save", "not a valid regular expression"]),
        (["--n-frequency-pattern", "que(ry=5"], ["--n-frequency-pattern", "not a valid regular expression"]),
        (["--scheduler", "bogus"], ["--scheduler 'bogus'", "cosine"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None,
)
def test_bad_flag_values_exit_2_with_one_line(tiny_bert: Path, toy_csv: Path, tmp_path: Path, inproc, argv,
                                              needles) -> None:
    done = inproc("train", "--model", str(tiny_bert), "--data", str(toy_csv), "--out", str(tmp_path / "out"), *argv)
    assert done.returncode == 2
    fails(done, *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv,needles", [(["--batch-size", "0"], ["--batch-size"]),
                                          (["--subsample", "0"], ["--subsample"]),
                                          (["--max-length", "-1"], ["--max-length"])])
def test_bad_eval_flags(small_adapter: Path, inproc, argv, needles) -> None:
    done = inproc("eval", str(small_adapter), *argv)
    assert done.returncode == 2
    fails(done, "fourierft eval: error", *needles)


def test_model_folder_without_tokenizer_files(tiny_bert: Path, toy_csv: Path, tmp_path: Path, inproc) -> None:
    """Weights and config but no vocabulary: an error, not a run on all-[UNK] inputs."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_bert.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, bare / f.name)
    fails(inproc("train", "--model", str(bare), "--data", str(toy_csv), "--out", str(tmp_path / "out")),
          "no tokenizer files", "save_pretrained")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_eval_whose_recorded_base_is_missing_points_to_base(small_adapter: Path, tmp_path: Path, inproc) -> None:
    import json
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(small_adapter, moved)
    for name, key in (("fourierft_cli.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        data = json.loads((moved / name).read_text())
        data[key] = str(tmp_path / "gone" / "model")  # trained on another machine
        (moved / name).write_text(json.dumps(data))
    line = fails(inproc("eval", str(moved)), "was trained on", "not available here", "pass --base")
    assert str(tmp_path / "gone" / "model") in line


def test_an_unexpected_failure_is_one_line_and_verbose_shows_the_traceback(monkeypatch, capsys):
    import argparse

    from fourierft import cli
    from fourierft.cli import commands

    def boom(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(commands, "merge", boom)
    assert cli._dispatch(argparse.Namespace(command="merge", verbose=False)) == 1
    err = capsys.readouterr().err
    assert err.strip() == "fourierft merge: error: RuntimeError: disk on fire (--verbose shows the traceback)"
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli._dispatch(argparse.Namespace(command="merge", verbose=True))
