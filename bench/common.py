"""Shared pieces of the benchmarks: model builders, adapter variants, timing.

Models are built from a fixed seed for every variant (same weights, no copy held beside them, so peak memory is the
variant's own). Variants:

* ``floor``           the frozen model, input grads on, no adapter (the cost of backprop alone)
* ``peft-lora``       PEFT LoRA r=16 (alpha 32, PEFT defaults otherwise)
* ``peft-fourierft``  PEFT FourierFT (n, scaling as the case says)
* ``ours-<path>``     ``fourierft.get_peft_model``, every layer's compute path forced to <path> (``set_compute_path``)
* ``direct-<path>``   the target ``nn.Linear`` wrapped by :class:`Direct`: ``base(x) + spectral_linear(x, ...)``
                      (measures the kernels without the model code)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from fourierft.kernels import spectral_linear
from fourierft.spectral import delta_weight

SEED = 777


# The contexts an inference forward runs under, by name: (the results' mode, the context manager). ``inference_mode``
# is the issue's table; ``no_grad`` is how transformers' ``generate`` and pipelines run a model.
INFER_UNDER = {"inference_mode": ("infer", torch.inference_mode), "no_grad": ("infer-no_grad", torch.no_grad)}
INFER = dict(INFER_UNDER.values())  # mode -> context: "infer" (inference_mode), "infer-no_grad"


def step_fn(model: nn.Module, batch: dict, mode: str) -> Callable[[], object]:
    """One step of ``mode``: ``train`` (forward, backward, AdamW on the trainable parameters) or an inference mode
    of :data:`INFER` (the forward under its context, labels left out)."""
    if mode in INFER:
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return INFER[mode]()(lambda: model(**inputs))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step():
        model(**batch).loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def entries(d1: int, d2: int, n: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's entries (the lead's O(n) generator when present, else PEFT's own randperm)."""
    try:
        from fourierft.entries import spectral_entries

        return spectral_entries(d1, d2, n, seed)
    except Exception:  # noqa: BLE001 (the bench must run without the model code)
        flat = torch.randperm(d1 * d2, generator=torch.Generator().manual_seed(seed))[:n]
        return flat // d2, flat % d2


class Direct(nn.Module):
    """``base(x) + spectral_linear(x, ...)`` around a frozen ``nn.Linear``; the spectrum in float32."""

    def __init__(self, base: nn.Linear, n: int, scaling: float, path: str) -> None:
        super().__init__()
        self.base, self.scaling, self.path = base, scaling, path
        d1, d2 = base.out_features, base.in_features
        self.out_features, self.in_features = d1, d2
        rows, cols = entries(d1, d2, n)
        dev = base.weight.device
        self.register_buffer("rows", rows.to(dev))
        self.register_buffer("cols", cols.to(dev))
        self.spectrum = nn.Parameter(torch.randn(n, device=dev))
        self.merged = False

    def merge(self) -> None:
        with torch.no_grad():
            w = self.base.weight
            w += delta_weight(self.spectrum, self.rows, self.cols, w.shape[0], w.shape[1], self.scaling).to(w.dtype)
        self.merged = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        # Python ints, as layers pass them (shapes read off tensors can turn symbolic under torch.compile)
        return spectral_linear(
            x, self.spectrum, self.rows, self.cols, self.out_features, self.in_features, self.scaling,
            path=self.path, base=y,
        )


