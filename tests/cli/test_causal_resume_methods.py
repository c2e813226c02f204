"""Causal-LM fine-tuning, --resume after an interruption, and the reference methods (lora, full, head)."""

from __future__ import annotations

import json
from pathlib import Path

from clitools import cli, ok


def test_causal_lm_train_eval_merge(tiny_gpt2: Path, toy_jsonl: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fourierft.cli._api import PeftModel

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


def test_resume_after_interruption(tiny_bert: Path, toy_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["train", "--model", str(tiny_bert), "--data", str(toy_csv), "--epochs", "2", "--batch-size", "16",
              "--evals-per-epoch", "3", "--n-frequency", "20", "--no-plots", "--out", str(out)]
    crashed = cli(*common, env={"FOURIERFT_CLI_CRASH_AFTER_STEP": "2"})
    assert crashed.returncode == 130, crashed.stderr
    assert "--resume" in crashed.stderr and "Traceback" not in crashed.stderr
    partial = out.with_name("run.partial")
    assert not out.exists() and (partial / "checkpoints" / "checkpoint-2").is_dir()  # nothing half-published
    ok(cli(*common, "--resume"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"].endswith("checkpoint-2") and m["global_step"] == 12
    assert not partial.exists() and not (out / "checkpoints").exists()


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
