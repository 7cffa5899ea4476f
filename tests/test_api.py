"""The Python API without MCMC: selection of analyses, tidy() with one set of columns for both kinds of
result, etable, and run -> write with nothing left behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from conftest import swallowed_interrupt_stages

import bayesnqp as bn
from bayesnqp.bayes.result import BayesResult
from bayesnqp.checks.diagnostics import diagnose, posterior_summary
from bayesnqp.results import TIDY_COLUMNS, AnalysisResult, coef_frame
from bayesnqp.stages.bayesian import stage_bayes_panel
from bayesnqp.stages.frequentist import stage_frequentist
from bayesnqp.stages.spatial import stage_spatial_bayes, stage_spatial_frequentist
from bayesnqp.study import Selection


def test_selection_runs_the_producing_step_and_the_oracle_it_is_compared_with():
    sel = Selection.of(["bayes_table3_col4"])
    assert sel.wants("bayes_table3") and sel.wants("table3") and sel.wants("table3_bootstrap")
    assert sel.wants("bayes_table3_col4_prior_sensitivity")
    assert not sel.wants("bayes_re") and not sel.wants("iv_2sls") and not sel.wants("bayes_likelihoods")
    assert [c for c in (1, 2, 3, 4) if sel.wants(f"bayes_table3_col{c}")] == [4]
    assert sel.runs_stage(stage_frequentist) and sel.runs_stage(stage_bayes_panel)
    assert not sel.runs_stage(stage_spatial_frequentist) and not sel.runs_stage(stage_spatial_bayes)


def test_selection_by_summary_ids_of_families_and_checks():
    assert Selection.of("hetero_marketization").wants("heterogeneity")
    assert Selection.of(["sar_ml"]).wants("sdm_ml") and not Selection.of(["sar_ml"]).wants("table3")
    bayes_groups = Selection.of(["bayes_groups"])
    assert bayes_groups.wants("heterogeneity") and not bayes_groups.wants("table3")
    ppc = Selection.of(["ppc_moran"])  # reads the spatial fits and the two-way fit, so those run
    assert all(ppc.wants(x) for x in ("bayes_car", "bayes_sdm", "sdm_ml", "bayes_table3", "table3"))
    everything = Selection.of(None)
    assert everything.wants("anything") and everything.runs_stage(stage_spatial_bayes)
    with pytest.raises(ValueError):
        Selection.of([])


def _bayes_result() -> BayesResult:
    rng = np.random.default_rng(0)
    coefs = ["agglomeration", "develop"]
    post = {"beta": rng.normal([0.01, 0.004], 0.001, size=(2, 300, 2)), "sigma": rng.gamma(50, 0.001, (2, 300))}
    idata = az.from_dict(posterior=post, coords={"coef": coefs}, dims={"beta": ["coef"]})
    summary = posterior_summary(idata, ["beta", "sigma"])
    return BayesResult(id="bayes_x", title="x", idata=idata, summary=summary,
                       diagnostics=diagnose(idata, ["beta", "sigma"]))


def _oracle() -> AnalysisResult:
    coefs = coef_frame(["agglomeration", "develop", "constant"], [0.0098, 0.004, 0.1], [0.002, 0.001, 0.01],
                       [4.9, 4.0, 10.0], [0.0, 0.0, 0.0], [0.0058, 0.002, 0.08], [0.0138, 0.006, 0.12])
    return AnalysisResult(id="table3_col4", title="two-way FE", coefs=coefs, n_obs=2800, se_type="cluster")


def test_tidy_has_the_same_columns_for_both_kinds_and_names_coefficients_alike():
    b, f = _bayes_result().tidy(), _oracle().tidy()
    assert list(b.columns) == list(f.columns) == list(TIDY_COLUMNS)
    assert b.index.name == f.index.name == "Coefficient"
    assert {"agglomeration", "develop", "sigma"} == set(b.index)
    row = b.loc["agglomeration"]
    assert row["interval"] == "94% HDI" and np.isnan(row["t value"]) and row["r_hat"] < 1.05
    assert row["conf_low"] < row["Estimate"] < row["conf_high"]
    assert abs(row["Estimate"] - 0.01) < 0.001
    assert f.loc["agglomeration", "interval"] == "95% CI" and np.isnan(f.loc["agglomeration", "r_hat"])
    assert f.loc["agglomeration", "Estimate"] == 0.0098 and f.loc["agglomeration", "Pr(>|t|)"] == 0.0
    assert _oracle().idata is None and _oracle().agreement is None and _oracle().diagnostics is None


def test_etable_side_by_side_in_three_forms():
    results = {"FE": _oracle(), "Bayes": _bayes_result()}
    table = bn.etable(results)
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["FE", "Bayes"]
    assert list(table.index[:2]) == ["agglomeration", "develop"]
    assert table.loc["agglomeration", "FE"] == "0.0098 (0.0020)"
    assert table.loc["constant", "Bayes"] == "" and table.loc["interval", "Bayes"] == "94% HDI"
    assert table.loc["N / draws", "FE"] == "2800" and table.loc["N / draws", "Bayes"] == "2 x 300"
    assert list(table.index).index("constant") > list(table.index).index("sigma")  # the intercept last
    md = bn.etable(results, type="md")
    assert "| agglomeration" in md and "0.0098 (0.0020)" in md
    tex = bn.etable(list(results.values()), type="tex", terms=["agglomeration"])
    assert "\\begin{tabular}" in tex and "table3\\_col4" in tex and "develop" not in tex
    with pytest.raises(ValueError):
        bn.etable(results, type="html")  # type: ignore[arg-type]


def _leftovers() -> list[Path]:
    """This process's API build folders (other processes, e.g. a parallel test run, have their own)."""
    return [p for p in Path(tempfile.gettempdir()).glob(f"bayesnqp-run-{os.getpid()}-results-*")]


