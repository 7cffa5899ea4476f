"""Flag records: thresholds, messages and the summary.json structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesnqp.checks import flags as fl


def test_flag_record_has_exactly_the_three_keys_and_checks_its_kind():
    f = fl.Flag("bayes_x", "ppc", "something failed")
    assert f.as_dict() == {"id": "bayes_x", "kind": "ppc", "message": "something failed"}
    with pytest.raises(ValueError):
        fl.Flag("bayes_x", "vibes", "no such kind")
    with pytest.raises(ValueError):
        fl.Flag("bayes_x", "ppc", "")


def test_records_keep_order_and_drop_duplicates():
    a = fl.Flag("a", "ppc", "m")
    b = fl.Flag("b", "sd_ratio", "n")
    assert fl.records([a, b, a]) == [a.as_dict(), b.as_dict()]


def test_convergence_flag_joins_the_diagnostics_messages():
    assert fl.convergence_flags("m", []) == []
    (f,) = fl.convergence_flags("m", ["r_hat 1.200 > 1.01", "3 divergent transitions"])
    assert f.kind == "convergence" and "r_hat 1.200" in f.message and "3 divergent" in f.message


def test_ppc_flags_only_extreme_p_values_at_the_documented_edges():
    assert fl.ppc_flags("m", {"mean": 0.5, "sd": 0.01, "max": 0.99}) == []  # edges are not outside
    (f,) = fl.ppc_flags("m", {"mean": 0.5, "skewness": 0.0, "max": 0.9995, "min": float("nan")},
                        what="Normal likelihood")
    assert f.kind == "ppc"
    assert "skewness p = 0.000" in f.message and "max p = 1.000" in f.message
    assert "mean" not in f.message and "min" not in f.message and "Normal likelihood" in f.message


def test_pareto_k_flag_needs_more_than_one_percent_above_0_7():
    k = np.full(1000, 0.2)
    k[:10] = 0.9  # exactly 1 %: not flagged
    assert fl.pareto_k_share(k) == pytest.approx(0.01)
    assert fl.pareto_k_flags("m", fl.pareto_k_share(k), k.size) == []
    k[10] = 0.71
    (f,) = fl.pareto_k_flags("m", fl.pareto_k_share(k), k.size, what="Normal likelihood")
    assert f.kind == "pareto_k" and "11 of 1000" in f.message and "1.1%" in f.message


def _agreement(ratios: dict[str, float]) -> pd.DataFrame:
    se = 0.002
    return pd.DataFrame({"estimate": 0.01, "std_error": se, "post_mean": 0.01,
                         "post_sd": [r * se for r in ratios.values()], "z": 0.0,
                         "sd_ratio": list(ratios.values()), "bootstrap_sd": 0.0021},
                        index=pd.Index(list(ratios), name="term"))


def test_sd_ratio_flag_judges_only_the_headline_terms_and_gives_the_reason():
    table = _agreement({"agglomeration": 0.187, "develop": 5.0})
    assert fl.sd_ratio_flags("m", _agreement({"agglomeration": 0.75})) == []
    assert fl.sd_ratio_flags("m", _agreement({"agglomeration": 1.33})) == []
    (f,) = fl.sd_ratio_flags("m", table, ["agglomeration"], reason_low="Independent city-years.",
                             reason_high="Should not appear.")
    assert f.kind == "sd_ratio"
    assert "ratio 0.19" in f.message and "too narrow" in f.message and "Independent city-years." in f.message
    assert "develop" not in f.message and "Should not appear" not in f.message
    assert "bootstrap sd 0.0021" in f.message
    (g,) = fl.sd_ratio_flags("m", table)
    assert "develop" in g.message and "off" in g.message


@pytest.mark.parametrize("prior, likelihood, diagnosis", [
    (0.01, 0.2, "-"), (0.01, 0.01, "-"), (0.08, 0.01, "prior-driven"), (0.08, 0.2, "prior-data conflict"),
    (0.05, 0.0, "prior-driven"), (float("nan"), 0.1, "-")])
def test_sensitivity_diagnosis_follows_the_power_scaling_rule(prior, likelihood, diagnosis):
    assert fl.sensitivity_diagnosis(prior, likelihood) == diagnosis


def test_prior_sensitivity_flag_names_each_prior_driven_quantity():
    table = pd.DataFrame({"prior": [0.001, 0.12], "likelihood": [0.3, 0.01]},
                         index=pd.Index(["beta[agglomeration]", "loading[innovation]"], name="quantity"))
    table["diagnosis"] = [fl.sensitivity_diagnosis(p, q) for p, q in zip(table["prior"], table["likelihood"])]
    (f,) = fl.prior_sensitivity_flags("bayes_mediation", table)
    assert f.kind == "prior_sensitivity"
    assert "loading[innovation] prior-driven (prior sensitivity 0.120" in f.message
    assert "beta[agglomeration]" not in f.message
    assert fl.prior_sensitivity_flags("m", table.iloc[:1]) == []


# --------------------------------------------------------------------------------------------------
# flags raised by the stages from fitted results (fake posteriors, no sampling)

import arviz as az  # noqa: E402

from bayesnqp.bayes.result import BayesResult  # noqa: E402
from bayesnqp.checks.diagnostics import Diagnostics  # noqa: E402
from bayesnqp.stages.bayesian import check_flags, likelihood_choice  # noqa: E402
from bayesnqp.stages.spatial import moran_ppc_flags  # noqa: E402


def _result(rid: str, *, agreement=None, extra=None, summary=None) -> BayesResult:
    idata = az.from_dict(posterior={"beta": np.zeros((2, 10))})
    diag = Diagnostics(1.0, 1000, 1000, 0, 1.0, 10, 2, ())
    summary = summary if summary is not None else pd.DataFrame(
        {"mean": [0.0], "sd": [1.0], "ci_low": [-1.0], "ci_high": [1.0], "r_hat": [1.0], "ess_bulk": [1000.0],
         "ess_tail": [1000.0]}, index=["beta"])
    return BayesResult(id=rid, title=rid, idata=idata, summary=summary, diagnostics=diag, agreement=agreement,
                       extra=extra or {})


def test_sd_ratio_is_flagged_on_headline_models_only():
    table = _agreement({"agglomeration": 0.187, "develop": 0.2})
    (f,) = check_flags(_result("bayes_table3_col4", agreement=table))
    assert f.kind == "sd_ratio" and "agglomeration" in f.message and "develop" not in f.message
    assert "serially correlated" in f.message
    assert check_flags(_result("bayes_re", agreement=table)) == []  # not meant to match: no headline
    assert check_flags(_result("bayes_table3_col4", agreement=_agreement({"agglomeration": 0.9}))) == []
    groups = _agreement({"agglomeration[low]": 1.2, "agglomeration[high]": 1.5, "difference": 1.0})
    (g,) = check_flags(_result("bayes_groups_marketization", agreement=groups))
    assert "agglomeration[high]" in g.message and "agglomeration[low]" not in g.message
    assert "too wide" in g.message
    med = _agreement({"inno_rd_staff": 0.17, "factor_pilots": 0.2})
    (m,) = check_flags(_result("bayes_mediation", agreement=med))
    assert "inno_rd_staff" in m.message and "factor_pilots" in m.message


def _likelihoods_extra(best: str = "student_t") -> dict:
    ok = {"p_value": 0.5, "observed": 1.0, "replicated_mean": 1.0}
    bad = {"p_value": 0.0, "observed": 3.0, "replicated_mean": 0.1}
    order = [best] + [k for k in ("normal", "student_t", "lognormal") if k != best]
    compare = {k: {"rank": i, "elpd_loo": 100.0 - 50 * i, "elpd_diff": 50.0 * i, "dse": 7.0}
               for i, k in enumerate(order)}
    return {"compare": compare,
            "ppc": {"normal": {"mean": ok, "skewness": bad, "max": bad, "max_abs_city_residual": 0.2},
                    "student_t": {"mean": ok, "skewness": ok, "max": ok, "max_abs_city_residual": 0.1}},
            "pareto_k": {"normal": {"good": 2800, "ok_or_unreliable": 0, "bad": 0, "n": 2800, "max_k": 0.3},
                         "student_t": {"good": 2700, "ok_or_unreliable": 90, "bad": 10, "n": 2800, "max_k": 1.2}}}


def test_likelihood_comparison_flags_ppc_and_pareto_k_and_says_which_likelihood_the_headline_uses():
    summary = pd.DataFrame({"mean": [0.0088, 0.0079], "sd": [0.0005, 0.0004]},
                           index=["beta_normal[agglomeration]", "beta_student_t[agglomeration]"])
    res = _result("bayes_likelihoods", extra=_likelihoods_extra(), summary=summary)
    kinds = sorted((f.kind, f.message) for f in check_flags(res))
    assert [k for k, _ in kinds] == ["pareto_k", "ppc"]
    assert "student_t likelihood" in kinds[0][1] and "100 of 2800" in kinds[0][1]
    assert "normal likelihood" in kinds[1][1] and "skewness p = 0.000" in kinds[1][1]
    text = likelihood_choice(res)
    assert "fails its posterior predictive check (skewness, max)" in text
    assert "LOO prefers the student_t likelihood over the Normal by 50.0 elpd (se of the difference 7.0)" in text
    assert "nevertheless keep the Normal likelihood" in text and "least-squares" in text
    assert "0.0088 (sd 0.0005)" in text and "0.0079 (sd 0.0004)" in text
    normal_best = likelihood_choice(_result("bayes_likelihoods", extra=_likelihoods_extra("normal")))
    assert normal_best.startswith("LOO prefers the Normal likelihood, the one the headline")


def test_mediation_ppc_p_values_are_flagged_per_variable_and_statistic():
    extra = {"ppc_p_values": {"inno_rd_staff": {"sd": 0.4, "skew": 0.0, "kurtosis": 1.0},
                              "nqp": {"sd": 0.5, "skew": 0.3, "kurtosis": 0.6}}}
    (f,) = check_flags(_result("bayes_mediation", extra=extra))
    assert f.kind == "ppc" and "inno_rd_staff skew p = 0.000" in f.message
    assert "inno_rd_staff kurtosis p = 1.000" in f.message and "nqp" not in f.message


def test_residual_moran_ppc_flags_list_the_extreme_years_per_model():
    table = pd.DataFrame({"model": ["car", "car", "sdm", "sdm"], "id": ["bayes_car", "bayes_car", "bayes_sdm",
                                                                         "bayes_sdm"],
                          "year": [2013, 2014, 2013, 2014], "ppp": [0.5, 0.004, 0.3, 0.7]}
                         ).set_index(["model", "year"])
    (f,) = moran_ppc_flags(table)
    assert f.id == "bayes_car" and "residual Moran's I 2014 p = 0.004" in f.message and "2013" not in f.message
