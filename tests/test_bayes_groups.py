"""Group-specific slopes: median split by hand, model structure, and recovery of known group slopes
against pyfixest's interacted two-way FE regression."""

from __future__ import annotations

import matplotlib.figure
import numpy as np
import pandas as pd
import pyfixest as pf
import pytest

from bayesnqp import simulate
from bayesnqp.bayes import groups, panel
from bayesnqp.bayes.sampling import SamplerSettings
from bayesnqp.bayes.spec import load_spec
from bayesnqp.results import AnalysisResult, coef_frame

CONTROLS = ("develop", "finance")
FAST = SamplerSettings(draws=500, tune=500, chains=4, seed=13)


def test_median_split_ties_go_low():
    idx = pd.MultiIndex.from_product([["110000", "120000", "130000", "140000", "150000"], [2013, 2014]],
                                     names=["city", "year"])
    # City means: 1, 2, 2, 3, 5 -> median 2; the two cities at the median go low.
    values = [1, 1, 2, 2, 1, 3, 3, 3, 4, 6]
    labels = groups.median_split(pd.DataFrame({"s": values}, index=idx), "s")
    assert labels.to_dict() == {"110000": "low", "120000": "low", "130000": "low", "140000": "high",
                                "150000": "high"}
    assert list(labels.cat.categories) == ["low", "high"]


def simulated_groups(seed: int = 4, slopes=(0.01, 0.025)):
    frame, truth = simulate.simulate_panel(60, 8, seed=seed)
    rng = np.random.default_rng(seed)
    cities = frame.index.get_level_values("city")
    level = pd.Series(rng.normal(size=60), index=cities.unique())
    frame["digital_support"] = level.reindex(cities).to_numpy() + rng.normal(0, 0.01, len(frame))
    labels = groups.median_split(frame, "digital_support")
    high = (labels.reindex(cities) == "high").to_numpy()
    # simulate_panel used slope 0.01 for everyone; add the high group's extra slope.
    frame["nqp"] = frame["nqp"] + (slopes[1] - slopes[0]) * high * frame["agglomeration"]
    return frame, high


def hetero_oracle(frame: pd.DataFrame, high: np.ndarray) -> AnalysisResult:
    """Interacted two-way FE regression with CRV1 by city, plus the difference with its SE."""
    d = frame.reset_index()
    d["agg_low"] = d["agglomeration"] * ~high
    d["agg_high"] = d["agglomeration"] * high
    fit = pf.feols("nqp ~ agg_low + agg_high + develop + finance | city + year", data=d,
                   vcov={"CRV1": "city"})
    b, v = fit.coef(), np.asarray(fit._vcov)
    names = list(b.index)
    i, j = names.index("agg_low"), names.index("agg_high")
    diff, se_diff = b.iloc[j] - b.iloc[i], np.sqrt(v[i, i] + v[j, j] - 2 * v[i, j])
    est = [b.iloc[i], b.iloc[j], diff, b["develop"], b["finance"]]
    se = [fit.se().iloc[i], fit.se().iloc[j], se_diff, fit.se()["develop"], fit.se()["finance"]]
    terms = ["agglomeration[low]", "agglomeration[high]", "difference", "develop", "finance"]
    z = np.array(est) / np.array(se)
    return AnalysisResult(id="hetero_digital_support", title="hetero",
                          coefs=coef_frame(terms, est, se, z, np.nan, np.nan, np.nan), n_obs=len(d),
                          se_type="CRV1")


def test_group_model_structure():
    frame, _ = simulated_groups()
    spec = load_spec("bayes_groups")
    pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(CONTROLS))
    model = panel.build_panel_model(pdata, spec, slope_groups=groups.median_split(frame, "digital_support"))
    assert list(model.coords["group"]) == ["low", "high"]
    assert list(model.coords["coef"]) == list(CONTROLS)
    assert model.named_vars_to_dims["beta_group"] == ("group",)
    assert np.isfinite(model.compile_logp()(model.initial_point()))