def test_run_holds_results_in_memory_and_write_publishes_them(tmp_path, raw_csv):
    before = set(_leftovers())
    study = bn.load_study(raw_csv())
    messages: list[str] = []
    res = bn.run(study, bayes=False, only=["table3"], progress=messages.append)
    assert set(res) == {"table3_col1", "table3_col2", "table3_col3", "table3_col4"} == set(res.oracles)
    assert res.oracle("table3_col4") is res["table3_col4"]
    assert "  table3" in messages and not any("iv_2sls" in m or "robustness" in m for m in messages)
    assert res.summary["settings"]["only"] == ["table3"] and "iv_2sls" not in res.summary["analyses"]
    with pytest.raises(KeyError, match="iv_2sls"):
        res.oracle("iv_2sls")
    assert not (tmp_path / "out").exists()
    out = res.write(tmp_path / "out")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analyses"]["table3_col4"]["estimate"] == pytest.approx(
        res.oracle("table3_col4").tidy().loc["agglomeration", "Estimate"])
    assert (out / "index.html").is_file() and (out / "tables" / "table3.csv").is_file()
    res.write(tmp_path / "out")  # again: replaced in place, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    res.close()
    assert set(_leftovers()) == before
    with pytest.raises(RuntimeError):
        res.write(tmp_path / "again")


def test_fit_returns_one_frequentist_result_and_run_rejects_bad_settings(raw_csv):
    study = bn.load_study(raw_csv())
    col4 = bn.fit(study, "table3_col4", progress=False)
    assert isinstance(col4, AnalysisResult) and col4.id == "table3_col4"
    with pytest.raises(KeyError, match="not produced"):
        bn.fit(study, "table3_col9", progress=False)
    with pytest.raises(ValueError):
        bn.run(study, sampler="stan", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bn.run(study, draws=0, bayes=False, progress=False)


def test_fit_reports_a_failed_analysis_with_its_message(raw_csv, monkeypatch):
    import bayesnqp.study as study

    def broken(ctx):
        ctx.guarded("bayes_broken", lambda: 1 / 0)

    monkeypatch.setattr(study, "STAGES", [study.STAGES[0], ("broken", broken)])
    with pytest.raises(RuntimeError, match="bayes_broken: ZeroDivisionError"):
        bn.fit(bn.load_study(raw_csv()), "bayes_broken", progress=False)


def test_an_interrupt_swallowed_by_a_library_stops_an_api_run_without_ending_the_process(raw_csv, monkeypatch,
                                                                                      default_sigint):
    """In a notebook: the run stops at the next step with KeyboardInterrupt, its build folder is gone and
    the signal handler is the notebook's again."""
    import signal

    import bayesnqp.study as study

    stages, reached = swallowed_interrupt_stages(study)
    monkeypatch.setattr(study, "STAGES", stages)
    before, handler = set(_leftovers()), signal.getsignal(signal.SIGINT)
    study_data = bn.load_study(raw_csv())
    with pytest.raises(KeyboardInterrupt):
        bn.run(study_data, bayes=False, progress=False)
    assert not reached and set(_leftovers()) == before
    assert signal.getsignal(signal.SIGINT) is handler
