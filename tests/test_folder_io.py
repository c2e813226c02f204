"""``fourierft.save_pretrained`` replaces a checkpoint folder as a whole.

The main test kills a saving process with SIGKILL before and after each of its file-system calls in turn (k = 0, 1,
2, ... until a save completes; the faults are injected in the child script below, not in shipped code) while it saves
adapter B over a folder holding adapter A (other coefficients, other ``scaling``, one adapter fewer). After every kill
the folder must load, with fourierft and with PEFT's own layers, as exactly A or exactly B; files the save does not
write must survive; the next save must leave no staging folder behind.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import peft
import pytest
import torch

import fourierft
from fourierft import folder_io
from helpers import build

TESTS = os.path.dirname(os.path.abspath(__file__))
EXTRAS = {"tokenizer.json": b'{"vocab": "kept"}', os.path.join("extra", "notes.txt"): b"notes",
          os.path.join("extra", "deep", "blob.bin"): bytes(range(256))}


def make_adapter(which: str):
    """Adapter A (one adapter, scaling 100) or B (scaling 250, other coefficients, and a second adapter "other",
    which PEFT saves into a subfolder). Deterministic: the child and the test build the same ones."""
    torch.manual_seed({"A": 1, "B": 2}[which])
    scaling = {"A": 100.0, "B": 250.0}[which]
    cfg = fourierft.FourierFTConfig(n_frequency=8, scaling=scaling, target_modules=["lin0", "lin1"], init_weights=False)
    model = fourierft.get_peft_model(build("mlp"), cfg)
    if which == "B":
        model.add_adapter("other", fourierft.FourierFTConfig(n_frequency=5, scaling=7.0, random_loc_seed=3,
                                                             target_modules=["lin0"], init_weights=False))
    return model


def write_extras(folder: str) -> None:
    for rel, data in EXTRAS.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        with open(os.path.join(folder, rel), "wb") as fh:
            fh.write(data)


CHILD = r"""
import builtins, json, os, shutil, signal, sys, traceback
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
import peft.peft_model
import fourierft
from fourierft import folder_io
from test_folder_io import make_adapter, write_extras

work, mode = sys.argv[1], sys.argv[2]
b = make_adapter("B")
template = os.path.join(work, "template")
make_adapter("A").save_pretrained(template)  # PEFT's own save, as a user's folder would be
write_extras(template)
real_open, calls = builtins.open, [0]


def install(k):
    # every call that changes the file system (or flushes it) is two kill points: just before it, just after it
    def tick():
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1

    def wrap(fn, writes_only=False):
        def wrapped(*args, **kwargs):
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if writes_only and not any(c in str(mode) for c in "wax+"):
                return fn(*args, **kwargs)
            tick()
            out = fn(*args, **kwargs)
            tick()
            return out
        return wrapped

    for name in ("rename", "replace", "link", "symlink", "fsync", "unlink", "remove", "rmdir", "mkdir", "makedirs"):
        setattr(os, name, wrap(getattr(os, name)))
    for name in ("rmtree", "copy2", "copyfile", "copymode"):
        setattr(shutil, name, wrap(getattr(shutil, name)))
    builtins.open = wrap(real_open, writes_only=True)
    peft.peft_model.safe_save_file = wrap(peft.peft_model.safe_save_file)
    exchange = (lambda a, b: False) if mode == "fallback" else folder_io._exchange
    folder_io._exchange = wrap(exchange)


results = []
for k in range(100000):
    target = os.path.join(work, f"k{k}", "ckpt")
    os.makedirs(os.path.dirname(target))
    if mode != "new":
        shutil.copytree(template, target)
    pid = os.fork()
    if pid == 0:
        try:
            install(k)
            fourierft.save_pretrained(b, target)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, f"the save failed at k={k} instead of being killed"
    results.append(killed)
    if not killed:
        break
with real_open(os.path.join(work, "results.json"), "w") as fh:
    json.dump(results, fh)
