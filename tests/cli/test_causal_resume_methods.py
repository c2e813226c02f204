"""Causal-LM fine-tuning, --resume after an interruption, and the reference methods (lora, full, head)."""

from __future__ import annotations

import json
from pathlib import Path

import shutil
import signal
import time

import torch

from clitools import cli, error_lines, ok, popen


def test_causal_lm_train_eval_merge(tiny_gpt2: Path, toy_jsonl: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fourierft import PeftModel

    out = tmp_path / "lm"
    proc = ok(cli("train", "--model", str(tiny_gpt2), "--data", str(toy_jsonl), "--epochs", "1", "--batch-size", "8",
                  "--n-frequency", "30", "--target-modules", "c_attn", "--out", str(out)))
    assert "task: causal-lm" in proc.stdout and "test loss" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "causal-lm" and m["params"]["adapter"] == 2 * 30 and m["params"]["head"] == 0
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert "token accuracy" in ok(cli("eval", str(out), "--data", str(toy_jsonl))).stdout
    merged = tmp_path / "merged"
    ok(cli("merge", str(out), "--out", str(merged)))
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    ids = tok(["the film was good ?"], return_tensors="pt")["input_ids"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), str(out)).eval()
    with torch.no_grad():
        want = adapted(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _killed_after_first_checkpoint(args: list[str], partial: Path) -> None:
    """Start ``fourierft train ARGS``, SIGKILL it once the Trainer has written a complete checkpoint."""
    proc = popen(*args)
    try:
        while proc.poll() is None:
            if any((c / "trainer_state.json").exists() for c in (partial / "checkpoints").glob("checkpoint-*")):
                proc.kill()  # within the next steps (a kill inside a checkpoint's write is staged below)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before a checkpoint was seen"


def test_resume_after_a_kill_continues_to_the_same_result(tiny_bert: Path, toy_csv: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # checkpoints at epoch ends: the Trainer's resume is exact there (mid-epoch, a resumed run draws the rest of the
    # epoch's shuffled order afresh); --keep-checkpoints keeps the last step's weights to compare
    common = ["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--epochs", "12", "--batch-size", "16",
              "--n-frequency", "20", "--no-plots", "--keep-checkpoints"]
    out = tmp_path / "run"
    partial = out.with_name("run.partial")
    _killed_after_first_checkpoint([*common, "--out", str(out)], partial)
    assert not out.exists() and (partial / "checkpoints").is_dir()  # nothing half-published
    complete = max((p for p in (partial / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    # as if killed during the next save (6 steps later): that checkpoint's folder without its trainer state
    torn = partial / "checkpoints" / f"checkpoint-{int(complete.name.split('-')[1]) + 6}"
    shutil.copytree(complete, torn, dirs_exist_ok=True)
    (torn / "trainer_state.json").unlink()
    before = sorted(p.name for p in partial.rglob("*"))
    changed = cli(*common, "--lr", "0.05", "--out", str(out), "--resume")  # not the interrupted run's arguments
    assert changed.returncode == 2 and len(error_lines(changed)) == 1, changed.stderr
    assert "--lr None -> 0.05" in changed.stderr and "same ones" in changed.stderr
    assert sorted(p.name for p in partial.rglob("*")) == before  # refused before touching anything
    ok(cli(*common, "--out", str(out), "--resume"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"].endswith(complete.name)  # the newest complete checkpoint, not the torn one
    assert m["global_step"] == 72  # 12 epochs x 6 steps
    assert not partial.exists()
    ok(cli(*common, "--out", str(tmp_path / "straight")))  # the same run, never interrupted
    resumed = load_file(out / "checkpoints" / "checkpoint-72" / "adapter_model.safetensors")
    straight = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-72" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-5, rtol=1e-4)


def test_reference_methods(tiny_bert: Path, toy_csv: Path, tmp_path: Path) -> None:
    base = ["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--max-steps", "2", "--no-plots"]
    counts = {}
    for method in ("lora", "head", "full"):
        extra = ["--bf16"] if method == "head" else []  # bf16 autocast works on a CPU-only machine too
        ok(cli(*base, "--method", method, *extra, "--out", str(tmp_path / method)))
        counts[method] = json.loads((tmp_path / method / "metrics.json").read_text())["params"]
    assert counts["lora"]["adapter"] == 2 * 2 * 8 * (32 + 32)  # 2 layers x (query, value) x r (in + out)
    assert counts["head"]["adapter"] == 0 and counts["head"]["head"] == counts["lora"]["head"]
    assert counts["full"]["trainable"] == counts["full"]["total"]
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    proc = ok(cli("eval", str(tmp_path / "full"), "--data", str(toy_csv)))  # a full-model folder evaluates too
    assert "on 120 examples" in proc.stdout
    proc = ok(cli("info", str(tmp_path / "lora")))
    assert "LORA" in proc.stdout and "lora_A" in proc.stdout


def test_lora_on_a_causal_lm_with_grouped_query_attention(tiny_llama: Path, toy_csv: Path, tmp_path: Path) -> None:
    """--method lora on labelled text and a causal LM (the instruct task, as on SmolLM2): PEFT's LoRA on the same
    layers, counted on the narrower v_proj, with the tied embeddings counted once."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    proc = ok(cli("train", "--model", str(tiny_llama), "--data", str(toy_csv), "--method", "lora", "--max-steps",
                  "1", "--batch-size", "8", "--no-plots", "--out", str(out)))
    assert "LoRA (PEFT) r=8 alpha=16 on 4 layers (q_proj, v_proj)" in proc.stdout
    assert "task: instruct" in proc.stdout and "answer accuracy after training" in proc.stdout
    params = json.loads((out / "metrics.json").read_text())["params"]
    assert params["adapter"] == 2 * 8 * ((32 + 32) + (32 + 16))  # 2 layers x r x (q: 32 -> 32, v: 32 -> 16)
    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama).parameters())  # tied: once
    assert params["total"] == base + params["adapter"]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
