"""``add_weighted_adapter``: a new adapter whose ``dW`` is exactly ``sum_i w_i dW_i`` on every layer.

``dW`` is linear in the spectrum, so the sum of adapters is one adapter on the union of their entries:

    S_new[u, v] = sum_i w_i * (scaling_i / scaling_new) * S_i[u, v]

Shared entries add; entries of only some adapters are kept; layers adapted by only some adapters get the sum of
those. ``scaling_new`` is the first adapter's. When every adapter has the same entries on every layer (same uniform
seed and ``n``, as when several adapters are trained from one config), the result keeps them and stays a plain
PEFT-compatible adapter; otherwise it has ``entry_sampling="stored"`` (entries saved in its checkpoint; see
:mod:`fourierft.sampling`). ``modules_to_save`` copies combine the same way, as deltas from the original module:
``M_new = M_orig + sum_i w_i (M_i - M_orig)``.
"""

from __future__ import annotations

import math

import torch
from peft.utils.other import ModulesToSaveWrapper

from .config import derive_config
from .entries import spectral_entries
from .sampling import check_entries


def _union(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], d2: int):
    """Merge ``(rows, cols, coefficients)`` triples: ``(rows, cols, coefficients)`` on the union of entries.

    If every part has the same entries in the same order, they are kept in that order (so PEFT's seeded entries
    survive); otherwise the union is sorted by flat index ``u * d2 + v``.
    """
    rows0, cols0 = parts[0][0], parts[0][1]
    if all(torch.equal(r, rows0) and torch.equal(c, cols0) for r, c, _ in parts):
        return rows0.clone(), cols0.clone(), sum(c for _, _, c in parts)
    flat = torch.cat([r * d2 + c for r, c, _ in parts])
    keys, inverse = torch.unique(flat, return_inverse=True)
    coeffs = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inverse, torch.cat([c for _, _, c in parts]))
    return keys // d2, keys % d2, coeffs


def _check_args(tuner, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    from .targets import check_adapter_name

    check_adapter_name(adapter_name)
    if isinstance(adapters, str) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got {adapters!r}")
    unknown = [a for a in adapters if a not in tuner.peft_config]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; adapters: {sorted(tuner.peft_config)}")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters must be distinct, got {adapters}")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters: give one weight per adapter")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {weights!r}")
    if adapter_name in tuner.peft_config:
        raise ValueError(f"an adapter named {adapter_name!r} exists already: pick another name or delete it")
    biased = [a for a in adapters if tuner.peft_config[a].bias != "none"]
    if biased:
        raise ValueError(f"adapter {biased[0]!r} trains biases of the base model in place (bias="
                         f"{tuner.peft_config[biased[0]].bias!r}); they cannot be weighted per adapter")


@torch.no_grad()
def add_weighted_adapter(tuner, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    """Add ``adapter_name`` with ``dW = sum_i weights[i] * dW(adapters[i])`` on every layer (not made active).

    ``tuner`` is a :class:`fourierft.FourierFTModel` (or a ``PeftModel``). Raises ``ValueError`` before anything
    changes for unknown/duplicate names, a weight count that differs, non-finite weights, an existing
    ``adapter_name`` or adapters that train biases.
    """
    from peft import PeftModel

    if isinstance(tuner, PeftModel):  # a tuner's own ``base_model`` is the transformers model's, never unwrap it
        tuner = tuner.base_model
    adapters = [adapters] if isinstance(adapters, str) else list(adapters)
    weights = [weights] if isinstance(weights, (int, float)) else list(weights)
    _check_args(tuner, adapters, weights, adapter_name)
    weights = [float(w) for w in weights]
    first = tuner.peft_config[adapters[0]]
    layers = dict(tuner.fourierft_layers())
    scaling = first.scaling  # the new adapter's, with the backward norm; each part is rescaled to it
    plan: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for name, layer in tuner.fourierft_layers():
        parts = []
        for a, w in zip(adapters, weights):
            if a in layer.fourierft_spectrum:
                c = layer.fourierft_spectrum[a].detach().double().cpu() * (w * layer.scaling(a) / scaling)
                rows, cols = layer.entries(a)
                parts.append((rows.cpu(), cols.cpu(), c))
        if parts:
            plan[name] = _union(parts, layer.in_features)
    sizes = {name: rows.numel() for name, (rows, _, _) in plan.items()}
    # PEFT-compatible only if PEFT would regenerate exactly these entries from the first adapter's seed.
    regenerable = getattr(first, "entry_sampling", "uniform") == "uniform" and all(
        all(torch.equal(got, want) for got, want in zip(plan[name][:2], spectral_entries(
            layers[name].out_features, layers[name].in_features, sizes[name], first.random_loc_seed)))
        for name in plan
    )
    n = max(sizes.values(), key=list(sizes.values()).count)  # the most common size; the rest by pattern
    # pattern keys are the full module names, unescaped: PEFT (and fourierft) match a key as `.*\.key$` or else look
    # the module's own name up, so a full name is found by equality; an escaped name would match neither way.
    config = derive_config(
        first, scaling=scaling, ifft2_norm="backward", alpha=None, n_frequency=n, target_modules=set(plan),
        exclude_modules=None, layers_to_transform=None,
        layers_pattern=None, n_frequency_pattern={k: v for k, v in sizes.items() if v != n},
        modules_to_save=sorted({m for a in adapters for m in tuner.peft_config[a].modules_to_save or []}) or None,
        entry_sampling="uniform" if regenerable else "stored", frequency_center=None, frequency_width=None,
        init_weights=True, inference_mode=all(tuner.peft_config[a].inference_mode for a in adapters),
    )
    tuner.peft_config[adapter_name] = config
    try:
        tuner.inject_adapter(tuner.model, adapter_name)
        for name, layer in tuner.fourierft_layers():
            if name in plan:
                rows, cols, coeffs = plan[name]
                check_entries(rows, cols, layer.out_features, layer.in_features, f"layer {name!r}")
                new_rows, new_cols = layer.entries(adapter_name)
                new_rows.copy_(rows)
                new_cols.copy_(cols)
                spectrum = layer.fourierft_spectrum[adapter_name]
                spectrum.copy_(coeffs.to(spectrum.dtype))
        for wrapper in tuner.model.modules():
            if isinstance(wrapper, ModulesToSaveWrapper) and adapter_name in wrapper.modules_to_save:
                _combine_module(wrapper, adapters, weights, adapter_name)
    except BaseException:
        if adapter_name in tuner.peft_config:
            tuner.delete_adapter(adapter_name)
        raise


def _combine_module(wrapper, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    """``M_new = M_orig + sum_i w_i (M_i - M_orig)`` over floating-point tensors (others stay the original's)."""
    original = wrapper.original_module.state_dict()
    new = wrapper.modules_to_save[adapter_name].state_dict()
    for key, value in new.items():
        if not value.is_floating_point():
            continue
        total = original[key].double().clone()
        for a, w in zip(adapters, weights):
            if a in wrapper.modules_to_save:
                total += w * (wrapper.modules_to_save[a].state_dict()[key].double() - original[key].double())
        value.copy_(total.to(value.dtype))
