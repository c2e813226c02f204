"""Bad input to the library, tried as a careful user would: every call must answer with a clear error naming what was
wrong (or warn, or do the right thing) and leave NOTHING changed: parameters, ``requires_grad``, module types,
adapter lists, state-dict keys, files on disk (:func:`snapshot`, compared before and after every case).

Each case is ``(id, setup, action, expected)``: ``setup(tmp)`` builds the state (a dict with ``"model"`` and optional
``"dirs"``), ``action(state)`` makes the bad call, ``expected`` is ``(exception types, message regex)`` or
``("warn", regex)`` for a call that must succeed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import fourierft
from fourierft import FourierFTConfig
from helpers import build, inputs

pytestmark = pytest.mark.filterwarnings("ignore:.*fan_in_fan_out.*:UserWarning")
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(autouse=True)
def _registration_restored():
    was = fourierft.is_registered()
    yield
    (fourierft.register if was else fourierft.unregister)()


# --- the one snapshot of everything a failed call must not change --------------------------------------------------
def _tensor(t: torch.Tensor) -> torch.Tensor | str:
    return f"meta{tuple(t.shape)}" if t.device.type == "meta" else t.detach().clone()


def snapshot(model: nn.Module, dirs: list[str] = ()) -> dict:
    """Parameters and buffers (values), ``requires_grad``, module types, adapter lists (tuner and every layer),
    state-dict keys and the bytes of every file under ``dirs``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    files = {}
    for d in dirs:
        for root, _, names in os.walk(d):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as fh:
                    files[os.path.relpath(path, d)] = hashlib.sha256(fh.read()).hexdigest()
    layers = {n: (sorted(getattr(m, "fourierft_spectrum", {}) or {}), list(m.active_adapters),
                  list(getattr(m, "merged_adapters", [])), m.disable_adapters)
              for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    config = getattr(model, "peft_config", None)
    return {
        "values": {k: _tensor(v) for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "types": {n: type(m) for n, m in model.named_modules()},
        "adapters": (sorted(config) if isinstance(config, dict) else None,
                     list(getattr(model, "active_adapters", None) or []) if config else None, layers),
        "training": {n: m.training for n, m in model.named_modules()},
        "files": files,
    }


def assert_unchanged(before: dict, after: dict) -> None:
    for key in ("requires_grad", "types", "adapters", "training", "files"):
        assert after[key] == before[key], f"{key} changed"
    assert list(after["values"]) == list(before["values"]), "state_dict keys changed"
    for k, v in before["values"].items():
        w = after["values"][k]
        if isinstance(v, str) or isinstance(w, str):
            assert v == w, k
        else:
            assert v.dtype == w.dtype and v.shape == w.shape, k
            torch.testing.assert_close(w, v, rtol=0, atol=0, equal_nan=True, msg=k)


# --- setups --------------------------------------------------------------------------------------------------------
def cfg(**kw) -> FourierFTConfig:
    return FourierFTConfig(**{"n_frequency": 10, "target_modules": ["lin0"], **kw})


def wrapped(tmp=None, **kw) -> dict:
    model = fourierft.get_peft_model(build("mlp"), cfg(**kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return {"model": model.eval()}


def base(tmp=None) -> dict:
    return {"model": build("mlp")}


def two_adapters(tmp=None) -> dict:
    state = wrapped()
    state["model"].add_adapter("other", cfg(random_loc_seed=7))
    return state


def saved(tmp, edit=None, source=None, **kw) -> dict:
    """A checkpoint of the MLP (``edit(dir)`` damages it), a fresh base model and the wrapped model to load into."""
    src = source() if source else wrapped(**kw)["model"]
    ckpt = os.path.join(tmp, "ckpt")
    src.save_pretrained(ckpt)
    if edit:
        edit(ckpt)
    return {"model": build("mlp"), "peft": wrapped()["model"], "ckpt": ckpt, "dirs": [ckpt]}


def _write(name: str, data: bytes):
    def edit(ckpt):
        with open(os.path.join(ckpt, name), "wb") as fh:
            fh.write(data)
    return edit


def _truncate(ckpt):
    path = os.path.join(ckpt, WEIGHTS)
    data = open(path, "rb").read()
    _write(WEIGHTS, data[: len(data) // 2])(ckpt)


def _config_edit(**changes):
    def edit(ckpt):
        path = os.path.join(ckpt, "adapter_config.json")
        data = json.load(open(path))
        data.update(changes)
        _write("adapter_config.json", json.dumps(data).encode())(ckpt)
    return edit


def _weights_edit(fn):
    def edit(ckpt):
        path = os.path.join(ckpt, WEIGHTS)
        tensors = load_file(path)
        fn(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    return edit


def _fewer_coefficients(t):
    for k in t:
        if "fourierft_spectrum" in k:
            t[k] = t[k][:5].clone()


def _rows_out_of_range(t):
    for k in t:
        if "fourierft_rows" in k:
            t[k] = t[k].clone()
            t[k][0] = 10**6


def _duplicate_rows(t):
    for k in list(t):
        if "fourierft_rows" in k:
            cols = k.replace("_rows", "_cols")
            t[k], t[cols] = t[k].clone(), t[cols].clone()
            t[k][1], t[cols][1] = t[k][0], t[cols][0]


def _lora_source():
    return peft.get_peft_model(build("mlp"), peft.LoraConfig(target_modules=["lin0"], r=2))


def other_base() -> nn.Module:
    """An MLP whose lin0 has another shape: a checkpoint for ``build("mlp")`` is for another base."""
    model = build("mlp")
    model.lin0 = nn.Linear(10, 30)
    model.lin1 = nn.Linear(30, 2)
    return model


def named_bert(name: str) -> nn.Module:
    """The tiny BERT as if loaded from ``name`` (what ``from_pretrained`` records: config and model)."""
    model = build("bert")
    model.config._name_or_path = model.name_or_path = name
    return model


def saved_for(recorded: str, given: str):
    """A checkpoint trained on base ``recorded``, and a model named ``given`` to load it into."""
    def setup(tmp) -> dict:
        bert_cfg = lambda: FourierFTConfig(n_frequency=10, target_modules=["query"])  # noqa: E731
        ckpt = os.path.join(tmp, "ckpt")
        fourierft.get_peft_model(named_bert(recorded), bert_cfg()).save_pretrained(ckpt)
        return {"model": named_bert(given), "peft": fourierft.get_peft_model(named_bert(given), bert_cfg()),
                "ckpt": ckpt, "dirs": [ckpt]}
    return setup


def emb_model(tmp=None) -> dict:
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.emb = nn.Embedding(8, 4, max_norm=1.0)

    return {"model": M()}


def nan_adapter(tmp=None) -> dict:
    state = wrapped()
    with torch.no_grad():
        state["model"].base_model.model.lin0.fourierft_spectrum["default"][0] = float("nan")
    return state


def nan_head(tmp=None) -> dict:
    state = wrapped(modules_to_save=["lin1"])
    with torch.no_grad():
        state["model"].base_model.model.lin1.modules_to_save["default"].weight[0, 0] = float("nan")
    return state


def merged(tmp=None) -> dict:
    state = two_adapters()
    state["model"].merge_adapter()
    return state


def lazy(tmp=None) -> dict:
    return {"model": fourierft.get_peft_model(build("mlp"), cfg(), low_cpu_mem_usage=True)}


def gpt2(tmp=None) -> dict:
    return {"model": build("gpt2")}


def run_mixed(names, train=False):
    def action(s):
        m = s["model"]
        m.train(train)
        try:
            m(**inputs("mlp"), adapter_names=names)
        finally:
            m.eval()
    return action


X = inputs("mlp")["X"]


def forward(s):
    s["model"](X)


def export(tmp_dir_state, **kw):
    out = os.path.join(tmp_dir_state["tmp"], "lora")
    fourierft.export_lora(tmp_dir_state["model"], out, **kw)


def with_export_dir(tmp) -> dict:
    state = wrapped()
    out = os.path.join(tmp, "lora")
    os.makedirs(out)
    state.update(tmp=tmp, dirs=[out])
    return state


def get(**kw):
    return lambda s: fourierft.get_peft_model(s["model"], cfg(**kw) if "target_modules" in kw or kw else cfg())


def load(name="other", into="peft", **kw):
    def action(s):
        if into == "peft":
            s["peft"].load_adapter(s["ckpt"], adapter_name=name, **kw)
        else:
            fourierft.PeftModel.from_pretrained(s["model"], s["ckpt"], adapter_name=name, **kw)
    return action


E = (ValueError, TypeError, KeyError, RuntimeError, OSError)

# --- config construction: (id, kwargs, field the message must name) ------------------------------------------------
CONFIG_CASES = [
    ("n_frequency=0", dict(n_frequency=0), "n_frequency"),
    ("n_frequency=-1", dict(n_frequency=-1), "n_frequency"),
    ("n_frequency=1.5", dict(n_frequency=1.5), "n_frequency"),
    ("n_frequency='10'", dict(n_frequency="10"), "n_frequency"),
    ("n_frequency=True", dict(n_frequency=True), "n_frequency"),
    ("scaling='x'", dict(scaling="x"), "scaling"),
    ("scaling=nan", dict(scaling=float("nan")), "scaling"),
    ("scaling=inf", dict(scaling=float("inf")), "scaling"),
    ("scaling=True", dict(scaling=True), "scaling"),
    ("random_loc_seed=2**70", dict(random_loc_seed=2**70), "random_loc_seed"),
    ("random_loc_seed=1.0", dict(random_loc_seed=1.0), "random_loc_seed"),
    ("random_loc_seed='1'", dict(random_loc_seed="1"), "random_loc_seed"),
    ("fan_in_fan_out='yes'", dict(fan_in_fan_out="yes"), "fan_in_fan_out"),
    ("init_weights='no'", dict(init_weights="no"), "init_weights"),
    ("inference_mode=1", dict(inference_mode=1), "inference_mode"),
    ("bias='lora_only'", dict(bias="lora_only"), "bias"),
    ("target_modules bad regex", dict(target_modules="lin[0"), "target_modules"),
    ("target_modules=5", dict(target_modules=5), "target_modules"),
    ("target_modules=[1]", dict(target_modules=[1]), "target_modules"),
    ("exclude_modules bad regex", dict(exclude_modules="(lin"), "exclude_modules"),
    ("exclude_modules=[None]", dict(exclude_modules=[None]), "exclude_modules"),
    ("n_frequency_pattern bad regex", dict(n_frequency_pattern={"lin(": 5}), "n_frequency_pattern"),
    ("n_frequency_pattern value 0", dict(n_frequency_pattern={"lin0": 0}), "n_frequency_pattern"),
    ("n_frequency_pattern value '5'", dict(n_frequency_pattern={"lin0": "5"}), "n_frequency_pattern"),
    ("n_frequency_pattern list", dict(n_frequency_pattern=["lin0"]), "n_frequency_pattern"),
    ("modules_to_save str", dict(modules_to_save="lin1"), "modules_to_save"),
    ("modules_to_save=[1]", dict(modules_to_save=[1]), "modules_to_save"),
    ("layers_to_transform='0'", dict(layers_to_transform="0"), "layers_to_transform"),
    ("layers_to_transform=[0.5]", dict(layers_to_transform=[0.5]), "layers_to_transform"),
    ("layers_to_transform=-1", dict(layers_to_transform=-1), "layers_to_transform"),
    ("layers_pattern without layers_to_transform", dict(layers_pattern="h"), "layers_to_transform"),
    ("layers_to_transform with a regex target", dict(target_modules="lin.*", layers_to_transform=[0]),
     "layers_to_transform"),
    ("layers_pattern=5", dict(layers_pattern=5, layers_to_transform=[0]), "layers_pattern"),
    ("ifft2_norm='none'", dict(ifft2_norm="none"), "ifft2_norm"),
    ("alpha=0", dict(alpha=0), "alpha"),
    ("alpha=1.5", dict(alpha=1.5), "alpha"),
    ("alpha=True", dict(alpha=True), "alpha"),
    ("alpha='0.1'", dict(alpha="0.1"), "alpha"),
    ("alpha=nan", dict(alpha=float("nan")), "alpha"),
    ("entry_sampling='bogus'", dict(entry_sampling="bogus"), "entry_sampling"),
    ("frequency_center without frequency_biased", dict(frequency_center=0.5), "frequency_center"),
    ("task_type='BOGUS'", dict(task_type="BOGUS"), "task type"),
]


@pytest.mark.parametrize("kwargs,field_name", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_refuses_bad_fields_naming_them(kwargs, field_name):
    with pytest.raises((ValueError, TypeError)) as info:
        FourierFTConfig(**{"n_frequency": 10, "target_modules": ["lin0"], **kwargs})
    assert field_name in str(info.value), f"the message does not name {field_name}: {info.value}"


# --- calls on models: (id, setup, action, (exception types or "warn", message regex)) ------------------------------
CASES = [
    # get_peft_model
    ("get: unsupported layer", base, get(target_modules=["relu"]), (E, r"not supported")),
    ("get: target matches nothing", base, get(target_modules=["nonexistent"]), (E, r"not found.*lin0")),
    ("get: regex target matches nothing", base, get(target_modules="nothing.*"), (E, r"not found|no module")),
    ("get: n_frequency too large", base, get(n_frequency=10**6), (E, r"lin0.*n_frequency")),
    ("get: n_frequency_pattern too large", base, get(n_frequency_pattern={"lin0": 201}), (E, r"lin0.*201")),
    ("get: alpha too small", base, get(alpha=1e-6), (E, r"alpha.*lin0")),
    ("get: Embedding(max_norm) among targets", emb_model, get(target_modules=["lin", "emb"]), (E, r"max_norm")),
    ("get: layers_to_transform out of range", gpt2,
     lambda s: fourierft.get_peft_model(s["model"], FourierFTConfig(target_modules=["c_attn"], layers_to_transform=[5],
                                                                     layers_pattern="h")), (E, r"layers_to_transform")),
    ("get: model already wrapped", wrapped, get(), (E, r"already")),
    ("get: LoRA config", base, lambda s: fourierft.get_peft_model(s["model"], peft.LoraConfig(target_modules=["lin0"])),
     (E, r"FourierFTConfig")),
    ("get: config is a dict", base, lambda s: fourierft.get_peft_model(s["model"], {"n_frequency": 10}),
     (E, r"FourierFTConfig")),
    ("get: adapter name ''", base, lambda s: fourierft.get_peft_model(s["model"], cfg(), adapter_name=""),
     (E, r"adapter name")),
    ("get: adapter name 'v1.2'", base, lambda s: fourierft.get_peft_model(s["model"], cfg(), adapter_name="v1.2"),
     (E, r"adapter name")),
    ("get: adapter name 123", base, lambda s: fourierft.get_peft_model(s["model"], cfg(), adapter_name=123),
     (E, r"adapter name")),
    ("get: modules_to_save unsupported", base, get(modules_to_save=["nonexistent_head"]), ("warn", r"nonexistent_head")),
    ("get: target list partly matching", base, get(target_modules=["lin0", "nonexistent"]),
     ("warn", r"target_modules.*nonexistent")),
    ("get: n_frequency_pattern matching nothing", base, get(n_frequency_pattern={"nomatch": 5}),
     ("warn", r"n_frequency_pattern.*nomatch")),
    # add_adapter
    ("add: existing name", wrapped, lambda s: s["model"].add_adapter("default", cfg()), (E, r"default")),
    ("add: name ''", wrapped, lambda s: s["model"].add_adapter("", cfg()), (E, r"adapter name")),
    ("add: name 'v1.2'", wrapped, lambda s: s["model"].add_adapter("v1.2", cfg()), (E, r"adapter name")),
    ("add: name 123", wrapped, lambda s: s["model"].add_adapter(123, cfg()), (E, r"adapter name")),
    ("add: target matching nothing", wrapped, lambda s: s["model"].add_adapter("b", cfg(target_modules=["zzz"])),
     (E, r"not found")),
    ("add: n_frequency too large", wrapped, lambda s: s["model"].add_adapter("b", cfg(n_frequency=10**6)),
     (E, r"n_frequency")),
    ("add: LoRA config", wrapped, lambda s: s["model"].add_adapter("b", peft.LoraConfig(target_modules=["lin0"])),
     (E, r"")),
    # load_adapter / from_pretrained
    ("load: missing folder", lambda t: {**saved(t), "ckpt": os.path.join(t, "nope")}, load(), (E, r"nope")),
    ("from_pretrained: missing folder", lambda t: {**saved(t), "ckpt": os.path.join(t, "nope")}, load(into="base"),
     (E, r"nope")),
    ("load: existing name", saved, load(name="default"), (E, r"default")),
    ("from_pretrained: recorded base differs", saved_for("org/model-a", "org/model-b"), load(into="base"),
     ("warn", r"trained on base model 'org/model-a'.*the model given is 'org/model-b': load the adapter onto")),
    ("load: recorded base differs", saved_for("org/model-a", "org/model-b"), load(),
     ("warn", r"trained on base model 'org/model-a'.*the model given is 'org/model-b'")),
    ("load: name 'v1.2'", saved, load(name="v1.2"), (E, r"adapter name")),
    ("from_pretrained: name ''", saved, load(name="", into="base"), (E, r"adapter name")),
    ("from_pretrained: wrong base", lambda t: {**saved(t), "model": other_base()}, load(into="base"),
     (E, r"another base|does not fit|size mismatch")),
    ("load: wrong base", lambda t: {**saved(t), "peft": fourierft.get_peft_model(other_base(), cfg())}, load(),
     (E, r"another base|does not fit|size mismatch")),
    ("load: weights missing", lambda t: saved(t, lambda c: os.remove(os.path.join(c, WEIGHTS))), load(),
     (E, r"adapter_model|weights|No file")),
    ("from_pretrained: weights missing", lambda t: saved(t, lambda c: os.remove(os.path.join(c, WEIGHTS))),
     load(into="base"), (E, r"adapter_model|weights|No file")),
    ("load: zero-byte weights", lambda t: saved(t, _write(WEIGHTS, b"")), load(), (E, r"adapter_model\.safetensors")),
    ("from_pretrained: zero-byte weights", lambda t: saved(t, _write(WEIGHTS, b"")), load(into="base"),
     (E, r"adapter_model\.safetensors")),
    ("load: truncated weights", lambda t: saved(t, _truncate), load(), (E, r"adapter_model\.safetensors")),
    ("load: garbage weights", lambda t: saved(t, _write(WEIGHTS, b"\x00" * 64)), load(),
     (E, r"adapter_model\.safetensors")),
    ("load: config missing", lambda t: saved(t, lambda c: os.remove(os.path.join(c, "adapter_config.json"))), load(),
     (E, r"adapter_config\.json")),
    ("load: config non-UTF-8", lambda t: saved(t, _write("adapter_config.json", b"\xff\xfe{\x00")), load(),
     (E, r"adapter_config\.json")),
    ("from_pretrained: config non-UTF-8", lambda t: saved(t, _write("adapter_config.json", b"\xff\xfe{\x00")),
     load(into="base"), (E, r"adapter_config\.json")),
    ("load: config invalid JSON", lambda t: saved(t, _write("adapter_config.json", b"{not json")), load(),
     (E, r"adapter_config\.json")),
    ("from_pretrained: config invalid JSON", lambda t: saved(t, _write("adapter_config.json", b"{not json")),
     load(into="base"), (E, r"adapter_config\.json")),
    ("from_pretrained: config is a list", lambda t: saved(t, _write("adapter_config.json", b"[]")),
     load(into="base"), (E, r"adapter_config\.json")),
    ("from_pretrained: truncated weights", lambda t: saved(t, _truncate), load(into="base"),
     (E, r"adapter_model\.safetensors")),
    ("from_pretrained: config unknown key", lambda t: saved(t, _config_edit(spectral_warp=2)), load(into="base"),
     (E, r"spectral_warp")),
    ("from_pretrained: stored entries out of range",
     lambda t: saved(t, _weights_edit(_rows_out_of_range), entry_sampling="frequency_biased", frequency_center=3.0,
                     frequency_width=4.0), load(into="base"), (E, r"range|rows")),
    ("load: config zero-byte", lambda t: saved(t, _write("adapter_config.json", b"")), load(),
     (E, r"adapter_config\.json")),
    ("load: config unknown key", lambda t: saved(t, _config_edit(spectral_warp=2)), load(), (E, r"spectral_warp")),
    ("load: config bad value", lambda t: saved(t, _config_edit(n_frequency=-3)), load(), (E, r"n_frequency")),
    ("load: config other peft_type", lambda t: saved(t, _config_edit(peft_type="IA3")), load(), (E, r"")),
    ("load: fewer coefficients", lambda t: saved(t, _weights_edit(_fewer_coefficients)), load(),
     (E, r"size mismatch|does not fit")),
    ("from_pretrained: fewer coefficients", lambda t: saved(t, _weights_edit(_fewer_coefficients)), load(into="base"),
     (E, r"size mismatch|does not fit")),
    ("load: stored entries out of range",
     lambda t: saved(t, _weights_edit(_rows_out_of_range), entry_sampling="frequency_biased", frequency_center=3.0,
                     frequency_width=4.0), load(), (E, r"range|rows")),
    ("load: LoRA checkpoint", lambda t: saved(t, source=_lora_source), load(), (E, r"LORA|LoRA|FourierFT")),
    ("load: not a folder (a file)", lambda t: {**saved(t), "ckpt": os.path.join(saved(t)["ckpt"], WEIGHTS)}, load(),
     (E, r"")),
    # delete_adapter / set_adapter
    ("delete: unknown", wrapped, lambda s: s["model"].delete_adapter("nope"), (E, r"nope")),
    ("delete: merged", merged, lambda s: s["model"].delete_adapter("default"), (E, r"merged")),
    ("set_adapter: unknown", two_adapters, lambda s: s["model"].set_adapter("nope"), (E, r"nope")),
    ("set_adapter: list with unknown", two_adapters, lambda s: s["model"].base_model.set_adapter(["default", "nope"]),
     (E, r"nope")),
    ("set_adapter: 123", two_adapters, lambda s: s["model"].set_adapter(123), (E, r"123")),
    ("delete: 123", wrapped, lambda s: s["model"].delete_adapter(123), (E, r"123")),
    ("set_compute_path: unknown", wrapped, lambda s: s["model"].base_model.set_compute_path("bogus"), (E, r"bogus")),
    ("load: duplicate stored entries",
     lambda t: saved(t, _weights_edit(_duplicate_rows), entry_sampling="frequency_biased", frequency_center=3.0,
                     frequency_width=4.0), load(), (E, r"distinct|repeat|duplicate")),
    # merging
    ("merge_adapter safe NaN", nan_adapter, lambda s: s["model"].merge_adapter(safe_merge=True), (E, r"NaN")),
    ("merge_and_unload safe NaN", nan_adapter, lambda s: s["model"].merge_and_unload(safe_merge=True), (E, r"NaN")),
    ("merge_and_unload safe NaN modules_to_save", nan_head, lambda s: s["model"].merge_and_unload(safe_merge=True),
     (E, r"NaN.*lin1")),
    ("merge_adapter unknown", two_adapters, lambda s: s["model"].merge_adapter(["nope"]), (E, r"nope")),
    ("merge_and_unload unknown", two_adapters, lambda s: s["model"].merge_and_unload(adapter_names=["nope"]),
     (E, r"nope")),
    ("unmerge when nothing merged", wrapped, lambda s: s["model"].unmerge_adapter(), ("warn", r"unmerged|Nothing")),
    # add_weighted_adapter
    ("weighted: unknown", two_adapters, lambda s: s["model"].add_weighted_adapter(["default", "nope"], [1, 1], "w"),
     (E, r"nope")),
    ("weighted: duplicate", two_adapters, lambda s: s["model"].add_weighted_adapter(["default", "default"], [1, 1], "w"),
     (E, r"distinct")),
    ("weighted: weight count", two_adapters, lambda s: s["model"].add_weighted_adapter(["default", "other"], [1], "w"),
     (E, r"weight")),
    ("weighted: nan weight", two_adapters,
     lambda s: s["model"].add_weighted_adapter(["default", "other"], [1, float("nan")], "w"), (E, r"finite")),
    ("weighted: inf weight", two_adapters,
     lambda s: s["model"].add_weighted_adapter(["default", "other"], [float("inf"), 1], "w"), (E, r"finite")),
    ("weighted: str weight", two_adapters,
     lambda s: s["model"].add_weighted_adapter(["default", "other"], ["1", 1], "w"), (E, r"finite")),
    ("weighted: existing name", two_adapters,
     lambda s: s["model"].add_weighted_adapter(["default", "other"], [1, 1], "other"), (E, r"exists")),
    ("weighted: bad new name", two_adapters,
     lambda s: s["model"].add_weighted_adapter(["default", "other"], [1, 1], "a.b"), (E, r"adapter name")),
    ("weighted: empty list", two_adapters, lambda s: s["model"].add_weighted_adapter([], [], "w"), (E, r"non-empty")),
    # export_lora
    ("export: rank 0", with_export_dir, lambda s: export(s, rank=0), (E, r"rank")),
    ("export: rank -1", with_export_dir, lambda s: export(s, rank=-1), (E, r"rank")),
    ("export: rank 1.5", with_export_dir, lambda s: export(s, rank=1.5), (E, r"rank")),
    ("export: rank True", with_export_dir, lambda s: export(s, rank=True), (E, r"rank")),
    ("export: unknown adapter", with_export_dir, lambda s: export(s, adapter_name="nope"), (E, r"nope")),
    ("export: not a PeftModel", lambda t: {**with_export_dir(t), "model": build("mlp")}, lambda s: export(s),
     (E, r"PeftModel|FourierFT")),
    # mixed batches
    ("mixed: wrong length", two_adapters, run_mixed(["default", "other"]), (E, r"one adapter name per row|9 rows for 2 adapter_names")),
    ("mixed: a string", two_adapters, run_mixed("default"), (E, r"list of adapter names")),
    ("mixed: ints", two_adapters, run_mixed([1] * 9), (E, r"list of adapter names")),
    ("mixed: unknown", two_adapters, run_mixed(["nope"] * 9), (E, r"nope")),
    ("mixed: training mode", two_adapters, run_mixed(["default"] * 9, train=True), (E, r"training mode")),
    ("mixed: merged", merged, run_mixed(["default"] * 9), (E, r"merged")),
    # low_cpu_mem_usage, nothing loaded
    ("lazy: forward", lazy, forward, (E, r"low_cpu_mem_usage")),
    ("lazy: merge", lazy, lambda s: s["model"].merge_adapter(), (E, r"low_cpu_mem_usage")),
    ("lazy: export", lambda t: {**lazy(t), "tmp": t, "dirs": []}, lambda s: export(s), (E, r"low_cpu_mem_usage")),
]

# PEFT's own behaviour, which a fix in fourierft would make differ from PEFT's tests (tests/peft_suite).
_READ_BY_PEFT = ("PEFT's load_adapter reads adapter_config.json itself (PeftConfig._get_peft_type) before any fourierft "
                 "code runs; its raw json/UTF-8 error is PEFT's (nothing is changed; fourierft.PeftModel.from_pretrained "
                 "names the file)")
_NO_SHAPES = ("PEFT's checkpoints record no layer shapes and a spectrum has n entries whatever the layer's shape, so "
              "the same n on another shape loads (PEFT loads it alike); only base_model_name_or_path could tell")
XFAIL: dict[str, str] = {
    "add: name 123": "PeftModel.add_adapter (PEFT's) fails on `adapter_name in prefix` before fourierft's name check; "
                     "raw TypeError, nothing changed",
    "load: existing name": "PEFT's load_adapter loads into an existing adapter by design (reloading its weights)",
    "from_pretrained: wrong base": _NO_SHAPES,
    "load: wrong base": _NO_SHAPES,
    "load: weights missing": "PEFT's load_adapter adds the adapter before it looks for the weights (raw "
                             "HFValidationError, phantom adapter left); a config-only folder looks the same to the "
                             "config hook; fourierft.PeftModel.from_pretrained refuses it first",
    "load: config non-UTF-8": _READ_BY_PEFT,
    "load: config invalid JSON": _READ_BY_PEFT,
    "load: config zero-byte": _READ_BY_PEFT,
}


def _params(cases):
    return [pytest.param(*c[1:], id=c[0], marks=[pytest.mark.xfail(reason=XFAIL[c[0]], strict=True)]
                         if c[0] in XFAIL else []) for c in cases]


@pytest.mark.parametrize("setup,action,expected", _params(CASES))
def test_bad_call_is_a_clear_error_and_changes_nothing(setup, action, expected, tmp_path):
    state = setup(str(tmp_path))
    kind, pattern = expected
    targets = {"model": state["model"], **({"peft": state["peft"]} if "peft" in state else {})}
    before = {k: snapshot(m, state.get("dirs", [])) for k, m in targets.items()}
    if kind == "warn":
        with pytest.warns(UserWarning, match=pattern):
            action(state)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kind) as info:
            action(state)
    for k, m in targets.items():
        assert_unchanged(before[k], snapshot(m, state.get("dirs", [])))
    message = str(info.value)
    assert len(message) > 15 and re.search(pattern, message, re.S), \
        f"unclear error {type(info.value).__name__}: {message!r}"


@pytest.mark.parametrize("given", ["org/model-a", "", "/models/org/model-a/",
                                   "/cache/hub/models--org--model-a/snapshots/0123abcd"])
def test_no_base_model_warning_for_the_recorded_base_or_an_unnamed_one(given, tmp_path):
    """The same model (also a local copy of the hub id) or a model without a name: loaded without that warning."""
    state = saved_for("org/model-a", given)(str(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*trained on base model")
        fourierft.PeftModel.from_pretrained(state["model"], state["ckpt"])
        state["peft"].load_adapter(state["ckpt"], adapter_name="other")


def test_peft_itself_does_not_check_the_recorded_base(tmp_path):
    """Why fourierft warns: PEFT 0.21 loads an adapter recorded for another base without a word."""
    state = saved_for("org/model-a", "org/model-b")(str(tmp_path))
    with fourierft.unregistered(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(state["model"], state["ckpt"])
    assert not [w for w in caught if "model-a" in str(w.message)], [str(w.message) for w in caught]


def test_deleting_the_last_adapter_leaves_a_wrapper_that_takes_a_new_one():
    """PEFT's behaviour (allowed, no adapter active afterwards); a new adapter can be added and trained."""
    model = wrapped()["model"]
    model.delete_adapter("default")
    assert dict(model.peft_config) == {} and model.active_adapters == []
    model.add_adapter("b", cfg())
    model.set_adapter("b")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["base_model.model.lin0.fourierft_spectrum.b"]


def test_a_retry_after_a_failed_wrap_works():
    model = emb_model()["model"]
    with pytest.raises(TypeError, match="max_norm"):
        fourierft.get_peft_model(model, cfg(target_modules=["lin", "emb"], n_frequency=4))
    peft_model = fourierft.get_peft_model(model, cfg(target_modules=["lin"], n_frequency=4))
    assert type(peft_model.base_model.model.lin).__name__ == "Linear"
