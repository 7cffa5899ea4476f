"""Paper-style table formatting: stars at the thresholds, parentheses, FE rows, notes, output formats."""

from __future__ import annotations

import pandas as pd
import pytest

from bayesnqp.report.tables import paper_table, stars_for
from bayesnqp.results import AnalysisResult, coef_frame


def result(id: str, p_agg: float, *, se_type: str = "cluster", fe: tuple[str, ...] = (), r2: float | None = 0.25,
           with_develop: bool = True, n: int = 2800) -> AnalysisResult:
    terms = ["agglomeration"] + (["develop"] if with_develop else []) + ["constant"]
    k = len(terms)
    est = [0.01, -0.002, -0.0388][:k] if with_develop else [0.01, -0.0388]
    se = [0.001, 0.0003, 0.004][:k] if with_develop else [0.001, 0.004]
    p = [p_agg, 0.2, 0.0][:k] if with_develop else [p_agg, 0.0]
    coefs = coef_frame(terms, est, se, [e / s for e, s in zip(est, se)], p, [0] * k, [0] * k)
    return AnalysisResult(id=id, title=id, coefs=coefs, n_obs=n, se_type=se_type, r2=r2, fixed_effects=fe)


@pytest.mark.parametrize("p,stars", [(0.2, ""), (0.1, ""), (0.0999, "*"), (0.05, "*"), (0.0499, "**"),
                                     (0.01, "**"), (0.0099, "***"), (0.0, "***"), (float("nan"), "")])
def test_stars_at_thresholds(p, stars):
    assert stars_for(p) == stars


def test_frame_layout_and_fe_rows():
    t = paper_table([result("a", 0.5), result("b", 0.001, fe=("city",)), result("c", 0.03, fe=("city", "year"))],
                    title="Table 3", column_labels=["(1)", "(2)", "(3)"])
    f = t.frame
    assert list(f.columns) == ["(1)", "(2)", "(3)"]
    assert list(f.index) == ["agglomeration", "", "develop", "", "constant", "", "N", "R2", "City FE", "Year FE"]
    assert f.iloc[0].tolist() == ["0.0100", "0.0100***", "0.0100**"]
    assert f.iloc[1].tolist() == ["(0.0010)", "(0.0010)", "(0.0010)"]
    assert f.iloc[2, 0] == "-0.0020"  # p = 0.2: no star
    assert f.iloc[4, 0] == "-0.0388***"
    assert f.loc["N"].tolist() == ["2800"] * 3
    assert f.loc["R2"].tolist() == ["0.2500"] * 3
    assert f.loc["City FE"].tolist() == ["No", "Yes", "Yes"]
    assert f.loc["Year FE"].tolist() == ["No", "No", "Yes"]
    assert "clustered by city" in t.note and "*** p < 0.01" in t.note and "* p < 0.1" in t.note
    assert "within R2" in t.note


def test_missing_terms_left_blank_and_term_selection():
    t = paper_table([result("a", 0.5, with_develop=False), result("b", 0.5)], title="T",
                    terms=["agglomeration", "develop"], term_labels={"agglomeration": "Agglomeration"}, digits=3)
    f = t.frame
    assert list(f.index[:4]) == ["Agglomeration", "", "develop", ""]
    assert f.iloc[2, 0] == "" and f.iloc[3, 0] == ""
    assert f.iloc[0, 0] == "0.010"
    assert list(f.columns) == ["(1)", "(2)"]


def test_mixed_se_types_listed_in_note():
    t = paper_table([result("a", 0.5, se_type="cluster"), result("b", 0.5, se_type="driscoll_kraay"),
                     result("c", 0.5, se_type="cluster")], title="T", column_labels=["A", "B", "C"])
    assert "clustered by city in A, C" in t.note
    assert "Driscoll-Kraay standard errors in B" in t.note


def test_custom_stars_and_missing_r2():
    t = paper_table([result("a", 0.04, r2=None)], title="T", stars=(0.05, 0.001))
    assert t.frame.iloc[0, 0] == "0.0100*"
    assert t.frame.loc["R2"].tolist() == [""]
    assert "* p < 0.05" in t.note and "** p < 0.001" in t.note


def test_outputs(tmp_path):
    t = paper_table([result("a", 0.001, fe=("city", "year"))], title="Baseline & more_", column_labels=["(4)"])
    path = t.to_csv(tmp_path / "t.csv")
    back = pd.read_csv(path, index_col=0, keep_default_na=False, dtype=str)
    assert back.iloc[0, 0] == "0.0100***" and back.iloc[1, 0] == "(0.0010)"
    md = t.to_markdown()
    assert r"0.0100\*\*\*" in md and "| (4) |" in md
    tex = t.to_latex()
    assert r"0.0100$^{***}$" in tex and r"Baseline \& more\_" in tex and r"\begin{tabular}{lc}" in tex
    assert r"\caption{" in tex and r"\label{tab:" in tex and r"\begin{tablenotes}" in tex and "$<$ 0.01" in tex
    h = t.to_html()
    assert h.startswith('<table class="paper">') and "<td>0.0100***</td>" in h and "&amp;" in h
    assert "<td>(0.0010)</td>" in h


def test_bad_arguments():
    with pytest.raises(ValueError):
        paper_table([], title="T")
    with pytest.raises(ValueError):
        paper_table([result("a", 0.5)], title="T", column_labels=["x", "y"])


def test_bayesian_paper_table_layout_and_digits():
    from types import SimpleNamespace

    from bayesnqp.report.tables import bayes_paper_table

    summary = pd.DataFrame({"mean": [0.0101, -0.0000069], "sd": [0.0004, 0.0007], "ci_low": [0.0093, -0.0013],
                            "ci_high": [0.0108, 0.0013]}, index=["beta[agglomeration]", "beta[develop]"])
    agree = pd.DataFrame({"z": [0.05], "sd_ratio": [0.41]}, index=["agglomeration"])
    fit = SimpleNamespace(summary=summary, agreement=agree,
                          diagnostics=SimpleNamespace(max_r_hat=1.0041, min_ess_bulk=1292.4, divergences=0))
    t = bayes_paper_table([fit], title="B", key_term="agglomeration", terms=["agglomeration", "develop"],
                          column_labels=["(4)"])
    f = t.frame
    assert list(f.index) == ["agglomeration", "", "develop", "", "max r-hat", "min ESS (bulk)", "divergences",
                             "z (agglomeration)", "sd ratio (agglomeration)"]
    assert f.iloc[0, 0] == "0.0101" and f.iloc[1, 0] == "[0.0093, 0.0108]"
    assert f.iloc[2, 0] == "-0.000007"  # not 0.0000, and not seven digits finer than its interval
    assert f.loc["max r-hat"].tolist() == ["1.004"] and f.loc["min ESS (bulk)"].tolist() == ["1292"]
    assert f.loc["z (agglomeration)"].tolist() == ["0.05"] and f.loc["sd ratio (agglomeration)"].tolist() == ["0.41"]
    assert "94% highest-density interval" in t.note
