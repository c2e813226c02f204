"""Replace a checkpoint folder as a whole: a reader sees the old folder or the new one, never a mix.

PEFT's ``PeftModel.save_pretrained`` writes ``adapter_model.safetensors``, then ``adapter_config.json`` (and
``README.md``) one by one into the folder, so a process killed in between leaves new weights beside the old config,
which loads without error as neither adapter. :func:`save_pretrained` lets PEFT write the whole checkpoint into a
fresh staging folder beside the target (``.<name>.saving-<pid>-<random>``), flushes every file and folder to disk,
carries over by hard links (copies where linking fails) what the old folder holds and the new save does not write
(tokenizer files, other subfolders), and then swaps the two folders in one step: ``os.rename`` where the target does
not exist, Linux ``renameat2(RENAME_EXCHANGE)`` where it does. The old version, left at the staging path, is removed.

Where the exchange is unavailable (not Linux, or a filesystem answering ``EINVAL``/``ENOSYS``), the old folder is
renamed aside, the new one renamed in, the old one removed: a process killed between those two renames leaves no
folder at the target (the new checkpoint is complete at its staging path and the old one at ``...saving-...old``).
Staging folders of earlier saves that were killed (this target's prefix, a process id no longer alive) are removed
by the next save. New folders and files get the permissions the umask gives.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def make_fresh_dir(prefix: str) -> str:
    """Create a new folder ``<prefix><random>`` with the umask's permissions (``mkdtemp`` makes 0700)."""
    while True:
        path = prefix + secrets.token_hex(4)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _exchange(a: str, b: str) -> bool:
    """Swap the folders ``a`` and ``b`` atomically; ``False`` where the system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc before 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) failed: {os.strerror(err)}", a, None, b)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)  # a file or a folder
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file and folder under ``root`` (and ``root`` itself) to disk, deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for path in [os.path.join(folder, name) for name in files if not os.path.islink(os.path.join(folder, name))]:
            _fsync(path)
        _fsync(folder)


def apply_umask(root: str) -> None:
    """Give what a save wrote under ``root`` the umask's permissions (``root`` has them: ``os.mkdir(0o777)`` made
    it); safetensors' writer makes its files 0600 whatever the umask."""
    umask = ~os.stat(root).st_mode & 0o777
    for folder, dirs, files in os.walk(root):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), mode & ~umask)


def _carry_over(old: str, new: str) -> None:
    """Put into ``new`` every entry of ``old`` that ``new`` lacks: hard links (copies where linking fails), folders
    recreated and filled the same way; an entry both hold is ``new``'s."""
    for entry in os.scandir(old):
        src, dst = entry.path, os.path.join(new, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not os.path.lexists(dst):
                os.mkdir(dst)
                shutil.copymode(src, dst)
            if os.path.isdir(dst) and not os.path.islink(dst):
                _carry_over(src, dst)
        elif os.path.lexists(dst):
            continue
        elif entry.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            try:
                os.link(src, dst)
            except OSError:  # another filesystem, no hard links (FAT, some network shares), a link limit
                shutil.copy2(src, dst)


def remove_stale(parent: str, prefix: str) -> None:
    """Remove staging folders ``<prefix><pid>-...`` of saves whose process is gone (killed mid-save)."""
    for entry in os.scandir(parent):
        pid = entry.name[len(prefix):].split("-", 1)[0] if entry.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)  # no error, or PermissionError (another user's): alive, a save running now
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except PermissionError:
                pass


def replace_folder(staging: str, target: str) -> None:
    """Put the complete folder ``staging`` at ``target`` in one step (see the module docstring); afterwards
    ``staging`` no longer exists. Both must be on the same filesystem (``staging`` beside ``target``)."""
    _fsync_tree(staging)
    parent = os.path.dirname(target)
    if not os.path.lexists(target):
        os.rename(staging, target)
        _fsync(parent)
    elif _exchange(staging, target):
        _fsync(parent)
        shutil.rmtree(staging)  # the old version now
    else:  # the short window: between these two renames there is no folder at the target
        aside = staging + ".old"
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)  # the old folder back in place
            raise
        _fsync(parent)
        shutil.rmtree(aside)


def save_pretrained(model, save_directory: str | os.PathLike, **kwargs) -> None:
    """``model.save_pretrained(save_directory, **kwargs)`` (PEFT's, same arguments), replacing the folder as a
    whole: a process killed at any point leaves the old checkpoint or the new one, never a mix. Files in an existing
    folder that the new save does not write (a tokenizer, other subfolders) are kept. See :mod:`fourierft.folder_io`.
    """
    import peft

    if not isinstance(model, peft.PeftModel):
        raise TypeError(f"fourierft.save_pretrained takes a peft.PeftModel, got {type(model).__name__}: save a plain "
                        "model with its own save_pretrained, or wrap it with fourierft.get_peft_model first")
    if not isinstance(save_directory, (str, os.PathLike)) or not os.fspath(save_directory):
        raise ValueError(f"save_directory must be a folder path, got {save_directory!r}")
    target = os.path.realpath(os.fspath(save_directory))  # a link to a folder: replace the folder it points to
    name, parent = os.path.basename(target), os.path.dirname(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"{save_directory} is a file, not a folder: pass a folder path, or move the file away")
    if not name:
        raise ValueError(f"save_directory {save_directory!r} is the root folder: pass a folder to save into")
    if not kwargs.get("is_main_process", True):
        return  # PEFT writes nothing on other processes either
    created, missing = None, parent
    while not os.path.exists(missing):  # the outermost folder this call creates, removed again if it fails
        created, missing = missing, os.path.dirname(missing)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{name}.saving-"
    remove_stale(parent, prefix)
    staging = make_fresh_dir(f"{os.path.join(parent, prefix)}{os.getpid()}-")
    try:
        if os.path.isfile(os.path.join(target, "README.md")):  # PEFT updates an existing model card: a copy, as
            shutil.copy2(os.path.join(target, "README.md"), staging)  # it is written to (a link would change the old)
        model.save_pretrained(staging, **kwargs)
        apply_umask(staging)
        if os.path.isdir(target):
            _carry_over(target, staging)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
