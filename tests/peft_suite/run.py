"""Run PEFT's own FourierFT tests against fourierft: ``python tests/peft_suite/run.py SDIST_DIR [pytest args]``.

``SDIST_DIR`` holds ``peft-<version>.tar.gz`` as ``pip download --no-deps --no-binary :all: peft==<version>``
writes it, for the installed peft version. The sdist's ``tests/`` folder is unpacked into a temporary folder, left
unchanged except for the ``__init__.py`` the sdist lacks (its modules use relative imports), and run with
:mod:`plugin` loaded. Selection: the FourierFT cases of ``test_custom_models.py`` and ``test_config.py``.
Prints pytest's report; the exit code is pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import peft

HERE = Path(__file__).resolve().parent
FILES = ("tests/test_custom_models.py", "tests/test_config.py")
SELECTION = "fourierft or FourierFT"


def unpack(sdist_dir: Path, into: Path) -> Path:
    """The sdist's ``tests/`` folder under ``into``; raises ``FileNotFoundError`` if the sdist is absent."""
    archive = sdist_dir / f"peft-{peft.__version__}.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} not found: pip download --no-deps --no-binary :all: "
                                f"peft=={peft.__version__} -d {sdist_dir}")
    root = f"peft-{peft.__version__}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(root) and m.isfile()]
        tar.extractall(into, members=members, filter="data")
    tests = into / f"peft-{peft.__version__}" / "tests"
    (tests / "__init__.py").touch()
    return tests.parent


def main(argv: list[str]) -> int:
    sdist_dir, extra = Path(argv[0]), argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(sdist_dir, Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "pytest", "-p", "plugin", "-p", "no:cacheprovider", "-q", "-rfE",
               "--rootdir", str(root), "-k", SELECTION, *FILES, *extra]
        return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
