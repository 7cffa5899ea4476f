"""City-level Bayesian bootstrap: the weighted FE solver is exact, and its spread matches clustered SEs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyfixest as pf
import pytest

from bayesnqp import names
from bayesnqp.checks.agreement import agreement, bootstrap_sd
from bayesnqp.frequentist import bootstrap as bb
from bayesnqp.frequentist.panel import fit_panel


def _panel(n_city: int = 60, n_year: int = 8, *, seed: int = 0, rho: float = 0.7, drop: float = 0.0
           ) -> pd.DataFrame:
    """City effects correlated with x, year effects, AR(1) errors within city (so clustering matters)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n_city)
    tau = rng.normal(size=n_year)
    ci = np.repeat(np.arange(n_city), n_year)
    ti = np.tile(np.arange(n_year), n_city)
    x_city = rng.normal(size=n_city)
    # persistent regressors (random walks within city) and AR(1) errors: clustering matters
    x = 0.8 * u[ci] + 0.3 * tau[ti] + np.cumsum(rng.normal(size=(n_city, n_year)), axis=1).ravel()
    w = np.cumsum(rng.normal(size=(n_city, n_year)), axis=1).ravel() + 0.2 * ti
    e = np.zeros((n_city, n_year))
    shocks = rng.normal(size=(n_city, n_year)) * (0.5 + np.abs(x_city))[:, None]
    e[:, 0] = shocks[:, 0]
    for t in range(1, n_year):
        e[:, t] = rho * e[:, t - 1] + shocks[:, t]
    y = 1.0 + 0.5 * x - 0.3 * w + u[ci] + tau[ti] + e.ravel()
    frame = pd.DataFrame({names.NQP: y, names.AGGLOMERATION: x, "develop": w, "dist": np.repeat(
        rng.uniform(100, 2000, n_city), n_year)},
        index=pd.MultiIndex.from_arrays([np.char.add("c", ci.astype(str).astype(object)).astype(str),
                                         2013 + ti], names=[names.CITY, names.YEAR]))
    frame[names.AGGLOMERATION] += 0.001 * frame["dist"] * (ti - 0)  # instrument relevance for the IV test
    if drop:
        frame = frame[rng.uniform(size=len(frame)) > drop]
    return frame.sort_index()


def _dense_wls(frame: pd.DataFrame, y: str, xs: list[str], w_city: pd.Series, city_fe: bool, year_fe: bool
               ) -> np.ndarray:
    """Weighted least squares with explicit city and year dummies (the reference)."""
    city = frame.index.get_level_values(0).astype(str)
    year = frame.index.get_level_values(1)
    parts = [frame[xs].to_numpy(float)]
    parts.append(pd.get_dummies(city).to_numpy(float) if city_fe else np.ones((len(frame), 1)))
    if year_fe:
        parts.append(pd.get_dummies(year).to_numpy(float)[:, 1:])
    d = np.column_stack(parts)
    sw = np.sqrt(w_city.loc[city].to_numpy(float))
    coef, *_ = np.linalg.lstsq(d * sw[:, None], frame[y].to_numpy(float) * sw, rcond=None)
    return coef[: len(xs)]


XS = [names.AGGLOMERATION, "develop"]