def iid_groups_spec():
    """The bundled group spec with iid errors and Mundlak city effects (the slope structure alone; the
    bundled default with column (4)'s error structure is recovered in the group-trend test below)."""
    spec = load_spec("bayes_groups")
    options = {k: v for k, v in spec.options.items() if k not in ("errors", "errors_by_loo", "city_effects")}
    return spec.replace(options=options)


@pytest.mark.recovery
def test_groups_recover_slopes_and_difference():
    frame, high = simulated_groups()
    oracle = hetero_oracle(frame, high)
    (res,) = groups.fit_groups(frame, CONTROLS, ["digital_support"], FAST,
                               {"hetero_digital_support": oracle}, spec=iid_groups_spec())
    assert res.id == "bayes_groups_digital_support"
    assert res.diagnostics.ok, res.diagnostics.flags
    assert panel.hdi_contains(res.idata, "beta_group", np.array([0.01, 0.025])).all()
    assert panel.hdi_contains(res.idata, "difference", 0.015)
    assert res.extra["p_high_gt_low"] > 0.99
    assert res.extra["n_cities"] == {"low": 30, "high": 30}
    # Partial pooling moves the slopes little when both halves hold 30 cities: well under half an SE.
    assert set(res.agreement.index) >= {"agglomeration[low]", "agglomeration[high]", "difference"}
    assert (res.agreement["z"].abs() < 0.5).all(), res.agreement
    assert not res.meant_to_match


@pytest.mark.recovery
def test_province_slopes_forest_plot():
    frame, _ = simulate.simulate_panel(60, 8, seed=6)
    cities = frame.index.get_level_values("city").unique()
    provinces = pd.Series([f"P{i % 6}" for i in range(60)], index=cities)
    res = groups.fit_province_slopes(frame, CONTROLS, provinces, FAST)
    assert res.id == "bayes_province_slopes"
    assert res.diagnostics.ok, res.diagnostics.flags
    assert list(res.idata.posterior["beta_group"].coords["province"].values) == [f"P{i}" for i in range(6)]
    # Every province shares the true slope 0.01.
    assert panel.hdi_contains(res.idata, "beta_group", 0.01).all()
    assert isinstance(res.figures["province_slopes"], matplotlib.figure.Figure)
    assert res.extra["cities_per_province"]["P0"] == 10
    with pytest.raises(ValueError, match="no province"):
        groups.fit_province_slopes(frame, CONTROLS, provinces.iloc[1:], FAST)


def test_slope_parameterisation_follows_the_heterogeneity():
    """Heterogeneous informative group slopes -> group mean integrated out; many look-alike groups under
    a HalfNormal prior (group_sd's posterior piles near zero) -> the non-centred form."""
    from bayesnqp.bayes.panel_data import group_sd_posterior_above

    frame, _ = simulated_groups(slopes=(0.01, 0.03))
    spec = load_spec("bayes_groups")
    pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(CONTROLS))
    split = groups.median_split(frame, "digital_support")
    free = {v.name for v in panel.build_panel_model(pdata, spec, slope_groups=split).free_RVs}
    assert "group_mean_std" not in free and "beta_group_std" in free
    same, _ = simulate.simulate_panel(60, 8, seed=6)
    spec = load_spec("bayes_province_slopes")
    pdata = panel.panel_data(same, spec.outcome, spec.expand_terms(CONTROLS))
    provinces = pd.Series([f"P{i % 20}" for i in range(60)], index=same.index.get_level_values("city").unique())
    free = {v.name for v in panel.build_panel_model(pdata, spec, slope_groups=provinces).free_RVs}
    assert {"group_mean_std", "group_z"} <= free
    # and not by a hair: twenty slopes with equal SEs and no spread put little posterior mass above the SE
    se2 = np.full(20, 0.05 ** 2)
    assert group_sd_posterior_above(np.zeros(20), se2, {"dist": "halfnormal", "sigma": 0.5}, 1.0, 0.05 ** 2) < 0.3


