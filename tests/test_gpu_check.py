"""benchmarks/gpu_check.sh runs where there is no GPU: CPU legs only, says so, exits 0 (tiny settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.recovery
def test_gpu_check_runs_without_a_gpu_and_reports_the_cpu_legs(tmp_path):
    require("jax", "the jax extra: the nutpie-jax sampler")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CITIES": "30", "YEARS": "5", "DRAWS": "50", "TUNE": "50", "CHAINS": "2",
           "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["CITIES"] == 30
    legs = result["legs"]
    assert {"nutpie-cpu", "nutpie-jax-cpu"} <= set(legs), legs.keys()
    for leg in ("nutpie-cpu", "nutpie-jax-cpu"):
        assert legs[leg]["rows"] == 150 and legs[leg]["sample_seconds"] > 0, legs[leg]
    if not result["gpu"]:
        assert result["gpu_note"].startswith(("no GPU", "nvidia-smi lists")) and "nutpie-jax-cuda" not in legs
