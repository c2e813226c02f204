"""Benchmarks as data: the results files, their writer and the generated docs/benchmarks.md.

No GPU, no network: everything here reads or writes small JSON and markdown files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repo root on sys.path; ``python -m pytest`` does
    sys.path.insert(0, str(ROOT))

from bench import quality, report, results  # noqa: E402

RESULT_FILES = sorted(results.RESULTS_DIR.glob("*.json"))


def test_doc_is_up_to_date():
    expected = report.render()
    assert report.DOC.read_text() == expected, "docs/benchmarks.md is out of date: run python bench/report.py"


def test_check_mode_reports_a_stale_doc(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(report, "DOC", doc)
    assert report.main(["--check"]) == 1  # missing
    doc.write_text(report.render() + "edited by hand\n")
    assert report.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "out of date" in err and "python bench/report.py" in err  # one line per call
    assert report.main([]) == 0
    assert doc.read_text() == report.render()
    assert report.main(["--check"]) == 0


def test_there_are_results():
    assert len(RESULT_FILES) >= 20  # the converted rounds at least


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_results_file_loads_with_one_set_of_columns(path):
    record = results.load_results(path)
    assert path.name.startswith(record["benchmark"] + "-")
    assert dt.datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ")
    assert isinstance(record["machine"], str) and record["machine"]
    assert isinstance(record["command"], str) and record["command"]
    assert record["versions"] and all(isinstance(v, str) for v in record["versions"].values())
    keys = list(record["rows"][0])
    assert keys and all(list(row) == keys for row in record["rows"])
    assert all(isinstance(v, (str, int, float, bool, type(None))) for row in record["rows"] for v in row.values())


def test_write_results_refuses_mismatched_columns(tmp_path):
    out = tmp_path / "bad.json"
    for rows in ([{"a": 1, "b": 2}, {"a": 1, "c": 2}],  # other key
                 [{"a": 1, "b": 2}, {"b": 2, "a": 1}],  # other order
                 [{"a": 1}, {"a": 1, "b": 2}],  # extra key
                 [{"a": 1, "b": [1, 2]}],  # not flat
                 []):
        with pytest.raises(ValueError, match="bench_x"):
            results.write_results("bench_x", rows, command="cmd", out=out)
    assert list(tmp_path.iterdir()) == []


def test_write_results_writes_the_schema_atomically(tmp_path):
    out = tmp_path / "run.json"
    rows = [{"variant": "a", "ms": 1.5}, {"variant": "b", "ms": 3.0}]
    assert results.write_results("bench_x", rows, command="python bench/x.py", out=out, note="n") == out
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no .tmp left beside it
    record = results.load_results(out)
    assert record["rows"] == rows and record["benchmark"] == "bench_x" and record["command"] == "python bench/x.py"
    assert record["note"] == "n" and record["schema"] == results.SCHEMA
    assert record["versions"]["python"] and record["machine"]
    assert dt.datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ")


def test_a_failed_write_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    out = tmp_path / "run.json"
    results.write_results("bench_x", [{"a": 1}], command="first", out=out)
    before = out.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        results.write_results("bench_x", [{"a": 2}], command="second", out=out)
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_default_names_do_not_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    date = "2026-01-02T03:04:05Z"
    first = results.write_results("bench_x", [{"a": 1}], command="c", date=date)
    second = results.write_results("bench_x", [{"a": 2}], command="c", date=date)
    assert first.name == "bench_x-20260102T030405Z.json" and second.name == "bench_x-20260102T030405Z-2.json"
    assert results.load_results(first)["rows"] == [{"a": 1}] and results.load_results(second)["rows"] == [{"a": 2}]


def test_load_results_refuses_bad_files(tmp_path):
    good = {"schema": 1, "benchmark": "b", "date": "2026-01-01T00:00:00Z", "machine": "m", "versions": {},
            "command": "c", "rows": [{"a": 1}]}
    cases = {"schema": ({**good, "schema": 2}, "schema 2"),
             "missing": ({k: v for k, v in good.items() if k != "machine"}, "missing"),
             "columns": ({**good, "rows": [{"a": 1}, {"b": 1}]}, "columns")}
    for name, (record, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=message):
            results.load_results(path)


def _record(benchmark, date, machine, versions, command, rows, note=None):
    out = {"schema": 1, "benchmark": benchmark, "date": date, "machine": machine, "versions": versions,
           "command": command, "rows": rows}
    if note:
        out["note"] = note
    return out


def test_hand_made_results_render_into_the_expected_page(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    text = tmp_path / "text.md"
    text.write_text("# Title\n\nIntro line.\n\n<!-- benchmark: speed -->\n## Speed\n\nSpeed prose.\n\n"
                    "<!-- benchmark: empty -->\n## Empty\n\nNothing yet.\n")
    newest = _record("speed", "2026-01-02T03:04:05Z", "GPU X", {"torch": "2.0"}, "python bench/speed.py --n 3",
                     [{"variant": "a|b", "ms": 1.5, "ratio": 0.123456789, "trainable": 12345, "ok": True,
                       "peak": None},
                      {"variant": "c", "ms": 10.0, "ratio": 1e-07, "trainable": 0, "ok": False, "peak": 2.25}],
                     note="Two variants.")
    older = _record("speed", "2025-12-31T00:00:00Z", "CPU", {}, "old <x>", [{"variant": "a", "ms": 2.0}])
    other = _record("other", "2026-02-01T00:00:00Z", "M", {"python": "unknown"}, "x", [{"x": 1}])
    for name, record in {"speed-a.json": newest, "speed-b.json": older, "other-1.json": other}.items():
        (res / name).write_text(json.dumps(record))
    assert report.render(res, text).splitlines() == [
        report.GENERATED,
        "",
        "# Title",
        "",
        "Intro line.",
        "",
        "## Speed",
        "",
        "Speed prose.",
        "",
        "### 2026-01-02 03:04:05 UTC · GPU X",
        "",
        "Command: `python bench/speed.py --n 3`",
        "",
        "Versions: torch 2.0. Data: [`bench/results/speed-a.json`](../bench/results/speed-a.json).",
        "",
        "Two variants.",
        "",
        "| variant | ms | ratio | trainable | ok | peak |",
        "|---|---|---|---|---|---|",
        "| a\\|b | 1.5 | 0.1235 | 12,345 | yes | - |",
        "| c | 10.0 | 1e-07 | 0 | no | 2.25 |",
        "",
        "<details>",
        "<summary>2025-12-31 00:00:00 UTC · CPU · old &lt;x&gt;</summary>",
        "",
        "Command: `old <x>`",
        "",
        "Versions: unknown. Data: [`bench/results/speed-b.json`](../bench/results/speed-b.json).",
        "",
        "| variant | ms |",
        "|---|---|",
        "| a | 2.0 |",
        "",
        "</details>",
        "",
        "## Empty",
        "",
        "Nothing yet.",
        "",
        "No runs recorded.",
        "",
        "## other",
        "",
        "### 2026-02-01 00:00:00 UTC · M",
        "",
        "Command: `x`",
        "",
        "Versions: python unknown. Data: [`bench/results/other-1.json`](../bench/results/other-1.json).",
        "",
        "| x |",
        "|---|",
        "| 1 |",
    ]


def test_quality_runs_render_as_means_over_the_seeds_of_that_run(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    text = tmp_path / "text.md"
    text.write_text("# Q\n\n<!-- benchmark: quality -->\n## Quality\n")
    rows = [{"variant": "fft-n600", "seed": seed, "method": "fourierft", "adapter_params": 7200, "lr": 0.1,
             "epochs": 3, "val_pct": val, "test_pct": test, "s_per_epoch": s}
            for seed, val, test, s in ((42, 90.0, 80.0, 10.0), (43, 91.0, 81.0, 11.0), (44, 92.0, 82.0, 12.0))]
    rows.append({**rows[0], "variant": "lora", "method": "lora", "adapter_params": 73728, "lr": 0.0005,
                 "test_pct": 82.5})
    (res / "quality-1.json").write_text(json.dumps(_record("quality", "2026-01-01T00:00:00Z", "GPU", {}, "q", rows)))
    lines = report.render(res, text).splitlines()
    start = lines.index("| variant | method | adapter params | lr | epochs | test % (mean ± sd) | test % per seed | "
                        "seeds | val % (mean) | s/epoch |")
    # hand-computed: mean of 80, 81, 82 is 81, sample sd 1
    assert lines[start + 2:start + 6] == [
        "| fft-n600 | fourierft | 7,200 | 0.1 | 3 | 81.00 ± 1.00 | 80.0 / 81.0 / 82.0 | 42 / 43 / 44 | 91.0 | 11.0 |",
        "| lora | lora | 73,728 | 0.0005 | 3 | 82.50 | 82.5 | 42 | 90.0 | 10.0 |",
        "",
        "Means and sample standard deviations are over the seeds of this run only.",
    ]


def test_quality_collects_one_flat_row_per_training_run(tmp_path):
    for name, seed, test in (("fft-n600-zeros-s42", 42, 0.8025078369905956), ("lora-s43", 43, 0.82)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "method": "fourierft" if name.startswith("fft") else "lora", "seed": seed, "backend": "fourierft",
            "params": {"adapter": 7200, "head": 148610, "trainable": 155810, "total": 1},
            "before": {"test_accuracy": 0.5}, "after": {"val_accuracy": 0.81, "test_accuracy": test},
            "s_per_epoch": 25.2, "epochs": 3.0, "device": "cpu", "lr": 0.1, "head_lr": 0.006, "sizes": {},
            "group_by_length": True}))
    rows = quality.collect(tmp_path)
    results.check_rows("quality", rows)
    assert [(r["variant"], r["seed"], r["test_pct"], r["epochs"]) for r in rows] == [
        ("fft-n600-zeros", 42, 80.25, 3), ("lora", 43, 82.0, 3)]
    assert rows[0]["val_pct"] == 81.0 and rows[0]["test_before_pct"] == 50.0 and rows[0]["adapter_params"] == 7200
