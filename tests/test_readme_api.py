"""The README's Python API block runs as written (so it cannot rot), and importing the package leaves
Matplotlib's backend alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MARKER = "<!-- readme-api-test"


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, "the README marks exactly one Python API block"
    match = re.search(re.escape(MARKER) + r"[^\n]*\n```python\n(.*?)\n```", text[text.index(MARKER):], re.S)
    assert match, "the marker is followed by a ```python block"
    return match.group(1)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_the_readme_block_is_found_and_uses_the_public_api():
    code = readme_block()
    assert code.startswith("import bayesnqp as bn")
    compile(code, "README.md", "exec")
    for name in re.findall(r"\bbn\.(\w+)", code):
        import bayesnqp

        assert name in bayesnqp.__all__, f"README uses bn.{name}, which bayesnqp does not export"


@pytest.mark.recovery
def test_the_readme_python_block_runs(tmp_path):
    """Fits column (4) on the demo with few draws (two models: the headline and its iid rebuild) and
    writes the report under the working folder."""
    env = _env(MPLBACKEND="pdf", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", readme_block() + "\nimport matplotlib\nprint('backend', "
                           "matplotlib.get_backend())\n"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert out.count("agglomeration") >= 4, out  # two tidy rows, the etable row, the agreement row
    assert "94% HDI" in out and "95% CI" in out
    assert "| two-way FE" in out and "Bayesian (4)" in out and "iid rebuild" in out
    assert "INFO:pymc" not in done.stderr  # the run's own progress lines, not PyMC's forward-sampling log
    assert "backend pdf" in out  # the run drew its figures off-screen and gave the backend back
    report = tmp_path / "reports" / "api_demo"
    assert (report / "index.html").is_file() and (report / "fits" / "bayes_table3_col4.nc").is_file()
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]


IMPORT_ALL = r"""
import importlib, pkgutil, sys
import matplotlib
raw = lambda: dict.__getitem__(matplotlib.rcParams, "backend")
before = raw()
import bayesnqp
assert raw() is before or raw() == before, ("bayesnqp", before, raw())
skip = tuple(sys.argv[1:])
mods = [m.name for m in pkgutil.walk_packages(bayesnqp.__path__, "bayesnqp.")]
assert len(mods) > 30, mods
changed = []
for name in mods:
    if name.startswith(skip) or name.endswith("__main__"):
        continue
    importlib.import_module(name)
    if not (raw() is before or raw() == before):
        changed.append(name)
        break
import bayesnqp as bn
bn.run, bn.load_study, bn.fit, bn.etable, bn.StudyResults  # the lazy API imports without switching
assert raw() is before or raw() == before, ("api", before, raw())
print("changed:", changed)
"""


@pytest.mark.parametrize("backend", ["pdf", None])
def test_importing_bayesnqp_and_its_modules_leaves_the_backend_alone(backend):
    """With a backend preset (pdf) and with none (Matplotlib's automatic choice, which must stay
    unresolved): no module of the package selects a backend at import, and neither does the lazy API
    (every figure is a matplotlib.figure.Figure, drawn without pyplot)."""
    env = _env(**({"MPLBACKEND": backend} if backend else {}))
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "changed: []" in done.stdout, done.stdout
