"""Error structures of the Normal panel models (AR(1), city scales, random slopes; city effects
integrated out): the closed-form log-density against dense multivariate Normals and the replicates
against the model covariance (recovery with sampling: tests/test_bayes_panel.py)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
import scipy.stats as st

from bayesnqp import simulate
from bayesnqp.bayes import errors as E
from bayesnqp.bayes import panel
from bayesnqp.bayes.spec import load_spec


def unbalanced_rows(seed: int = 0):
    """Five cities; one with a gap in its years, one observed once."""
    years_of = {0: [2013, 2014, 2015, 2016], 1: [2013, 2015, 2016, 2019], 2: [2014], 3: [2013, 2014, 2015],
                4: [2016, 2017, 2018, 2019, 2020]}
    city_idx = np.concatenate([[c] * len(v) for c, v in years_of.items()])
    years = np.concatenate(list(years_of.values())).astype(float)
    return city_idx, years


@pytest.mark.parametrize("phi,omega", [(0.6, 0.8), (-0.4, 0.0), (0.0, 1.3)])
def test_structured_logp_matches_dense_multivariate_normal_in_the_flat_limit(phi, omega):
    """Against the dense Normal of each city's within-city contrasts: with C orthonormal rows orthogonal to
    1, the flat-prior limit of log N(y; m, V_e + kappa^2 11') + log kappa + log(2 pi) / 2 is
    log N(C y; C m, C V_e C') - log(T) / 2 (checked numerically at kappa = 1e3 as well)."""
    city_idx, years = unbalanced_rows()
    rng = np.random.default_rng(3)
    n, n_city = len(city_idx), 5
    y, mean, g = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    scale_city = np.exp(rng.normal(0, 0.5, n_city))
    order = E.row_order(city_idx, years)
    counts = np.bincount(city_idx).astype(float)
    args = [pt.dvector(), pt.dvector(), pt.dscalar(), pt.dvector(), pt.dscalar(), pt.dvector(),
            pt.lvector(), pt.dvector(), pt.lvector(), pt.dvector(), pt.dvector()]
    fn = pytensor.function(args, E.structured_city_logp(*args))
    got = fn(y, mean, phi, scale_city[city_idx], omega, g, city_idx, counts, order.prev, order.first, order.gap)
    for c in range(n_city):
        rows = city_idx == c
        t = years[rows]
        corr = np.where(np.abs(t[:, None] - t[None, :]) == 0, 1.0, phi ** np.abs(t[:, None] - t[None, :]))
        cov_e = scale_city[c] ** 2 * corr + omega ** 2 * np.outer(g[rows], g[rows])
        if rows.sum() > 1:
            # orthonormal contrasts: the last T - 1 columns of a QR basis whose first column is 1
            contrasts = np.linalg.qr(np.column_stack([np.ones(rows.sum()), np.eye(rows.sum())[:, 1:]]))[0][:, 1:].T
            ref = st.multivariate_normal(contrasts @ mean[rows], contrasts @ cov_e @ contrasts.T).logpdf(
                contrasts @ y[rows]) - 0.5 * np.log(rows.sum())
            kappa = 1e3
            big = st.multivariate_normal(mean[rows], cov_e + kappa ** 2).logpdf(y[rows]) + np.log(kappa) \
                + 0.5 * np.log(2 * np.pi)
            assert big == pytest.approx(ref, abs=1e-4)
            # spread evenly over the city's rows; the city sum is the city's density
            assert got[rows].sum() == pytest.approx(ref, abs=1e-9)
        assert np.allclose(got[rows], got[rows][0])
    assert got[city_idx == 2].sum() == pytest.approx(0.0, abs=1e-12)  # a city seen once says nothing


def test_row_order_refuses_unsorted_rows():
    with pytest.raises(ValueError, match="sorted"):
        E.row_order(np.array([0, 0, 1]), np.array([2014.0, 2013.0, 2013.0]))


def test_error_option_is_validated():
    assert E.ErrorStructure.from_option(None, "s").iid
    assert E.ErrorStructure.from_option(["ar1", "random_slope"], "s").label() == "ar1+random_slope"
    with pytest.raises(ValueError, match="unknown entries"):
        E.ErrorStructure.from_option(["ar2"], "s")
    frame, _ = simulate.simulate_panel(20, 5, seed=1)
    spec = load_spec("bayes_table3_col2")
    spec = spec.replace(options={**spec.options, "errors": ["ar1"]})
    pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(("develop", "finance")))
    with pytest.raises(ValueError, match="city effects integrated out"):
        panel.build_panel_model(pdata, spec)


def test_structured_random_draws_have_the_model_covariance():
    """Replicates from the random function: the empirical covariance of one city's rows matches V_i."""
    city_idx, years = unbalanced_rows()
    order = E.row_order(city_idx, years)
    counts = np.bincount(city_idx).astype(float)
    g = np.linspace(-1.0, 1.0, len(city_idx))
    scale = np.where(city_idx == 1, 2.0, 1.0)
    rng = np.random.default_rng(0)
    draws = np.stack([E.structured_city_random(np.zeros(len(city_idx)), 0.7, scale, 0.8, g, city_idx, counts,
                                               order.prev, order.first, order.gap, rng=rng)
                      for _ in range(20000)])
    rows = city_idx == 1
    t = years[rows]
    lag = np.abs(t[:, None] - t[None, :])
    cov = 4.0 * 0.7 ** lag + 0.64 * np.outer(g[rows], g[rows])
    assert np.allclose(np.cov(draws[:, rows].T), cov, atol=0.15)


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_fused_structured_logp_and_gradient_match_the_graph_form(mode):
    """The fused Op (one pass over the rows, hand-written reverse pass) against the plain PyTensor graph
    of the same density and its automatic gradients, on unbalanced rows with a year gap, a city seen
    once, negative phi and per-row scales: values and the gradients w.r.t. y, the mean, phi, the scales
    and omega agree to 1e-9."""
    city_idx, years = unbalanced_rows()
    order = E.row_order(city_idx, years)
    counts = np.bincount(city_idx).astype(float)
    n = len(city_idx)
    rng = np.random.default_rng(11)
    args = [pt.dvector(), pt.dvector(), pt.dscalar(), pt.dvector(), pt.dscalar(), pt.dvector(),
            pt.lvector(), pt.dvector(), pt.lvector(), pt.dvector(), pt.dvector()]
    weights = pt.dvector()
    for phi, omega in [(0.6, 0.8), (-0.7, 0.5), (0.3, 0.0)]:
        values = [rng.normal(size=n), rng.normal(size=n), phi, np.exp(rng.normal(0.0, 0.5, n)), omega,
                  rng.normal(size=n), city_idx, counts, order.prev, order.first, order.gap]
        w = rng.normal(size=n)
        got = []
        for logp in (E.structured_city_logp, E.structured_city_logp_graph):
            out = logp(*args)
            grads = pytensor.grad((out * weights).sum(), args[:5])
            fn = pytensor.function([*args, weights], [out, *grads], mode=mode, on_unused_input="ignore")
            got.append(fn(*values, w))
        for fused, graph in zip(*got):
            assert np.allclose(fused, graph, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("phi,omega,eta", [(0.6, 0.8, 0.5), (-0.4, 0.0, 1.5), (0.0, 1.3, 0.05), (0.3, 0.5, 4.0)])
def test_scale_integrated_city_logp_matches_adaptive_quadrature(phi, omega, eta):
    """Each city's density with its scale innovation x ~ N(0, 1) integrated out (scaled whitened sums on a
    grid) against scipy's adaptive quadrature of the fused forward density at s_c = base_c exp(eta x), on
    unbalanced rows with a year gap and a city seen once: agreement to 1e-8."""
    from scipy.integrate import quad
    city_idx, years = unbalanced_rows()
    order = E.row_order(city_idx, years)
    counts = np.bincount(city_idx).astype(float)
    n = len(city_idx)
    rng = np.random.default_rng(5)
    y, mean, g = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    base = np.exp(rng.normal(0.0, 0.5, len(counts)))[city_idx]
    params = np.array([phi, omega])
    nodes, log_w = E.scale_quadrature(eta, counts.max())
    got = E.scale_integrated_city_logp(y, mean, params, base, g, city_idx, counts, order.prev, order.first,
                                       order.gap, eta, nodes, log_w)
    for c in np.flatnonzero(counts > 1):
        rows = city_idx == c

        def log_density(x, c=c, rows=rows):
            scale = np.where(rows, base * np.exp(eta * x), base)
            per_row = E._structured_forward(y, mean, params, scale, g, city_idx, counts, order.prev,
                                            order.first, order.gap)
            return per_row[rows].sum() + st.norm.logpdf(x)

        # scaled by the integrand's peak on a fine grid, so that exp neither overflows nor underflows
        peak = max(log_density(x) for x in np.linspace(-8, 8, 3201))
        ref = peak + np.log(quad(lambda x: np.exp(log_density(x) - peak), -8, 8, epsabs=0, epsrel=1e-12,
                                 limit=400, points=[0.0])[0])
        assert got[c] == pytest.approx(ref, abs=1e-8), c
    assert got[2] == pytest.approx(0.0, abs=1e-12)  # a city seen once still says nothing


@pytest.mark.recovery
def test_leave_one_city_out_loo_integrates_each_city_scale_out():
    """On a fitted model with AR(1) errors and city scales: the per-city terms of ``city_loo`` equal a
    brute-force integral over the scale innovation (the model's own pointwise log-likelihood with every
    city's z set to each point of a fine grid, summed per city), and integrating z out brings Pareto k
    below 0.7 for (nearly) every city where the joint draws leave most cities above it."""
    from pymc.model.transform.conditioning import remove_value_transforms
    from scipy.special import logsumexp

    from bayesnqp.bayes import error_selection as S
    from bayesnqp.bayes.sampling import SamplerSettings
    frame, _ = simulate.calibration_panel("ar1_scales", seed=2)
    spec = load_spec("bayes_table3_col4")
    spec = spec.replace(options={**spec.options, "errors": ["ar1", "city_scales"], "errors_by_loo": []})
    model, idata, _ = panel.fit_spec(frame, spec, ("develop",), SamplerSettings(draws=400, tune=400, chains=2,
                                                                                  seed=4), log_likelihood=True)
    integrated = S.scale_integrated_city_loglik(model, idata)
    plain = remove_value_transforms(model)
    rowwise = plain.compile_fn(inputs=plain.value_vars, outs=plain.logp(vars=plain.observed_RVs, sum=False)[0],
                               on_unused_input="ignore", point_fn=False)
    city_idx = np.asarray(model["city_idx"].get_value())
    n_city = len(model.coords["city"])
    grid = np.linspace(-8.0, 8.0, 1601)
    names = [v.name for v in plain.value_vars]
    for chain, draw in ((0, 0), (1, -1)):
        point = {name: idata.posterior[name].values[chain, draw] for name in names}
        per_city = np.array([E.city_sums(rowwise(*[np.full_like(point[name], x) if name == E.CITY_SCALE_Z
                                                   else point[name] for name in names]), city_idx, n_city)
                             for x in grid])
        ref = logsumexp(per_city + st.norm.logpdf(grid)[:, None], axis=0) + np.log(grid[1] - grid[0])
        assert np.allclose(integrated[chain, draw], ref, atol=1e-6)
    observed = model.observed_RVs[0].name
    rows_summed = E.city_sums(idata.log_likelihood[observed].transpose("chain", "draw", "obs").values, city_idx,
                              n_city)
    joint_k = S.loo_of(idata.posterior, rows_summed)[0]["share_k_above_0.7"]
    integrated_k = S.city_loo(model, idata)[0]["share_k_above_0.7"]
    assert joint_k > 0.2 and integrated_k <= 0.02, (joint_k, integrated_k)


def test_city_loo_computes_the_pointwise_terms_a_fit_without_city_scales_needs():
    """Fits are sampled without a pointwise log-likelihood group; ``city_loo`` of a structured fit without
    city scales (whose per-city terms are its rows' terms summed) adds it, and its terms are those sums."""
    from bayesnqp.bayes import error_selection as S
    from bayesnqp.bayes.sampling import SamplerSettings

    frame, _ = simulate.calibration_panel("iid", seed=3)
    spec = load_spec("bayes_table3_col4")
    spec = spec.replace(options={**spec.options, "errors": ["ar1"], "errors_by_loo": []})
    model, idata, _ = panel.fit_spec(frame, spec, ("develop",), SamplerSettings(draws=200, tune=200, chains=2,
                                                                                  seed=5))
    assert "log_likelihood" not in idata.groups()
    stats, terms = S.city_loo(model, idata)
    assert "log_likelihood" in idata.groups()
    observed = model.observed_RVs[0].name
    city_idx = np.asarray(model["city_idx"].get_value())
    per_city = E.city_sums(idata.log_likelihood[observed].transpose("chain", "draw", "obs").values, city_idx,
                           len(model.coords["city"]))
    assert np.allclose(S.loo_of(idata.posterior, per_city)[1], terms)
    assert np.isfinite(stats["elpd_loo"]) and len(terms) == len(model.coords["city"])
