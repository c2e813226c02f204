"""PEFT's own FourierFT tests, unchanged, against fourierft (the peft sdist's tests/, see run.py and plugin.py).

The sdist is fetched by the README's test command (``pip download --no-deps --no-binary :all: peft==<version>
-d .peft-sdist``); without it this test is skipped with that command as the reason.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import peft
import pytest

REPO = Path(__file__).resolve().parents[2]
SDIST = REPO / ".peft-sdist"
# Tests of the selection that fail with PEFT itself here too: they fetch peft-internal-testing/tiny-opt-lora-revision
# from the Hub, and the suite runs offline (docs/peft-suite.md).
NEEDS_NETWORK = {
    "tests.test_config.TestPeftConfig::test_from_pretrained[FourierFTConfig-mandatory_kwargs7]",
    "tests.test_config.TestPeftConfig::test_from_pretrained_cache_dir[FourierFTConfig-mandatory_kwargs7]",
    "tests.test_config.TestPeftConfig::test_save_pretrained_with_runtime_config[FourierFTConfig-mandatory_kwargs7]",
}
MIN_PASSED = 345 + 26  # of test_custom_models' 349 that pass with PEFT, and test_config's 26 offline cases


def _outcomes(report: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        out[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return out


def test_peft_fourierft_suite_passes_on_our_layers(tmp_path):
    if not (SDIST / f"peft-{peft.__version__}.tar.gz").is_file():
        pytest.skip(f"no peft sdist: pip download --no-deps --no-binary :all: peft=={peft.__version__} -d {SDIST}")
    report = tmp_path / "report.xml"
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("run.py")), str(SDIST),
                          f"--junitxml={report}", "-p", "no:warnings"], capture_output=True, text=True)
    assert report.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    outcomes = _outcomes(report)
    failed = {name for name, kind in outcomes.items() if kind == "failed"}
    passed = sum(kind == "passed" for kind in outcomes.values())
    assert failed <= NEEDS_NETWORK, f"PEFT's tests failing on fourierft: {sorted(failed - NEEDS_NETWORK)}"
    assert passed >= MIN_PASSED, f"only {passed} of PEFT's FourierFT tests passed"
