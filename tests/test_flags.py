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
