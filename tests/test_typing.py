"""mypy on src/ with the configuration in pyproject.toml ([tool.mypy]); any error fails the test.

The cache lives in the checkout's ``.mypy_cache`` (ignored by git), so a second run takes seconds; a cold
one about half a minute on two cores. Under CI (CI=true) a missing mypy fails; elsewhere it skips.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_the_package():
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed (it is in the test extra)")
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "mypy", "src/bayesnqp"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "MYPY_FORCE_COLOR": "0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
