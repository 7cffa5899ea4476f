"""End to end: the installed console script on the bundled demo, quick settings.

One run (module fixture, a few minutes on 2 cores) is shared by all checks of its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bayesnqp import names
from bayesnqp.data.intake import demo_path

pytestmark = pytest.mark.e2e


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("bayesnqp")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bayesnqp"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    proc = _cli("run", "--quick", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = work / "reports" / "demo_panel"  # default: reports/<data set name> under the working folder
    assert out.is_dir(), proc.stdout
    return out


def test_outputs_exist_and_say_synthetic(demo_run):
    html = (demo_run / "index.html").read_text(encoding="utf-8")
    assert html.count(names.SYNTHETIC_BANNER) >= 2
    for fragment in ("Table 2", "Entropy weights", "Table 3", "Table 4", "Median splits", "Moran",
                     "admissible", "Agreement"):
        assert fragment in html, fragment
    for folder in ("tables", "figures", "fits"):
        assert any((demo_run / folder).iterdir()), folder
    assert (demo_run / "tables" / "table3.tex").read_text().count("agglomeration") >= 1
    assert list((demo_run / "fits").glob("bayes_table3_col4.nc"))


def test_summary_data_block_and_descriptives(demo_run):
    s = json.loads((demo_run / "summary.json").read_text(encoding="utf-8"))
    assert s["data"]["synthetic"] is True
    assert s["data"]["n_cities"] == 280 and s["data"]["n_obs"] == 2800
    assert s["data"]["years"] == list(range(2013, 2023))
    assert abs(sum(s["index_weights"].values()) - 1) < 1e-12 and len(s["index_weights"]) == 16
    d = s["descriptives"]
    for var in ("nqp", "agglomeration"):
        assert abs(d[var]["mean"] / d[var]["paper_mean"] - 1) < 0.2
        assert abs(d[var]["sd"] / d[var]["paper_sd"] - 1) < 0.2
        assert d[var]["skew"] > 1
    assert s["failed"] == {}, s["failed"]


def test_frequentist_ids_and_the_papers_signs(demo_run):
    a = json.loads((demo_run / "summary.json").read_text(encoding="utf-8"))["analyses"]
    for key in ("table3_col1", "table3_col2", "table3_col3", "table3_col4", "iv_2sls", "iv_2sls_trend",
                "konfound", "robustness_winsorised", "robustness_no_municipalities", "robustness_lagged",
                "robustness_driscoll_kraay", "moran_agglomeration", "sdm_ml"):
        assert key in a, key
        for field in ("estimate", "std_error", "p_value", "ci", "n"):
            assert field in a[key], (key, field)
    col4 = a["table3_col4"]
    assert 0.007 < col4["estimate"] < 0.013 and col4["p_value"] < 0.01
    for ind in names.MECHANISM_INDICATORS:
        assert a[f"table4_{ind}"]["estimate"] > 0, ind
    assert a["sdm_ml"]["terms"]["W_agglomeration"]["estimate"] < 0
    assert a["iv_2sls_trend"]["extra"]["first_stage_F"] > 10


def test_bayesian_col4_matches_two_way_fe(demo_run):
    """The iid rebuild sits on the two-way FE estimate; the structured-error headline is held against the
    same oracle but not meant to match it (it weights cities by the modelled error covariance)."""
    a = json.loads((demo_run / "summary.json").read_text(encoding="utf-8"))["analyses"]
    agree = a["bayes_table3_col4_iid"]["agreement"]
    assert agree["oracle"] == "table3_col4" and agree["meant_to_match"] is True
    assert abs(agree["terms"]["agglomeration"]["z"]) <= 0.1
    headline = a["bayes_table3_col4"]["agreement"]
    assert headline["oracle"] == "table3_col4" and headline["meant_to_match"] is False
    assert "sd_ratio" in headline["terms"]["agglomeration"]
    assert "diagnostics" in a["bayes_table3_col4"] and "diagnostics" in a["bayes_table3_col4_iid"]


def test_demo_data_command_reproduces_the_bundled_demo(tmp_path):
    proc = _cli("demo-data", "--out", str(tmp_path / "again.csv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fresh = pd.read_csv(tmp_path / "again.csv", dtype={"city": str})
    bundled = pd.read_csv(demo_path(), dtype={"city": str})
    pd.testing.assert_frame_equal(fresh, bundled, rtol=1e-7)  # last-digit libm differences
    assert json.loads((tmp_path / "truth.json").read_text())["seed"] == 20130101


def test_help_of_every_command_is_useful(tmp_path):
    for args, fragment in ((["--help"], "bayesnqp run"), (["run", "--help"], "--quick"),
                           (["validate", "--help"], "every problem"), (["demo-data", "--help"], "truth")):
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 0 and fragment in " ".join(proc.stdout.split()), (args, proc.stdout)


def test_a_regenerated_demo_is_still_marked_synthetic(tmp_path):
    from bayesnqp.config import StudyConfig
    from bayesnqp.data.intake import load_study
    from bayesnqp.demo import write_demo

    write_demo(tmp_path / "mine.csv")
    assert load_study(tmp_path / "mine.csv", StudyConfig()).synthetic is True
    (tmp_path / "truth.json").unlink()
    assert load_study(tmp_path / "mine.csv", StudyConfig()).synthetic is False
