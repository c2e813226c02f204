"""``fourierft.io.atomic_write``: the file it puts in place has the permissions the umask gives (as ``open`` gives
them), also where the writer is safetensors' (which makes 0600 files); a failed write leaves no file behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

import fourierft
from fourierft.io import atomic_write, atomic_write_bytes
from helpers import build


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_umask_permissions(umask, tmp_path):
    old = os.umask(umask)
    try:
        with open(tmp_path / "by_open", "w"):
            pass  # the reference: what plain open gives under this umask
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        atomic_write(tmp_path / "b.safetensors", lambda tmp: save_file({"x": torch.ones(2)}, tmp))
        model = fourierft.get_peft_model(build("mlp"), fourierft.FourierFTConfig(n_frequency=4,
                                                                                 target_modules=["lin0"]))
        fourierft.export_lora(model, tmp_path / "lora")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "by_open").st_mode)
    assert want == 0o666 & ~umask
    written = [tmp_path / "a.json", tmp_path / "b.safetensors", tmp_path / "lora" / "adapter_config.json",
               tmp_path / "lora" / "adapter_model.safetensors"]
    assert {p: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p: oct(want) for p in written}
    assert torch.equal(load_file(tmp_path / "b.safetensors")["x"], torch.ones(2))
    assert (tmp_path / "a.json").read_bytes() == b"{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "f").write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "f", failing)
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_bytes() == b"old"
