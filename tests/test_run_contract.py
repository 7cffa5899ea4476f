"""The run's contract, without MCMC: --strict turns flags into exit 3 with nothing written; a failing
analysis is recorded, not fatal; tables made from synthetic data say so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import bayesnqp.study as study
from bayesnqp.checks.flags import Flag
from bayesnqp.cli import EXIT_STRICT, app

runner = CliRunner()


def _flagging_stage(ctx):
    ctx.flag(Flag("bayes_demo_fit", "convergence", "Sampler diagnostics failed: r_hat 1.200 > 1.01."))


def _failing_stage(ctx):
    ctx.guarded("broken_analysis", lambda: 1 / 0)


@pytest.fixture
def only_data_stage(monkeypatch):
    def install(*extra):
        monkeypatch.setattr(study, "STAGES", [study.STAGES[0], *[(f.__name__, f) for f in extra]])

    return install


def test_strict_turns_a_flag_into_exit_3_and_writes_nothing(tmp_path, raw_csv, only_data_stage):
    only_data_stage(_flagging_stage)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(out), "--strict"])
    assert res.exit_code == EXIT_STRICT, res.output
    assert "r_hat 1.200" in res.output
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flagged"] == [{"id": "bayes_demo_fit", "kind": "convergence",
                                   "message": "Sampler diagnostics failed: r_hat 1.200 > 1.01."}]
    page = (out / "index.html").read_text()
    assert "1 flag(s) to review" in page and "Sampler diagnostics failed" in page


def test_a_failing_analysis_is_recorded_and_fails_only_under_strict(tmp_path, raw_csv, only_data_stage):
    only_data_stage(_failing_stage)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {"broken_analysis": "ZeroDivisionError: division by zero"}
    assert summary["flagged"] == [{"id": "broken_analysis", "kind": "failed",
                                   "message": "The analysis failed: ZeroDivisionError: division by zero"}]
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(tmp_path / "strict"), "--strict"])
    assert res.exit_code == EXIT_STRICT and not (tmp_path / "strict").exists()


def test_existing_output_is_replaced_only_on_success(tmp_path, raw_csv, only_data_stage):
    only_data_stage(_flagging_stage)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier run")
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(out), "--strict"])
    assert res.exit_code == EXIT_STRICT
    assert (out / "keep.txt").read_text() == "earlier run"


def test_exported_tables_of_synthetic_data_say_so(tmp_path, only_data_stage):
    only_data_stage()
    out = tmp_path / "demo"
    res = runner.invoke(app, ["run", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for suffix in (".md", ".tex"):
        assert "SYNTHETIC DEMO DATA" in (out / "tables" / f"table2_descriptives{suffix}").read_text()
    assert json.loads((out / "summary.json").read_text())["data"]["synthetic"] is True