"""


def run_child(tmp_path, mode: str) -> list[bool]:
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), mode, TESTS], check=True, cwd=TESTS, timeout=600)
    return json.loads((tmp_path / "results.json").read_text())


def spectra(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
            if n.endswith(f"fourierft_spectrum.{adapter}")}


def adapter_state(folder: str, adapter: str = "default") -> dict:
    """What a reader gets from the folder: coefficients and scaling, loaded by fourierft and by PEFT's own layers
    (which must agree)."""
    ours = fourierft.PeftModel.from_pretrained(build("mlp"), folder, adapter_name=adapter)
    with fourierft.unregistered():
        theirs = peft.PeftModel.from_pretrained(build("mlp"), folder, adapter_name=adapter)
    state = {"scaling": ours.peft_config[adapter].scaling, "spectra": spectra(ours, adapter)}
    assert theirs.peft_config[adapter].scaling == state["scaling"]
    assert spectra(theirs, adapter).keys() == state["spectra"].keys()
    for key, value in spectra(theirs, adapter).items():
        assert torch.equal(value, state["spectra"][key]), key
    return state


def same(state: dict, model, adapter: str = "default") -> bool:
    ref = spectra(model, adapter)
    return (state["scaling"] == model.peft_config[adapter].scaling and state["spectra"].keys() == ref.keys()
            and all(torch.equal(state["spectra"][k], v) for k, v in ref.items()))


def which(folder: str, a, b) -> str:
    """``"A"`` or ``"B"``, asserting the folder is exactly one of them (B's subfolder adapter included)."""
    state = adapter_state(folder)
    if same(state, a):
        assert not os.path.exists(os.path.join(folder, "other")), "A's weights with B's subfolder"
        return "A"
    assert same(state, b), "neither adapter A nor adapter B"
    assert same(adapter_state(os.path.join(folder, "other"), "other"), b, "other"), "B without its subfolder adapter"
    return "B"


def extras_intact(folder: str) -> bool:
    return all(open(os.path.join(folder, rel), "rb").read() == data for rel, data in EXTRAS.items())


def staging_left(parent: str) -> list[str]:
    return [n for n in os.listdir(parent) if n.startswith(".ckpt.saving-")]


@pytest.fixture(scope="module")
def adapters():
    return make_adapter("A"), make_adapter("B")


@pytest.mark.parametrize("mode", ["exchange", "fallback", "new"])
def test_a_save_killed_anywhere_leaves_the_old_checkpoint_or_the_new_one(mode, adapters, tmp_path):
    a, b = adapters
    killed = run_child(tmp_path, mode)
    seen = []
    for k in range(len(killed)):
        target = str(tmp_path / f"k{k}" / "ckpt")
        if not os.path.exists(target):
            # "new": not written yet. "fallback": the documented window between its two renames, where the new
            # checkpoint is complete at its staging path and the old one beside it
            assert mode != "exchange", f"k={k}: no folder at the target"
            if mode == "fallback":
                old = [n for n in staging_left(os.path.dirname(target)) if n.endswith(".old")]
                assert len(old) == 1, f"k={k}: no folder at the target outside the window"
                assert which(os.path.join(os.path.dirname(target), old[0]), a, b) == "A"
                assert which(os.path.join(os.path.dirname(target), old[0].removesuffix(".old")), a, b) == "B"
            seen.append("-")
        else:
            seen.append(which(target, a, b))
            if mode != "new":
                assert extras_intact(target), f"k={k}: files the save does not write were lost"
        fourierft.save_pretrained(b, target)  # the next save cleans up after the killed one
        assert staging_left(os.path.dirname(target)) == [], f"k={k}"
        assert which(target, a, b) == "B"
        if mode != "new" and seen[-1] != "-":
            assert extras_intact(target)
    assert killed[-1] is False and len(killed) > 30, f"{len(killed)} kill points"  # every point reached, then done
    first = "-" if mode == "new" else "A"
    assert seen[0] == first and seen[-1] == "B" and set(seen) <= {first, "B", "-"}
    assert seen == sorted(seen, key=[first, "-", "B"].index), seen  # once B is seen, it stays
    if mode == "fallback":
        assert "-" in seen  # the window exists, and the test reached it


def test_the_exchange_is_used_where_the_filesystem_has_it(tmp_path):
    """Linux tmpfs and ext4 have RENAME_EXCHANGE: two folders swap contents in one call."""
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    (tmp_path / "y").mkdir()
    assert folder_io._exchange(str(tmp_path / "x"), str(tmp_path / "y"))
    assert os.listdir(tmp_path / "x") == [] and (tmp_path / "y" / "f").read_text() == "x"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_folders_and_files_get_the_umask_permissions(umask, adapters, tmp_path):
    _, b = adapters
    old = os.umask(umask)
    try:
        for target in (tmp_path / "new", tmp_path / "existing"):
            if target.name == "existing":
                target.mkdir()
                (target / "adapter_config.json").write_text("{}")
            fourierft.save_pretrained(b, target)
            paths = [target, *target.rglob("*")]
            assert {p.name for p in paths} >= {"adapter_config.json", "adapter_model.safetensors", "other"}
            for p in paths:
                want = (0o777 if p.is_dir() else 0o666) & ~umask
                assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    finally:
        os.umask(old)


def test_files_are_copied_where_hard_links_fail(adapters, tmp_path, monkeypatch):
    a, b = adapters
    target = str(tmp_path / "ckpt")
    a.save_pretrained(target)
    write_extras(target)

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    fourierft.save_pretrained(b, target)
    assert which(target, a, b) == "B" and extras_intact(target) and staging_left(str(tmp_path)) == []


def test_a_staging_folder_is_removed_only_when_its_process_is_gone(adapters, tmp_path):
    _, b = adapters
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".ckpt.saving-{gone.pid}-0a1b2c3d"
    alive = tmp_path / f".ckpt.saving-{os.getppid()}-0a1b2c3d"  # a process that is running
    other = tmp_path / f".other.saving-{gone.pid}-0a1b2c3d"  # another target's
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
    fourierft.save_pretrained(b, tmp_path / "ckpt")
    assert not dead.exists() and alive.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other.name, "ckpt"])


