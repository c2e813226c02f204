"""Crash-safe file writes (a reader sees the old file or the new one, never half of one), and a check that an
adapter folder's files can be read before anything is loaded from it."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a new file beside ``path``, flush it to disk, then rename it over ``path``.

    The file gets the permissions the umask gives, as ``open`` would give them (``mkstemp`` and safetensors' writer
    make 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def check_adapter_folder(directory: str | os.PathLike, require_weights: bool) -> None:
    """Raise ``ValueError`` naming the file if ``adapter_config.json`` is not UTF-8 JSON or
    ``adapter_model.safetensors`` is empty, truncated or not safetensors; with ``require_weights`` also if either
    file is missing. Called before loading, so a damaged checkpoint changes nothing."""
    from safetensors import SafetensorError, safe_open

    config = os.path.join(directory, "adapter_config.json")
    if os.path.isfile(config):
        try:
            with open(config, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{config} is not valid UTF-8 JSON ({err}): the checkpoint is damaged; restore the file or "
                             "save the adapter again") from None
        if not isinstance(data, dict):
            raise ValueError(f"{config} holds a JSON {type(data).__name__}, not an object of config fields")
    elif require_weights:
        raise ValueError(f"{directory} has no adapter_config.json: is it a folder written by save_pretrained?")
    weights = os.path.join(directory, "adapter_model.safetensors")
    if os.path.isfile(weights):
        try:
            with safe_open(weights, framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights} cannot be read ({err}): the file is empty, truncated or not safetensors; "
                             "restore it or save the adapter again") from None
    elif require_weights and not os.path.isfile(os.path.join(directory, "adapter_model.bin")):
        raise ValueError(f"{directory} has no adapter_model.safetensors (nor adapter_model.bin): the adapter's "
                         "weights are missing; copy them there or save the adapter again")
