"""Publishing a finished run (``fourierft.cli.runs.publish``): the old run is replaced as a whole, a kill at any
point leaves the old run or the new one at ``--out`` and never a finished run where ``--resume`` looks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fourierft import folder_io
from fourierft.cli.runs import publish


def make_run(folder: Path, tag: str) -> None:
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "adapter_config.json").write_text(tag)
    (folder / "metrics.json").write_text(tag)
    (folder / "before.json").write_text("{}")


def test_publish_replaces_the_old_run_and_drops_the_scratch_files(tmp_path):
    final, partial = tmp_path / "run", tmp_path / "run.partial"
    make_run(final, "old")
    (final / "only-old.txt").write_text("x")
    make_run(partial, "new")
    publish(partial, final)
    assert (final / "metrics.json").read_text() == "new"
    assert not (final / "only-old.txt").exists()  # a run is replaced, not merged with the old one
    assert not (final / "checkpoints").exists() and not (final / "before.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("fail_at", ["rename", "exchange"])
def test_a_publish_killed_midway_leaves_the_old_run(tmp_path, monkeypatch, fail_at):
    """The kill is simulated by an exception at the step named (nothing after it runs); the next publish cleans up."""
    final, partial = tmp_path / "run", tmp_path / "run.partial"
    make_run(final, "old")
    make_run(partial, "new")

    class Killed(BaseException):
        pass

    def die(*_a, **_k):
        raise Killed

    if fail_at == "rename":
        monkeypatch.setattr(os, "replace", die)  # the move of .partial to its staging name
    else:
        monkeypatch.setattr(folder_io, "_exchange", die)
        monkeypatch.setattr(os, "getpid", lambda: 2**22 + 12345)  # the staging name of a process that is gone
    with pytest.raises(Killed):
        publish(partial, final)
    monkeypatch.undo()
    assert (final / "metrics.json").read_text() == "old"
    assert partial.exists() == (fail_at == "rename")  # after the first rename the finished run is not resumable
    make_run(tmp_path / "again.partial", "newer")
    publish(tmp_path / "again.partial", final)
    assert (final / "metrics.json").read_text() == "newer"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == (["run", "run.partial"] if fail_at == "rename" else ["run"])
