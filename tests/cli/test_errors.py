"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from clitools import cli, ok, write_csv


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
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return Done(rc, out, err)

    yield run
    logging.getLogger().setLevel(level)


def fails(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("fourierft ") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def train(model: Path, data: Path | str, out: Path, *extra: str):
    return cli("train", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "1", *extra)


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


def test_unknown_model(toy_csv: Path, tmp_path: Path) -> None:
    fails(train("no-such-user/no-such-model-xyz", toy_csv, tmp_path / "out"), "cannot load model")
    fails(train(tmp_path / "missing-folder", toy_csv, tmp_path / "out"), "no such folder")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_existing_out_is_not_overwritten(tiny_bert: Path, toy_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails(train(tiny_bert, toy_csv, out), "already exists", "--overwrite")
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


def test_adapter_does_not_fit_base(small_adapter: Path, other_bert: Path, toy_csv: Path, tmp_path: Path) -> None:
    fails(cli("eval", str(small_adapter), "--base", str(other_bert), "--data", str(toy_csv)), "does not fit")
    fails(cli("merge", str(small_adapter), "--base", str(other_bert), "--out", str(tmp_path / "m")), "does not fit")
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
