"""The GPU benchmarks' record-keeping, fed hand-made runs on the CPU (their measuring parts need GPUs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repo root on sys.path; ``python -m pytest`` does
    sys.path.insert(0, str(ROOT))

from bench import common, distributed, results  # noqa: E402


def test_distributed_compare_records_differences_against_the_first_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    delta = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    losses = [10.0] * 10
    runs = {
        "single": {"mode": "single", "gpus": 1, "global_batch": 16, "step_ms": 200.04, "tokens_per_s": 81903.6,
                   "peak_gib_per_gpu": 17.254, "losses": losses, "delta": delta, "card": "GPU"},
        "half": {"mode": "single", "gpus": 1, "global_batch": 8, "step_ms": 100.0, "tokens_per_s": 81920.0,
                 "peak_gib_per_gpu": 9.3, "losses": [9.0] * 10, "delta": delta * 2, "card": "GPU"},
        # loss 10.001 at step 3: 1e-4 relative; dW off by 0.05 in one entry: 0.05 / 5 = 1e-2 relative
        "ddp": {"mode": "ddp", "gpus": 2, "global_batch": 16, "step_ms": 120.0, "tokens_per_s": 136533.3,
                "peak_gib_per_gpu": 9.32, "losses": [10.0, 10.0, 10.0, 10.001, *[10.0] * 6],
                "delta": delta + torch.tensor([[0.05, 0.0], [0.0, 0.0]]), "card": "GPU"},
    }
    paths = []
    for name, record in runs.items():
        paths.append(tmp_path / f"{name}.pt")
        torch.save(record, paths[-1])
    distributed.compare([str(p) for p in paths], "B=16 bash bench/multi_gpu_run.sh")
    printed = capsys.readouterr().out
    assert "| ddp | 2 | 16 | 120.0 | 136,533 | 9.32 | 1.00e-04 | 1.00e-02 |" in printed
    assert "| single | 1 | 8 | 100.0 | 81,920 | 9.30 | - | - |" in printed
    (written,) = (tmp_path / "results").glob("distributed-*.json")
    record = results.load_results(written)
    assert record["command"] == "B=16 bash bench/multi_gpu_run.sh"
    single, half, ddp = record["rows"]
    assert single == {"run": "single", "gpus": 1, "global_batch": 16, "step_ms": 200.0, "tokens_per_s": 81904,
                      "peak_gib_per_gpu": 17.25, "max_rel_loss_diff_vs_1gpu": 0.0, "dw_rel_diff": 0.0,
                      "loss_every_5th_step": "10.000 10.000"}
    assert half["max_rel_loss_diff_vs_1gpu"] is None and half["dw_rel_diff"] is None  # another batch: not compared
    assert ddp["max_rel_loss_diff_vs_1gpu"] == 1e-4 and ddp["dw_rel_diff"] == 1e-2


def test_host_cost_writes_one_row_per_variant_and_mode(tmp_path, monkeypatch, capsys):
    from bench import host_cost

    out = tmp_path / "host_cost.json"
    argv = ["host_cost.py", "--shape", "24x16", "--n", "10", "--tokens", "2", "--calls", "2", "--repeats", "1",
            "--variants", "floor,peft-lora,ours-factored", "--results", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    host_cost.main()
    assert "| ours-factored |" in capsys.readouterr().out
    rows = results.load_results(out)["rows"]
    assert [(r["mode"], r["variant"]) for r in rows] == [
        (m, v) for m in ("train", "infer") for v in ("floor", "peft-lora", "ours-factored")]
    for r in rows:
        assert r["us_per_call"] > 0 and r["shape"] == "24x16" and r["tokens"] == 2
        floor = next(f for f in rows if f["mode"] == r["mode"] and f["variant"] == "floor")
        assert r["x_floor"] == r["us_per_call"] / floor["us_per_call"]
    # by hand: the frozen layer infers with one matmul; it trains with it, the loss's sum, the seed gradient
    # (ones) and the input gradient's matmul
    assert [r["ops_per_call"] for r in rows if r["variant"] == "floor"] == [4, 1]


def test_host_ab_times_this_checkout_against_another(tmp_path):
    # a process of its own, as it is meant to run: loading a second copy of the package replaces the first's custom
    # ops and PEFT registrations process-wide
    import subprocess

    out = tmp_path / "host_ab.json"
    cmd = [sys.executable, str(ROOT / "bench" / "host_ab.py"), "--other", str(ROOT), "--shape", "24x16", "--n", "10",
           "--tokens", "2", "--calls", "2", "--rounds", "2", "--modes", "train,infer,mixed", "--adapters", "3",
           "--results", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ours-factored: this / other = " in done.stdout
    rows = results.load_results(out)["rows"]
    assert [(r["mode"], r["variant"], r["code"]) for r in rows] == [
        (m, v, c) for m in ("train", "infer", "mixed")
        for v, c in (("floor", None), ("peft-lora", None), ("ours-factored", "this"), ("ours-factored", "other"))]
    assert {(r["mode"], r["rows"], r["adapters"]) for r in rows} == {("train", 1, 1), ("infer", 1, 1), ("mixed", 6, 3)}
    for r in rows:
        floor = next(f for f in rows if f["mode"] == r["mode"] and f["variant"] == "floor")
        assert r["us_median"] > 0 and r["us_min"] <= r["us_median"]
        assert r["x_floor"] == r["us_median"] / floor["us_median"]


def test_host_ab_refuses_a_folder_without_fourierft(tmp_path):
    import pytest

    from bench import host_ab

    with pytest.raises(SystemExit, match="no fourierft/__init__.py"):
        host_ab.load_other(tmp_path)


@pytest.mark.parametrize("generate", [0, 3], ids=["prefill", "generate"])
def test_mixed_batch_model_level_times_ours_beside_lora_and_the_frozen_model(tmp_path, monkeypatch, capsys,
                                                                             generate):
    from bench import mixed_batch

    out = tmp_path / "mixed_batch.json"
    argv = ["mixed_batch.py", "--hidden", "32", "--layers", "1", "--n", "16", "--rows", "4", "--seq", "3",
            "--counts", "1", "2", "--repeats", "1", "--shared", "--generate", str(generate), "--results", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    mixed_batch.main()
    assert "| 2 |" in capsys.readouterr().out
    rows = results.load_results(out)["rows"]
    assert [(r["k"], r["mode"]) for r in rows] == [(k, f"generate {generate}" if generate else "prefill")
                                                   for k in (1, 2)]
    for r in rows:
        assert r["base_ms"] > 0 and r["peft_lora_mixed_ms"] > 0 and r["shared_entries"] is True
        assert r["mixed_x_base"] == r["ours_mixed_ms"] / r["base_ms"]
        assert r["lora_over_ours_mixed"] == r["peft_lora_mixed_ms"] / r["ours_mixed_ms"]
        assert (r["ours_serial_ms"] is None) == bool(generate)  # one adapter at a time: prefill only
        assert (r["ours_step_ms"] is None) == (not generate)  # one decoding step: generate only
    assert rows[0]["mixed_over_k1"] == 1.0
    if generate:  # the step is (t(T) - t(1)) / (T - 1); its ratio to K = 1's is over the same K = 1 row
        assert rows[0]["ours_step_over_k1"] == 1.0
        assert rows[1]["ours_step_over_k1"] == rows[1]["ours_step_ms"] / rows[0]["ours_step_ms"]
        assert rows[0]["base_step_ms"] == rows[1]["base_step_ms"]


def test_stage1_ab_times_each_stage1_choice_beside_the_floor(tmp_path, monkeypatch, capsys):
    from bench import stage1_ab
    from fourierft.kernels import blockmm as bm, factored

    seen = []
    real = bm.blockmm

    def spy(*args, kernel=True, **kw):
        seen.append(kernel)
        return real(*args, kernel=kernel, **kw)

    monkeypatch.setattr(bm, "blockmm", spy)
    monkeypatch.setattr(factored, "blockmm", spy)  # the shipped variant calls it through factored's import

    def tiny_bert(case):  # the cpu case's model, a size that keeps seven builds quick
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=64))
        ids = torch.randint(0, 50, (2, 8))
        return model.requires_grad_(False), {"input_ids": ids, "labels": torch.randint(0, 2, (2,))}

    monkeypatch.setattr(common, "build_base", tiny_bert)
    out = tmp_path / "stage1_ab.json"
    monkeypatch.setattr(sys, "argv", ["stage1_ab.py", "--case", "cpu", "--targets", "qv", "--modes", "train",
                                      "--rounds", "2", "--steps", "1", "--results", str(out)])
    stage1_ab.main()
    assert "medians" in capsys.readouterr().out
    rows = results.load_results(out)["rows"]
    assert [(r["variant"], r["round"]) for r in rows] == [("floor", 0), ("shipped", 1), ("kernel", 1), ("cublas", 1),
                                                        ("cublas", 2), ("kernel", 2), ("shipped", 2)]
    assert all(r["ms"] > 0 and r["host_ms"] > 0 and r["x_floor"] == r["ms"] / rows[0]["ms"] for r in rows)
    assert factored.blockmm is spy  # put back after each variant
    assert True in seen and False in seen  # the forced variants reached stage 1 both ways
