"""The overview box, flag records, number formatting and LaTeX escaping, without a run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from bayesnqp.report.html import ReportBuilder, tidy_text
from bayesnqp.report.labels import Labels
from bayesnqp.report.latex import LatexTable, escape, strip_table_number
from bayesnqp.report.numbers import format_frame
from bayesnqp.report.overview import admissibility_flag, append_flag, normalize_flag, overview_html
from bayesnqp.results import AnalysisResult, coef_frame


def _oracle() -> AnalysisResult:
    coefs = coef_frame(["agglomeration"], [0.0100], [0.0010], [10.0], [1e-6], [0.008], [0.012])
    return AnalysisResult(id="table3_col4", title="Table 3 (4)", coefs=coefs, n_obs=2800, se_type="cluster",
                          r2=0.3, fixed_effects=("city", "year"))


def _fit(agreement_columns: list[str], ok: bool = True):
    summary = pd.DataFrame({"mean": [0.0101], "sd": [0.0004], "ci_low": [0.0093], "ci_high": [0.0108],
                            "r_hat": [1.004], "ess_bulk": [1292.4], "ess_tail": [1100.0]},
                           index=["beta[agglomeration]"])
    full = pd.DataFrame({"estimate": [0.0100], "std_error": [0.0010], "post_mean": [0.0101], "post_sd": [0.0004],
                         "z": [0.1 * 0.1], "sd_ratio": [0.4], "bootstrap_sd": [0.0009]}, index=["agglomeration"])
    agreement = full[agreement_columns]
    agreement.attrs["oracle"] = "table3_col4"
    diag = SimpleNamespace(max_r_hat=1.004, min_ess_bulk=1292.4, min_ess_tail=1100.0, divergences=0,
                           min_bfmi=float("nan"), ok=ok, flags=() if ok else ("r_hat 1.02 > 1.01",))
    return SimpleNamespace(id="bayes_table3_col4", title="Two-way (Mundlak)", summary=summary, diagnostics=diag,
                           agreement=agreement, meant_to_match=True)


def _ctx(tmp_path, flagged, agreement_columns):
    report = ReportBuilder(tmp_path, title="t", synthetic=False, meta={})
    sec = report.section("bayes_table3", "Bayesian")
    report.text(sec, "Two-way (Mundlak) (bayes_table3_col4). Diagnostics: max r_hat 1.004")
    report.table(sec, "bayes_table3_col4_posterior", pd.DataFrame({"mean": [0.01]}, index=["beta[x]"]), "p")
    return SimpleNamespace(report=report, oracles={"table3_col4": _oracle()},
                           bayes={"bayes_table3_col4": _fit(agreement_columns)},
                           summary={"flagged": flagged, "failed": {}})


def test_overview_reads_structured_flags_and_links_them(tmp_path):
    flags = [{"id": "bayes_table3_col4", "kind": "sd_ratio", "message": "Posterior sd is 0.19x the clustered SE."},
             {"id": "bayes_likelihoods", "kind": "ppc", "message": "Normal likelihood fails skewness (p = 0.000)."}]
    ctx = _ctx(tmp_path, flags, ["estimate", "std_error", "post_mean", "post_sd", "z", "sd_ratio"])
    page = overview_html(ctx, bayes_ran=True, forest_img="")
    assert "0.0100 (0.00100)" in page and "0.0101 [0.00930, 0.0108]" in page and "0.40" in page
    assert "1 fits, max r&#770; 1.004, min bulk ESS 1292" in page and "BFMI not available" in page
    assert "Posterior sd vs SE flags (1)" in page and "Posterior predictive check flags (1)" in page
    assert 'href="#bayes_table3_col4"' in page  # the model block the flag comes from
    assert "estimates agree" in page and "2 other warning(s)" in page


def test_overview_tolerates_missing_columns_and_no_flags(tmp_path):
    ctx = _ctx(tmp_path, [], ["estimate", "std_error", "post_mean", "post_sd", "z"])
    page = overview_html(ctx, bayes_ran=True, forest_img="")
    assert "No flags" in page and "n/a" in page  # sd ratio unknown, shown as such
    nb = overview_html(_ctx(tmp_path / "nb", [], ["z"]), bayes_ran=False, forest_img="")
    assert "Bayesian stage not run" in nb


def test_flag_records():
    assert normalize_flag("bayes_x: r_hat 1.2 > 1.01") == {"id": "bayes_x", "kind": "convergence",
                                                            "message": "r_hat 1.2 > 1.01"}
    summary: dict = {"flagged": ["bayes_x: r_hat 1.2 > 1.01"]}
    weights = SimpleNamespace(rho_bounds=(-1.0, 1.0))
    rec = admissibility_flag(weights)
    assert rec is not None and rec["kind"] == "admissibility"
    append_flag(summary, rec)
    append_flag(summary, rec)  # once only
    assert len(summary["flagged"]) == 2
    assert admissibility_flag(SimpleNamespace(rho_bounds=(-3.0, 1.0))) is None


def test_numbers_print_as_a_reader_expects():
    frame = pd.DataFrame({"n": [4360.0, 2800.0], "ess_bulk": [10520.1216, 812.6], "r_hat": [1.00412, 1.01],
                          "mean": [6.844e-05, 0.0123], "p_value": [1e-9, 0.0412]})
    cells = format_frame(frame)
    assert cells["n"].tolist() == ["4360", "2800"]
    assert cells["ess_bulk"].tolist() == ["10520", "813"]
    assert cells["r_hat"].tolist() == ["1.004", "1.010"]
    assert cells.loc[0, "mean"] not in ("0.0000", "0.000", "0") and float(cells.loc[0, "mean"]) > 0
    assert cells["p_value"].tolist() == ["< 0.001", "0.041"]


def test_latex_text_is_safe_for_pdflatex():
    assert escape("* p < 0.1") == "* p $<$ 0.1"
    assert escape("0.0100***") == "0.0100$^{***}$"
    assert escape("浙江省 & 杭州市_x") == r"Zhejiang \& Hangzhou\_x"
    assert escape("r\u0302 \u2264 1.01") == r"$\hat{r}$ $\leq$ 1.01"
    assert strip_table_number("Table 3 - baseline") == "Baseline (the paper's Table 3)"
    tex = LatexTable("wide", "Wide", pd.DataFrame(np.zeros((3, 12)).astype(str)), note="x < 1").render()
    assert r"\resizebox" in tex and "x $<$ 1" in tex and r"\label{tab:wide}" in tex


def test_prose_is_plain():
    assert tidy_text("``beta`` (see options.mundlak), min BFMI nan") == \
        "beta (see the model specification's 'mundlak' setting), BFMI not available"
    lab = Labels(unit="person", units="people", outcome="wage", treatment="training", paper=False)
    assert lab.text("city effects raise NQP in 280 cities") == "person effects raise wage in 280 people"


def test_a_figure_made_without_pyplot_is_saved_with_its_banner(tmp_path):
    from matplotlib.figure import Figure

    report = ReportBuilder(tmp_path, title="t", synthetic=True, meta={})
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    report.figure(report.section("s", "S"), "plain", fig, "a plain figure")
    assert (tmp_path / "figures" / "plain.png").stat().st_size > 1000
    assert any(t.get_text() == "SYNTHETIC DEMO DATA" for t in fig.texts)