def test_province_labels_fall_back_when_the_font_lacks_glyphs():
    provinces = pd.Series({"330100": "浙江省", "330200": "浙江省", "110000": "北京市", "999900": "P9"})
    labels = groups.display_labels(provinces, {"北京市": "Beijing"})
    assert labels["北京市"] == "Beijing" and labels["P9"] == "P9"
    assert labels["浙江省"] == ("浙江省" if groups.can_render("浙江省") else "330000")


def group_trend_panel(seed: int = 0, n_city: int = 60, n_year: int = 8, slopes=(0.5, 1.5)):
    """Two groups with different agglomeration slopes AND different treatment trends (steeper in the high
    group): the case in which a two-way deviation of the slope term biases group slopes."""
    rng = np.random.default_rng(seed)
    cities = [f"{110000 + 100 * i:06d}" for i in range(n_city)]
    high = np.arange(n_city) >= n_city // 2
    u = rng.normal(0, 1, n_city)
    tau = rng.normal(0, 0.5, n_year)
    ci, ti = np.repeat(np.arange(n_city), n_year), np.tile(np.arange(n_year), n_city)
    x = 0.8 * u[ci] + np.where(high, 0.4, 0.05)[ci] * ti + rng.normal(0, 1, ci.size)
    develop = rng.normal(0, 1, ci.size) + 0.3 * u[ci]
    y = np.where(high, slopes[1], slopes[0])[ci] * x + 0.3 * develop + 2.0 * u[ci] + tau[ti] \
        + rng.normal(0, 1, ci.size)
    index = pd.MultiIndex.from_arrays([np.asarray(cities)[ci], 2013 + ti], names=["city", "year"])
    splitter = high[ci] + rng.normal(0, 0.01, ci.size)
    frame = pd.DataFrame({"nqp": y, "agglomeration": x, "develop": develop, "digital_support": splitter},
                         index=index)
    return frame, high[ci]


@pytest.mark.recovery
def test_group_slopes_with_group_trends_target_the_interacted_two_way_fe():
    """Truth 0.5 / 1.5 with a steeper treatment trend in the high group: both group slopes and their
    difference cover the truth and sit on pyfixest's interacted two-way FE estimates (group slopes,
    common controls and year effects, the model the Bayesian one rebuilds). The bundled spec, with
    column (4)'s error structure (its optional parts tried by LOO)."""
    frame, high = group_trend_panel()
    d = frame.reset_index()
    d["agg_low"], d["agg_high"] = d["agglomeration"] * ~high, d["agglomeration"] * high
    fit = pf.feols("nqp ~ agg_low + agg_high + develop | city + year", data=d, vcov={"CRV1": "city"})
    (res,) = groups.fit_groups(frame, ("develop",), ["digital_support"], FAST, {})
    assert res.diagnostics.ok, res.diagnostics.flags
    # AR(1) is always carried; the note says what LOO decided for each optional part
    assert "phi" in res.idata.posterior
    assert any("random city slopes" in note and "city error scales" in note for note in res.notes), res.notes
    assert panel.hdi_contains(res.idata, "beta_group", np.array([0.5, 1.5])).all()
    assert panel.hdi_contains(res.idata, "difference", 1.0)
    post = res.idata.posterior["beta_group"].mean(("chain", "draw"))
    for group, term in (("low", "agg_low"), ("high", "agg_high")):
        z = (float(post.sel(group=group)) - fit.coef()[term]) / fit.se()[term]
        assert abs(z) < 0.5, (group, z)