@pytest.mark.parametrize("drop", [0.0, 0.15])
def test_unit_weights_reproduce_pyfixest_two_way_fe(drop):
    frame = _panel(drop=drop)
    fit = fit_panel(frame, names.NQP, XS, city_fe=True, year_fe=True, se="cluster", id="t", title="t",
                    key_term=names.AGGLOMERATION)
    est = bb.weighted_fe(frame, names.NQP, XS)
    np.testing.assert_allclose(est.to_numpy(), fit.coefs.loc[XS, "estimate"].to_numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("city_fe, year_fe", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_random_weights_match_dense_weighted_least_squares_with_dummies(city_fe, year_fe, drop):
    frame = _panel(n_city=30, n_year=6, seed=3, drop=drop)
    w = bb.dirichlet_weights(sorted(frame.index.get_level_values(0).unique()), n_rep=3, seed=1)
    for r in range(3):
        wr = w.iloc[r]
        got = bb.weighted_fe(frame, names.NQP, XS, wr, city_fe=city_fe, year_fe=year_fe)
        want = _dense_wls(frame, names.NQP, XS, wr, city_fe, year_fe)
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-9, atol=1e-12)
    draws = bb.bootstrap_draws(frame, names.NQP, XS, w, city_fe=city_fe, year_fe=year_fe)
    np.testing.assert_allclose(draws.iloc[2].to_numpy(), _dense_wls(frame, names.NQP, XS, w.iloc[2], city_fe,
                                                                    year_fe), rtol=1e-9, atol=1e-12)


def test_unit_weights_reproduce_pyfixest_2sls_with_two_way_effects():
    frame = _panel(seed=5)
    frame["z"] = frame["dist"] / 1000 * (frame.index.get_level_values(1) - 2013)
    data = frame.reset_index()
    fit = pf.feols(f"{names.NQP} ~ develop | {names.CITY} + {names.YEAR} | {names.AGGLOMERATION} ~ z", data=data)
    est = bb.weighted_fe(frame, names.NQP, XS, instruments=["z"])
    np.testing.assert_allclose(est.to_numpy(), fit.coef().loc[XS].to_numpy(), rtol=1e-9)


def test_weights_are_dirichlet_and_reproducible():
    w = bb.dirichlet_weights(["a", "b", "c", "d"], n_rep=4000, seed=7)
    np.testing.assert_allclose(w.sum(axis=1), 4.0)
    assert (w.to_numpy() > 0).all()
    # Dirichlet(1,1,1,1) scaled by 4: mean 1, variance 16 * (1 * 3) / (16 * 5) = 0.6
    assert w.to_numpy().mean() == pytest.approx(1.0)
    assert w.to_numpy().var() == pytest.approx(0.6, rel=0.05)
    pd.testing.assert_frame_equal(w, bb.dirichlet_weights(["a", "b", "c", "d"], n_rep=4000, seed=7))
    with pytest.raises(ValueError):
        bb.dirichlet_weights(["a", "a"])


def test_bootstrap_sd_is_close_to_the_crv1_clustered_se():
    """Serially correlated errors: the clustered SE is well above the iid one, and the bootstrap follows
    the clustered one (both allow any correlation within a city)."""
    frame = _panel(n_city=300, n_year=8, seed=11, rho=0.8)
    crv = fit_panel(frame, names.NQP, XS, city_fe=True, year_fe=True, se="cluster", id="t", title="t",
                    key_term=names.AGGLOMERATION)
    iid = fit_panel(frame, names.NQP, XS, city_fe=True, year_fe=True, se="iid", id="t", title="t",
                    key_term=names.AGGLOMERATION)
    w = bb.dirichlet_weights(sorted(frame.index.get_level_values(0).unique()), n_rep=2000, seed=3)
    draws = bb.bootstrap_draws(frame, names.NQP, XS, w)
    for term in XS:
        se_c = crv.coefs.loc[term, "std_error"]
        se_i = iid.coefs.loc[term, "std_error"]
        sd = draws[term].std(ddof=1)
        assert abs(sd / se_c - 1) < 0.1, (term, sd, se_c)
        assert abs(se_c / se_i - 1) > 0.2  # the check can tell clustered from iid
        assert abs(draws[term].mean() - crv.coefs.loc[term, "estimate"]) < 0.2 * se_c


def test_summary_block_and_lookup():
    draws = pd.DataFrame({"agglomeration": [1.0, 2.0, 3.0]})
    block = bb.summarise(draws, seed=1)
    assert block["sd"]["agglomeration"] == pytest.approx(1.0)
    assert block["replications"] == 3
    assert bootstrap_sd({"bootstrap": block}, "agglomeration") == pytest.approx(1.0)
    assert np.isnan(bootstrap_sd({}, "agglomeration"))
    assert np.isnan(bootstrap_sd({"bootstrap": block}, "develop"))


def test_agreement_rows_carry_sd_ratio_and_the_bootstrap_sd_of_the_oracle():
    import dataclasses

    frame = _panel(seed=2)
    oracle = fit_panel(frame, names.NQP, XS, city_fe=True, year_fe=True, se="cluster", id="table3_col4",
                       title="t", key_term=names.AGGLOMERATION, notes=(), extra=None)
    w = bb.dirichlet_weights(sorted(frame.index.get_level_values(0).unique()), n_rep=200, seed=1)
    block = bb.companion(oracle, frame, w, seed=1)
    assert block is not None and set(block["sd"]) == set(XS)
    oracle = dataclasses.replace(oracle, extra={**oracle.extra, "bootstrap": block})
    se = oracle.coefs.loc[names.AGGLOMERATION, "std_error"]
    post = pd.DataFrame({"mean": [oracle.coefs.loc[names.AGGLOMERATION, "estimate"]], "sd": [0.5 * se]},
                        index=["beta[agglomeration]"])
    row = agreement(post, oracle, {names.AGGLOMERATION: "beta[agglomeration]"}).loc[names.AGGLOMERATION]
    assert row["sd_ratio"] == pytest.approx(0.5)
    assert row["bootstrap_sd"] == pytest.approx(block["sd"][names.AGGLOMERATION])
    assert row["z"] == pytest.approx(0.0)


def test_median_split_bootstrap_difference_is_high_minus_low_per_replication():
    from bayesnqp.frequentist.panel import heterogeneity

    frame = _panel(seed=4)
    frame["split"] = np.repeat(np.random.default_rng(0).uniform(size=60), 8)[: len(frame)]
    (het,) = heterogeneity(frame, names.NQP, names.AGGLOMERATION, ["develop"], ["split"])
    cities = sorted(frame.index.get_level_values(0).unique())
    unit = pd.DataFrame(np.ones((1, len(cities))), columns=cities)
    block = bb.companion(het, frame, unit, seed=0)
    # with unit weights every "replication" is the oracle itself
    for term in ("agglomeration[low]", "agglomeration[high]", "difference"):
        assert block["mean"][term] == pytest.approx(het.coefs.loc[term, "estimate"], rel=1e-9)
    w = bb.dirichlet_weights(cities, n_rep=300, seed=2)
    block = bb.companion(het, frame, w, seed=2)
    se = het.coefs["std_error"]
    for term in ("agglomeration[low]", "agglomeration[high]", "difference"):
        assert 0.7 < block["sd"][term] / se[term] < 1.3


def test_iv_bootstrap_builds_the_oracles_instruments():
    from bayesnqp.frequentist.iv import iv_2sls

    frame = _panel(seed=6)
    cities = sorted(frame.index.get_level_values(0).unique())
    unit = pd.DataFrame(np.ones((1, len(cities))), columns=cities)
    for oracle in iv_2sls(frame, names.NQP, names.AGGLOMERATION, ["develop"], "dist"):
        block = bb.companion(oracle, frame, unit, seed=0, instrument="dist")
        for term in XS:
            assert block["mean"][term] == pytest.approx(oracle.coefs.loc[term, "estimate"], rel=1e-8), oracle.id
    assert bb.companion(oracle, frame, unit, seed=0) is None  # no distance column named: not covered