def layer_inputs(d1: int, d2: int, n: int, rows: int, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """One layer's benchmark inputs from seed 0: entries, a float32 spectrum and ``x`` ``(rows, d2)`` (both requiring
    grad), a frozen weight ``(d1, d2)`` and an upstream gradient ``(rows, d1)``."""
    torch.manual_seed(0)
    r, c = (t.to(device) for t in entries(d1, d2, n))
    spectrum = torch.randn(n, device=device, requires_grad=True)
    x = torch.randn(rows, d2, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(d1, d2, device=device) * 0.02).to(dtype)
    g = torch.randn(rows, d1, device=device, dtype=dtype)
    return r, c, spectrum, x, w, g


def target_names(case: str, targets: str) -> list[str] | str:
    if targets == "all":
        return "all-linear"
    return ["q_proj", "v_proj"] if case.startswith("gpu") else ["query", "value"]


def build_base(case: str) -> tuple[nn.Module, dict]:
    """The frozen base model and one batch, built from :data:`SEED` (``case``: gpu, gpu-gqa or cpu)."""
    torch.manual_seed(SEED)
    if case.startswith("gpu"):
        from transformers import LlamaConfig, LlamaForCausalLM

        # gpu: LLaMA-7B-shaped (hidden 4096, MLP 11008, full attention), 4 x 1024 tokens; gpu-gqa: LLaMA-3-8B-shaped
        # (MLP 14336, grouped-query attention: k/v 1024 wide), 2 x 4096 tokens
        gqa = case == "gpu-gqa"
        cfg = LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336 if gqa else 11008, num_hidden_layers=4,
            num_attention_heads=32, num_key_value_heads=8 if gqa else 32, max_position_embeddings=4096,
        )
        cfg._attn_implementation = "sdpa"
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        ids = torch.randint(0, 32000, (2, 4096) if gqa else (4, 1024), device="cuda")
        batch = {"input_ids": ids, "labels": ids}
    else:
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(
            vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        model = BertForSequenceClassification(cfg)
        ids = torch.randint(0, 30522, (16, 64))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (16,))}
    model.requires_grad_(False)
    return model, batch


def _linear_targets(model: nn.Module, case: str, targets: str) -> list[tuple[nn.Module, str, nn.Linear]]:
    names = target_names(case, targets)
    core = model.model.layers if case.startswith("gpu") else model.bert.encoder
    out = []
    for mod in core.modules():
        for child_name, child in mod.named_children():
            if isinstance(child, nn.Linear) and (names == "all-linear" or child_name in names):
                out.append((mod, child_name, child))
    return out


def _with_peft_own_layers(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with fourierft unregistered, so PEFT builds its own FourierFT layers even after an ``ours-*``
    variant registered fourierft in this process; the registration state is restored afterwards."""
    try:
        import fourierft
    except ImportError:
        return build()
    with fourierft.unregistered():
        model = build()
    from peft.tuners.fourierft.layer import FourierFTLayer

    if not any(isinstance(m, FourierFTLayer) and type(m).__module__.startswith("peft.") for m in model.modules()):
        raise RuntimeError("the PEFT FourierFT peer was not built with PEFT's own layers")
    return model


def make_variant(variant: str, case: str, targets: str, n: int, scaling: float) -> tuple[nn.Module, dict]:
    """Fresh base model with ``variant`` applied; returns (model, batch)."""
    model, batch = build_base(case)
    tm = target_names(case, targets)
    if variant == "floor":
        model.enable_input_require_grads()
    elif variant == "peft-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=tm))
    elif variant == "peft-fourierft":
        from peft import FourierFTConfig, get_peft_model

        model = _with_peft_own_layers(
            lambda: get_peft_model(model, FourierFTConfig(n_frequency=n, scaling=scaling, target_modules=tm)))
    elif variant.startswith("ours-"):
        from fourierft import FourierFTConfig, get_peft_model

        model = get_peft_model(model, FourierFTConfig(n_frequency=n, scaling=scaling, target_modules=tm))
        path = variant.removeprefix("ours-")
        # the PEFT-based tuner is reached through base_model (PEFT's attribute forwarding); older models had it on top
        setter = getattr(getattr(model, "base_model", None), "set_compute_path", None)
        (setter or model.set_compute_path)(path)
    elif variant.startswith("direct-"):
        for parent, name, lin in _linear_targets(model, case, targets):
            setattr(parent, name, Direct(lin, n, scaling, variant.removeprefix("direct-")))
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return model, batch


def merge_all(model: nn.Module) -> None:
    """Merge every adapter into its base weight (ours, PEFT's or :class:`Direct`)."""
    if hasattr(model, "merge_adapter"):
        model.merge_adapter()
        return
    for m in model.modules():
        if isinstance(m, Direct):
            m.merge()


def measure(fn: Callable[[], object], steps: int, warmup: int, cuda: bool) -> tuple[float, float | None, list[float]]:
    """(median ms, peak GiB over the timed steps or None on CPU, all times). Device events on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        for _ in range(steps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        peak = None
    return statistics.median(times), peak, times