@pytest.mark.recovery
def test_group_models_read_errors_by_loo():
    """A group spec with structured errors and ``errors_by_loo``: the random slopes are tried by
    leave-one-city-out LOO (the groups' slopes are all the panel has, so they are dropped) and the group
    slopes still cover the truth."""
    frame, _ = group_trend_panel(seed=1)
    spec = load_spec("bayes_groups")
    spec = spec.replace(options={**spec.options, "errors": ["ar1", "random_slope"], "errors_by_loo": ["random_slope"]})
    (res,) = groups.fit_groups(frame, ("develop",), ["digital_support"], FAST, {}, spec=spec)
    record = res.extra["error_options_loo"]["random_slope"]
    assert not record["kept"] and "slope_sd" not in res.idata.posterior and "phi" in res.idata.posterior
    assert any("random city slopes dropped" in note for note in res.notes)
    assert res.diagnostics.ok, res.diagnostics.flags
    assert panel.hdi_contains(res.idata, "beta_group", np.array([0.5, 1.5])).all()


def test_two_halves_sharing_one_slope_on_many_cities_keep_the_slopes_as_parameters():
    """The county-size failure: two median-split halves with one common slope that 1,500 cities pin down.
    group_sd's Gamma prior keeps it off zero, far above the slopes' SEs, so the non-centred form would
    leave a thin curved ridge (322 divergences at 2,850 regions); the rule picks the marginal form."""
    frame, _ = simulate.simulate_panel(1500, 8, seed=3)
    spec = load_spec("bayes_groups")
    pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(CONTROLS))
    cities = frame.index.get_level_values("city").unique()
    halves = pd.Series(np.where(np.arange(len(cities)) % 2 == 0, "low", "high"), index=cities)
    free = {v.name for v in panel.build_panel_model(pdata, spec, slope_groups=halves).free_RVs}
    assert "group_mean_std" not in free and "beta_group_std" in free


@pytest.mark.parametrize("prior_sd,se,thresholds", [
    ({"dist": "gamma", "alpha": 2.0, "beta": 10.0}, 0.03, (0.02, 0.05, 0.1)),
    ({"dist": "halfnormal", "sigma": 0.5}, 0.03, (0.02, 0.05, 0.1)),
    ({"dist": "halfnormal", "sigma": 100.0}, 3.0, (3.0, 10.0))])
def test_group_sd_posterior_matches_quadrature(prior_sd, se, thresholds):
    """The grid posterior of group_sd against adaptive quadrature of the same unnormalised density; the
    wide prior with large SEs puts posterior mass far above the slopes (the grid must reach it)."""
    from scipy import integrate, stats

    from bayesnqp.bayes.panel_data import group_sd_posterior_above

    b, se2 = np.array([0.10, 0.14, 0.05]), (se * np.array([1.0, 2.0 / 3.0, 5.0 / 3.0])) ** 2

    def density(g: float) -> float:
        cov = np.diag(se2) + g ** 2 * np.eye(3) + 1.0 * np.ones((3, 3))
        like = stats.multivariate_normal(np.zeros(3), cov).pdf(b)
        if prior_sd["dist"] == "gamma":
            return like * stats.gamma(prior_sd["alpha"], scale=1 / prior_sd["beta"]).pdf(g)
        return like * stats.halfnorm(scale=prior_sd["sigma"]).pdf(g)

    for threshold in thresholds:
        above = integrate.quad(density, threshold, np.inf, limit=400)[0]
        below = integrate.quad(density, 0.0, threshold, limit=400)[0]
        grid = group_sd_posterior_above(b, se2, prior_sd, 1.0, threshold ** 2)
        assert grid == pytest.approx(above / (above + below), abs=2e-3)


def test_group_sd_posterior_survives_slopes_pinned_far_below_the_group_mean_scale():
    """SEs of 1e-8 against a group-mean prior sd of 1 (a dense solve would be singular there)."""
    from bayesnqp.bayes.panel_data import group_sd_posterior_above

    p = group_sd_posterior_above(np.array([0.3, 0.3]), np.full(2, 1e-16), {"dist": "gamma", "alpha": 2.0,
                                                                          "beta": 10.0}, 1.0, 1e-16)
    assert 0.99 < p <= 1.0
