"""Data-parallel training of real ``peft.PeftModel`` objects through other libraries' engines (gloo on the CPU):
DDP, FSDP2 ``fully_shard``, DeepSpeed ZeRO-2 and ZeRO-3.

Two ranks each train on half of a global batch; their coefficients must agree with each other and with one process
training on the whole batch, and the adapter rank 0 writes with PEFT's ``save_pretrained`` loads in one process with
the trained logits. No communication code of ours is involved: FourierFT coefficients are ordinary parameters, and
entries depend on the layer's logical shape, never on a shard's. One pair of processes runs every engine in turn
(spawning costs most of the time).
"""

from __future__ import annotations

import os

import peft
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

import fourierft

WORLD, STEPS, GLOBAL_BATCH = 2, 3, 8
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64))


def build() -> fourierft.PeftModel:
    config = fourierft.FourierFTConfig(n_frequency=24, target_modules="all-linear", scaling=10.0)
    model = fourierft.get_peft_model(base(), config)
    assert isinstance(model, peft.PeftModel)
    return model


def batch() -> torch.Tensor:
    return torch.randint(0, 64, (GLOBAL_BATCH, 12), generator=torch.Generator().manual_seed(1))


def train(model: torch.nn.Module, ids: torch.Tensor) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def spectra(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if ".fourierft_spectrum." in name:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name.removeprefix("module.")] = full.detach().clone()
    return out


def worker(rank: int, engines: list[str], init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    if any(e.startswith("zero") for e in engines):
        import deepspeed

        os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(WORLD))  # what torchrun would set
        deepspeed.init_distributed(dist_backend="gloo")  # adopts the group made above
    try:
        for engine in engines:
            out = os.path.join(out_dir, engine)
            os.makedirs(out, exist_ok=True)
            run_engine(rank, engine, build(), out)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_engine(rank: int, engine: str, model: fourierft.PeftModel, out_dir: str) -> None:
    if engine.startswith("zero"):
        return deepspeed_worker(rank, int(engine[-1]), model, out_dir)
    if engine == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        wrapped = fully_shard(model)
    local = batch().chunk(WORLD)[rank]
    losses = train(wrapped, local)
    kwargs = {}
    if engine == "fsdp2":  # PEFT's save_pretrained reads local tensors: gather the full state dict (collective)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        kwargs["state_dict"] = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model.save_pretrained(os.path.join(out_dir, "adapter"), is_main_process=rank == 0, **kwargs)
    torch.save({"spectra": spectra(wrapped), "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))


def deepspeed_worker(rank: int, stage: int, model: fourierft.PeftModel, out_dir: str) -> None:
    """ZeRO-2/3 through DeepSpeed's own engine (its CPU accelerator here); AdamW as in :func:`train`."""
    import deepspeed

    zero = {"stage": stage}
    if stage == 3:  # threshold 0: ZeRO-3 partitions every parameter, the small spectra too (by default kept whole)
        zero["stage3_param_persistence_threshold"] = 0
    config = {"train_batch_size": GLOBAL_BATCH, "train_micro_batch_size_per_gpu": GLOBAL_BATCH // WORLD,
              "optimizer": {"type": "AdamW", "params": {"lr": 5e-2, "torch_adam": True, "weight_decay": 0.01}},
              "zero_optimization": zero}
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    local = batch().chunk(WORLD)[rank]
    losses = []
    for _ in range(STEPS):
        loss = engine(input_ids=local, labels=local).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    # PEFT's save_pretrained reads local tensors, empty under ZeRO-3: every rank gathers the trained ones (a
    # collective), rank 0 writes
    with deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad], enabled=stage == 3):
        model.save_pretrained(os.path.join(out_dir, "adapter"), is_main_process=rank == 0)
    from deepspeed.utils import safe_get_full_fp32_param

    got = {n: safe_get_full_fp32_param(p).detach().clone() for n, p in model.named_parameters()
           if ".fourierft_spectrum." in n}
    torch.save({"spectra": got, "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))


def _deepspeed_runs() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # noqa: BLE001 (not installed, or installed without a usable accelerator)
        return False
    return True


ENGINES = ["ddp", "fsdp2"] + [
    pytest.param(e, marks=pytest.mark.skipif(not _deepspeed_runs(), reason="deepspeed is not installed"))
    for e in ("zero2", "zero3")
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``{engine: directory}`` after two ranks trained with every engine available (one spawn)."""
    out = tmp_path_factory.mktemp("distributed")
    engines = ["ddp", "fsdp2"] + (["zero2", "zero3"] if _deepspeed_runs() else [])
    mp.spawn(worker, args=(engines, str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return {e: out / e for e in engines}


@pytest.fixture(scope="module")
def single():
    """The reference: one process training on the whole batch; its losses and the initial coefficients."""
    model = build()
    initial = spectra(model)
    losses = train(model, batch())
    return model, losses, initial


@pytest.mark.parametrize("engine", ENGINES)
def test_data_parallel_matches_one_process(engine, trained, single):
    single_model, single_losses, initial = single
    ranks = [torch.load(trained[engine] / f"rank{r}.pt") for r in range(WORLD)]
    expected = spectra(single_model)
    assert len(expected) == 14 and all(not torch.allclose(expected[n], initial[n]) for n in expected)  # trained
    for result in ranks:
        assert result["spectra"].keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(result["spectra"][name], value, rtol=1e-4, atol=1e-5)
    # The global loss is the mean of the two half-batch losses (equal token counts per rank).
    mean_losses = [sum(r["losses"][i] for r in ranks) / WORLD for i in range(STEPS)]
    assert mean_losses == pytest.approx(single_losses, rel=1e-4)
    # The adapter saved on rank 0 is an ordinary PEFT checkpoint: it loads in one process with the trained logits.
    loaded = fourierft.PeftModel.from_pretrained(base(), trained[engine] / "adapter")
    assert isinstance(loaded, peft.PeftModel)
    ids = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, single_model(input_ids=ids).logits, rtol=1e-3,
                                   atol=1e-4)
        assert not torch.allclose(loaded(input_ids=ids).logits, base()(input_ids=ids).logits, atol=1e-3)