def listing(root) -> set[tuple[str, bytes | None]]:
    out = set()
    for folder, dirs, files in os.walk(root):
        out |= {(os.path.relpath(os.path.join(folder, d), root), None) for d in dirs}
        out |= {(os.path.relpath(os.path.join(folder, f), root), open(os.path.join(folder, f), "rb").read())
                for f in files}
    return out


@pytest.mark.parametrize("case", ["file", "not a PeftModel", "empty path", "unknown adapter", "nested new path"])
def test_bad_input_is_a_clear_error_and_leaves_nothing_behind(case, adapters, tmp_path):
    a, b = adapters
    a.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "file.bin").write_bytes(b"data")
    before = listing(tmp_path)
    model, where = b, tmp_path / "ckpt"
    expected = {"file": (NotADirectoryError, r"file\.bin is a file.*folder path"),
                "not a PeftModel": (TypeError, r"peft\.PeftModel.*got MLP"),
                "empty path": (ValueError, r"folder path"),
                "unknown adapter": (ValueError, r"nope"),
                "nested new path": (ValueError, r"nope")}[case]
    kwargs = {"selected_adapters": ["nope"]} if case in ("unknown adapter", "nested new path") else {}
    if case == "file":
        where = tmp_path / "file.bin"
    elif case == "not a PeftModel":
        model = build("mlp")
    elif case == "empty path":
        where = ""
    elif case == "nested new path":
        where = tmp_path / "new" / "deeper" / "ckpt"
    with pytest.raises(expected[0], match=expected[1]):
        fourierft.save_pretrained(model, where, **kwargs)
    assert listing(tmp_path) == before
    assert which(str(tmp_path / "ckpt"), a, b) == "A"


def test_the_model_card_is_updated_as_peft_updates_it(adapters, tmp_path):
    """PEFT updates an existing README.md (keeps the user's text): the new folder starts from a copy of it, and the
    old folder's file is never written through a shared link."""
    a, b = adapters
    reference = tmp_path / "peft"
    for folder in (tmp_path / "ckpt", reference):
        a.save_pretrained(folder)
        with open(folder / "README.md", "a") as fh:
            fh.write("\nMy own notes about this adapter.\n")
    old_card = tmp_path / "old_card"
    os.link(tmp_path / "ckpt" / "README.md", old_card)  # sees any write into the old folder's file
    before = old_card.read_bytes()
    b.save_pretrained(reference)  # PEFT's own update, in place
    fourierft.save_pretrained(b, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "README.md").read_text() == (reference / "README.md").read_text()
    assert "My own notes about this adapter." in (reference / "README.md").read_text()
    assert old_card.read_bytes() == before


def test_without_the_exchange_a_failed_rename_puts_the_old_folder_back(adapters, tmp_path, monkeypatch):
    a, b = adapters
    target = str(tmp_path / "ckpt")
    a.save_pretrained(target)
    write_extras(target)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new folder in
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(folder_io, "_exchange", lambda x, y: False)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        fourierft.save_pretrained(b, target)
    monkeypatch.undo()
    assert which(target, a, b) == "A" and extras_intact(target) and sorted(os.listdir(tmp_path)) == ["ckpt"]
