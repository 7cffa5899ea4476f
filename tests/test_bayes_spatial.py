"""Spatial Bayesian models: structure (no MCMC) and recovery on simulated data (lattice with a second
component and an island, and the bundled 280-city contiguity graph)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import pytest
import scipy.optimize as so
import scipy.stats as st

from bayesnqp import spatial_linalg
from bayesnqp.bayes import car as CAR
from bayesnqp.bayes import sdm as SDM
from bayesnqp.bayes.result import BayesResult
from bayesnqp.bayes.sampling import SamplerSettings
from bayesnqp.bayes.spec import load_spec
from bayesnqp.checks import spatial as C
from bayesnqp.checks.diagnostics import diagnose
from bayesnqp.conventions import CI_PROB, hdi_bounds
from bayesnqp.errors import InputError
from bayesnqp.results import AnalysisResult, coef_frame
from test_spatial_effects import make_graph, real_weights

CONTROLS = ["develop"]
# tune 1000: what every spatial spec sets (a value given here would win over the spec)
FAST = SamplerSettings(draws=500, tune=1000, chains=2, seed=11)


def simulate(weights, t=8, rho=0.4, beta=(1.0, -0.5), theta=(0.5, 0.3), sigma=0.5, seed=1, model="sdm"):
    """y_t = rho W y_t + X_t beta + W X_t theta + mu + nu_t + e_t (SEM: autoregressive error)."""
    rng = np.random.default_rng(seed)
    n = weights.n
    w = weights.row_standardised.toarray()
    x = rng.normal(size=(n, t, 2))
    mu = rng.normal(size=n) + 0.5 * x[..., 0].mean(axis=1)  # city effects correlated with x
    nu = rng.normal(size=t)
    a = np.eye(n) - rho * w
    beta, theta = np.asarray(beta), np.asarray(theta)
    y = np.zeros((n, t))
    for k in range(t):
        e = sigma * rng.normal(size=n)
        xb = x[:, k] @ beta + (w @ x[:, k] @ theta if model in ("sdm", "slx") else 0.0) + mu + nu[k]
        if model in ("sdm", "sar"):
            y[:, k] = np.linalg.solve(a, xb + e)
        elif model == "sem":
            y[:, k] = xb + np.linalg.solve(a, e)
        else:
            y[:, k] = xb + e
    return _frame(weights, y, x)


def _frame(weights, y, x):
    years = list(range(2013, 2013 + y.shape[1]))
    idx = pd.MultiIndex.from_product([list(weights.ids), years], names=["city", "year"])
    return pd.DataFrame({"nqp": y.ravel(), "agglomeration": x[..., 0].ravel(), "develop": x[..., 1].ravel()},
                        index=idx)


def simulate_bym2(weights, t=8, beta=(1.0, -0.5), sigma_city=1.0, rho=0.7, sigma=0.5, seed=2):
    rng = np.random.default_rng(seed)
    n = weights.n
    a = weights.binary.toarray()
    q = np.diag(a.sum(axis=1)) - a
    scale = CAR.bym2_scaling_factors(weights)
    u = np.zeros(n)
    for c in range(weights.n_components):
        idx = np.flatnonzero(weights.components == c)
        if idx.size > 1:
            cov = np.linalg.pinv(q[np.ix_(idx, idx)])
            u[idx] = rng.multivariate_normal(np.zeros(idx.size), cov) / np.sqrt(scale[idx])
    island = weights.n_neighbors == 0
    v = rng.normal(size=n)
    b = sigma_city * np.where(island, v, np.sqrt(rho) * u + np.sqrt(1 - rho) * v)
    x = rng.normal(size=(n, t, 2))
    gamma = rng.normal(size=t)
    y = 0.3 + x @ np.asarray(beta) + b[:, None] + gamma[None, :] + sigma * rng.normal(size=(n, t))
    return _frame(weights, y, x), b


def ml_sdm(frame, weights, model="sdm"):
    """ML SDM / SAR with two-way within transformation (concentrated likelihood in rho), with scipy."""
    data = SDM.sdm_data(frame, ["agglomeration", *CONTROLS], weights)
    n, t, p = data.x.shape
    xs = np.concatenate([data.x, data.wx], axis=2) if model == "sdm" else data.x
    xm = xs.reshape(n * t, -1)
    y, wy = data.y.ravel(), data.wy.ravel()
    lam = weights.eigenvalues
    lo, hi = weights.rho_bounds

    def neg(rho):  # Lee & Yu (2010) transformation for city effects, year dummies; concentrated in rho
        r = y - rho * wy
        coef, *_ = np.linalg.lstsq(xm, r, rcond=None)
        ssr = np.sum((r - xm @ coef) ** 2)
        return 0.5 * n * (t - 1) * np.log(ssr) - (t - 1) * np.sum(np.log1p(-rho * lam))

    rho = so.minimize_scalar(neg, bounds=(lo + 1e-6, hi - 1e-6), method="bounded", options={"xatol": 1e-10}).x
    coef, *_ = np.linalg.lstsq(xm, y - rho * wy, rcond=None)
    return rho, coef[:p], (coef[p:] if model == "sdm" else np.zeros(p))


def _in_interval(row, value, z=3.0):
    """Truth within z posterior sds of the mean (94% intervals miss 6% of true values by design)."""
    return abs(row["mean"] - value) <= z * row["sd"]


# ---------------------------------------------------------------------------------------------------
# structure (no MCMC)
# ---------------------------------------------------------------------------------------------------
def test_specs_load():
    for name in ("bayes_car", "bayes_car_leroux", "bayes_sdm", "bayes_sar", "bayes_sem", "bayes_slx"):
        spec = load_spec(name)
        assert spec.id == name


def _bym2_cov(w, sigma, rho):
    """Dense BYM2 prior covariance: sigma^2 (rho/s_c Q_c^+ + (1 - rho) I) per component, sigma^2 on islands."""
    a = w.binary.toarray()
    q = np.diag(a.sum(axis=1)) - a
    scale = CAR.bym2_scaling_factors(w)
    cov = np.zeros((w.n, w.n))
    for c in range(w.n_components):
        idx = np.flatnonzero(w.components == c)
        if idx.size == 1:
            cov[idx[0], idx[0]] = sigma**2
            continue
        block = rho / scale[idx[0]] * np.linalg.pinv(q[np.ix_(idx, idx)]) + (1 - rho) * np.eye(idx.size)
        cov[np.ix_(idx, idx)] = sigma**2 * block
    return cov


@pytest.mark.parametrize("kind,param", [("bym2", "centred"), ("bym2", "noncentred"), ("leroux", "auto")])
def test_car_model_structure_and_prior_predictive(kind, param):
    w = make_graph()
    frame, _ = simulate_bym2(w)
    spec = load_spec("bayes_car" if kind == "bym2" else "bayes_car_leroux")
    spec = spec.replace(options={**spec.options, "parametrisation": param})
    model = CAR.build_car_model(frame, CONTROLS, w, spec, kind)
    assert model.named_vars_to_dims["city_effect"] == ("city",)
    assert model.named_vars_to_dims["year_effect"] == ("year",)
    assert model.named_vars_to_dims["nqp"] == ("city", "year")
    logp = model.compile_logp()(model.initial_point())
    assert np.isfinite(logp)
    with model:
        prior = pm.sample_prior_predictive(200, random_seed=3)
    assert prior.prior["city_effect"].shape == (1, 200, w.n)
    assert prior.prior_predictive["nqp"].shape == (1, 200, w.n, 8)
    assert np.isfinite(prior.prior_predictive["nqp"]).all()
    assert np.std(prior.prior["city_effect"].values) > 0


@pytest.mark.parametrize("param", ["centred", "noncentred"])
def test_bym2_prior_draws_have_the_dense_bym2_covariance(param):
    """Both parametrisations (spectral centred, edge-list non-centred) give the same BYM2 prior."""
    w = make_graph()
    frame, _ = simulate_bym2(w)
    spec = load_spec("bayes_car")
    spec = spec.replace(options={**spec.options, "parametrisation": param},
                        priors={**spec.priors, "sigma_city": {"dist": "halfnormal", "sigma": 1.0}})
    model = CAR.build_car_model(frame, CONTROLS, w, spec, "bym2")
    sigma, rho, b = pm.draw([model["sigma_city_std"], model["rho"], model["city_effect"] / float(np.std(frame["nqp"]))],
                            draws=6000, random_seed=9)
    # E[(b/sigma)(b/sigma)'] = E[rho/s Q^+ + (1 - rho) I] = covariance at sigma = 1, rho = E[rho] = 1/2
    z = b / sigma[:, None]
    emp = z.T @ z / len(z)
    ref = _bym2_cov(w, 1.0, 0.5)
    assert np.allclose(np.diag(emp), np.diag(ref), rtol=0.12)
    assert np.abs(emp - ref).max() < 0.12


def test_spectral_bym2_logp_matches_dense_gaussian():
    w = make_graph()
    sigma, rho = 0.8, 0.6
    with pm.Model(coords={"city": list(w.ids)}):
        b = CAR._bym2_spectral_dist("b", pt.constant(sigma), pt.constant(rho), w, CAR.bym2_scaling_factors(w), "city")
    value = np.random.default_rng(12).normal(size=w.n)
    ref = st.multivariate_normal(np.zeros(w.n), _bym2_cov(w, sigma, rho)).logpdf(value)
    assert pm.logp(b, value).eval() == pytest.approx(ref, rel=1e-9)


def _standardised(frame, w):
    y, x, _ = CAR.panel_arrays(frame, ["nqp", "agglomeration", *CONTROLS], w, "test")
    return (y - y.mean()) / y.std(), (x - x.reshape(-1, 2).mean(axis=0)) / x.reshape(-1, 2).std(axis=0)


@pytest.mark.parametrize("t,mundlak", [(8, False), (8, True), (1, False)])
def test_integrated_bym2_likelihood_is_the_dense_gaussian_marginal(t, mundlak):
    """The integrated form's likelihood parts sum to the density of the whole panel with the BYM2 city
    effects integrated out by brute force: vec(y) ~ N(mean, Cov(b) kron 11' + sigma^2 I), on the lattice
    with a second component and an island; with and without Mundlak terms, and for a single year (no
    within part)."""
    w = make_graph()
    frame, _ = simulate_bym2(w, t=t)
    ys, xs = _standardised(frame, w)
    n = ys.shape[0]
    alpha, beta, gamma, sigma, sigma_city, rho = 0.1, np.array([0.3, -0.2]), np.array([0.2, 0.1]), 0.7, 0.9, 0.6
    year = np.linspace(-0.4, 0.4, t) if t > 1 else np.zeros(1)  # zero-sum
    spec = load_spec("bayes_car")
    spec = spec.replace(options={**spec.options, "parametrisation": "integrated", "mundlak": mundlak})
    model = CAR.build_car_model(frame, CONTROLS, w, spec, "bym2")
    assert {v.name for v in model.observed_RVs} == ({"nqp_within", "nqp_between"} if t > 1 else {"nqp_between"})
    point = {"alpha": alpha, "beta_std": beta, "sigma_std": sigma, "sigma_city_std": sigma_city,
             "rho": rho, "year_effect_std": year, "sigma_year": 1.0, "gamma": gamma}
    fixed = pm.do(model, {rv.name: np.asarray(point[rv.name], dtype=float) for rv in model.free_RVs})
    value = float(fixed.compile_logp(vars=fixed.observed_RVs)({}))
    slopes = beta + gamma if mundlak else beta
    level = alpha + xs.mean(axis=1) @ slopes
    mean = level[:, None] + (xs - xs.mean(axis=1, keepdims=True)) @ beta + year[None, :]
    cov = np.kron(_bym2_cov(w, sigma_city, rho), np.ones((t, t))) + sigma**2 * np.eye(n * t)
    ref = st.multivariate_normal(mean.ravel(), cov).logpdf(ys.ravel())
    assert value == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("mundlak", [False, True])
def test_integrated_city_effects_are_draws_from_the_exact_conditional(mundlak):
    """city_effect | y, parameters: mean and covariance of the drawn effects against the dense Gaussian
    conditional, at fixed parameter values repeated as 4000 posterior draws (with Mundlak terms, the city
    level is alpha + xbar (beta + gamma))."""
    import xarray as xr

    w = make_graph()
    frame, _ = simulate_bym2(w)
    ys, xs = _standardised(frame, w)
    n, t = ys.shape
    alpha, beta, sigma, sigma_city, rho = 0.1, np.array([0.3, -0.2]), 0.7, 0.9, 0.6
    gamma = np.array([0.5, 0.25])
    year = np.linspace(-0.4, 0.4, t)
    s = 4000
    scalar = {"alpha": alpha, "sigma_std": sigma, "sigma_city_std": sigma_city, "rho": rho}
    post = xr.Dataset({k: (("chain", "draw"), np.full((1, s), v)) for k, v in scalar.items()}
                      | {"beta_std": (("chain", "draw", "coef"), np.tile(beta, (1, s, 1))),
                         "year_effect_std": (("chain", "draw", "year"), np.tile(year, (1, s, 1)))}
                      | ({"gamma": (("chain", "draw", "coef"), np.tile(gamma, (1, s, 1)))} if mundlak else {}),
                      coords={"chain": [0], "draw": np.arange(s), "year": np.arange(2013, 2013 + t)})
    idata = az.InferenceData(posterior=post, observed_data=xr.Dataset())
    basis = CAR.bym2_basis(w, CAR.bym2_scaling_factors(w))
    CAR.draw_integrated_city_effects(idata, ys, xs, basis, 2.0, "nqp", list(w.ids), seed=3)
    b = idata.posterior["city_effect"].values[0] / 2.0
    prior = _bym2_cov(w, sigma_city, rho)
    level = alpha + xs.mean(axis=1) @ (beta + gamma if mundlak else beta)
    gain = prior @ np.linalg.inv(prior + sigma**2 / t * np.eye(n))
    mean, cov = gain @ (ys.mean(axis=1) - level), prior - gain @ prior
    se = np.sqrt(np.diag(cov) / s)
    assert np.all(np.abs(b.mean(axis=0) - mean) < 4.5 * se)
    assert np.abs(np.cov(b.T) - cov).max() < 0.15 * np.diag(cov).max()
    # the pointwise log-likelihood given the drawn effects, as the centred form reports it
    ll = idata.log_likelihood["nqp"].values[0]
    mu = (level[None, :] + b)[:, :, None] + ((xs - xs.mean(axis=1, keepdims=True)) @ beta)[None] + year
    assert np.allclose(ll, st.norm(mu, sigma).logpdf(ys[None]))


def test_icar_customdist_logp_and_generative_draws_agree():
    w = make_graph()
    with pm.Model(coords={"city": list(w.ids)}):
        u = CAR._icar_dist("u_raw", w, "city")
    value = np.random.default_rng(4).normal(size=w.n)
    assert pm.logp(u, value).eval() == pytest.approx(CAR.icar_logp_numpy(value, w))
    # draws from random() have covariance Q^+ + sum_c 1_c 1_c'/n_c, i.e. the inverse of the kernel's precision
    draws = pm.draw(u, draws=6000, random_seed=5)
    a = w.binary.toarray()
    prec = np.diag(a.sum(axis=1)) - a
    for c in range(w.n_components):
        idx = w.components == c
        prec[np.ix_(idx, idx)] += 1.0 / idx.sum()
    cov = np.linalg.inv(prec)
    emp = np.cov(draws.T)
    assert np.allclose(np.diag(emp), np.diag(cov), rtol=0.08)
    assert np.abs(emp - cov).max() < 0.08


def test_leroux_logp_matches_dense_gaussian():
    w = make_graph()
    lam, sigma = 0.65, 1.3
    with pm.Model(coords={"city": list(w.ids)}):
        u = CAR._leroux_dist("u", pt.constant(lam), pt.constant(sigma), w, "city")
    value = np.random.default_rng(6).normal(size=w.n)
    a = w.binary.toarray()
    prec = ((1 - lam) * np.eye(w.n) + lam * (np.diag(a.sum(axis=1)) - a)) / sigma**2
    ref = st.multivariate_normal(np.zeros(w.n), np.linalg.inv(prec)).logpdf(value)
    assert pm.logp(u, value).eval() == pytest.approx(ref, rel=1e-9)
    draws = pm.draw(u, draws=6000, random_seed=7)
    assert np.allclose(np.var(draws, axis=0), np.diag(np.linalg.inv(prec)), rtol=0.1)


@pytest.mark.parametrize("form", ["lee_yu_city", "lee_yu_two_way", "direct"])
def test_sdm_logp_differences_match_numpy(form):
    """Between two rho values the model's log-density changes by the Jacobian + Gaussian kernel only."""
    w = make_graph()
    frame = simulate(w)
    data = SDM.sdm_data(frame, ["agglomeration", *CONTROLS], w)
    spec = load_spec("bayes_sdm")
    model = SDM.build_sdm_model(data, w, spec.replace(options={**spec.options, "likelihood_form": form}), "sdm")
    fn = model.compile_logp(jacobian=False)
    point = model.initial_point()
    lo, hi = w.rho_bounds
    y_sd = np.std(data.y)
    t = len(data.years)
    vals = []
    for rho in (-0.3, 0.5):
        pt_ = dict(point)
        frac = (rho - lo) / (hi - lo)
        pt_["rho_interval__"] = np.log(frac / (1 - frac))  # PyMC's interval transform
        vals.append(fn(pt_))
    # at the initial point beta = theta = 0 and sigma_std = 1 (on the standardised scale)
    ref = []
    for rho in (-0.3, 0.5):
        r = (data.y - rho * data.wy) / y_sd
        logdet = spatial_linalg.log_det(rho, w.eigenvalues)
        jac = {"direct": t * logdet, "lee_yu_city": (t - 1) * logdet,
               "lee_yu_two_way": (t - 1) * (logdet - np.log1p(-rho))}[form]
        ref.append(jac - 0.5 * np.sum(r**2))
    assert point["sigma_std_log__"] == pytest.approx(0.0)
    assert vals[1] - vals[0] == pytest.approx(ref[1] - ref[0], rel=1e-9)


def test_sdm_prior_keeps_rho_admissible():
    w = make_graph()
    data = SDM.sdm_data(simulate(w), ["agglomeration", *CONTROLS], w)
    model = SDM.build_sdm_model(data, w, load_spec("bayes_sdm"), "sdm")
    rho = pm.draw(model["rho"], draws=2000, random_seed=1)
    lo, hi = w.rho_bounds
    assert rho.min() > lo and rho.max() < hi and rho.min() < lo / 2


def test_unbalanced_or_mismatched_panel_is_rejected():
    w = make_graph()
    frame = simulate(w)
    with pytest.raises(InputError, match="not in the panel"):
        SDM.sdm_data(frame.drop(index=w.ids[0], level="city"), ["agglomeration"], w)
    with pytest.raises(InputError, match="balanced"):
        SDM.sdm_data(frame.iloc[1:], ["agglomeration"], w)


# ---------------------------------------------------------------------------------------------------
# recovery (real NUTS)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdm_case():
    w = make_graph()
    frame = simulate(w, rho=0.4, seed=1)
    rho, beta, theta = ml_sdm(frame, w)
    coefs = coef_frame(["agglomeration", "develop", "W_agglomeration", "W_develop", "rho"],
                       [beta[0], beta[1], theta[0], theta[1], rho], [0.05] * 5, [0.0] * 5, [1.0] * 5,
                       [0.0] * 5, [0.0] * 5)
    oracle = AnalysisResult("sdm_ml", "ML SDM", coefs, len(frame), "ml")
    res = SDM.fit_sdm(frame, CONTROLS, w, FAST, oracle, model="sdm")
    return w, frame, res, (rho, beta, theta)


@pytest.mark.recovery
def test_sdm_recovers_truth_and_ml(sdm_case):
    w, frame, res, (rho_ml, beta_ml, theta_ml) = sdm_case
    s = res.summary
    assert res.diagnostics.divergences == 0 and res.diagnostics.max_r_hat < 1.02
    truth = {"rho": 0.4, "beta[agglomeration]": 1.0, "beta[develop]": -0.5, "theta[agglomeration]": 0.5,
             "theta[develop]": 0.3}
    for label, value in truth.items():
        assert _in_interval(s.loc[label], value), label
    # posterior means against the ML fit (weak priors): within a fraction of a posterior sd
    ml = {"rho": rho_ml, "beta[agglomeration]": beta_ml[0], "beta[develop]": beta_ml[1],
          "theta[agglomeration]": theta_ml[0], "theta[develop]": theta_ml[1]}
    for label, value in ml.items():
        assert abs(s.loc[label, "mean"] - value) < 0.35 * s.loc[label, "sd"], label
    # effects of the truth, from a dense inverse
    wd = w.row_standardised.toarray()
    inv = np.linalg.inv(np.eye(w.n) - 0.4 * wd)
    for term, b, t in [("agglomeration", 1.0, 0.5), ("develop", -0.5, 0.3)]:
        smat = inv @ (b * np.eye(w.n) + t * wd)
        direct, total = np.trace(smat) / w.n, smat.sum() / w.n
        assert _in_interval(s.loc[f"direct_effect[{term}]"], direct)
        assert _in_interval(s.loc[f"total_effect[{term}]"], total)
        assert _in_interval(s.loc[f"indirect_effect[{term}]"], total - direct)
    # agreement table against the ML oracle, rho bounds and the paper's rho
    assert set(res.agreement.index) == {"agglomeration", "develop", "W_agglomeration", "W_develop", "rho"}
    assert res.extra["paper_rho_admissible"] is False
    assert res.extra["rho_bounds"][0] == pytest.approx(w.rho_bounds[0])
    tab = res.tables["direct_effect_agglomeration"]
    assert list(tab.index) == list(w.ids) and (tab["ci_width"] > 0).all()
    assert res.tables["indirect_effect_agglomeration"].loc[w.ids[-1], "mean"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.recovery
@pytest.mark.parametrize("model", ["sar", "sem", "slx"])
def test_sar_sem_slx_recover_truth(model):
    w = make_graph()
    rho = 0.0 if model == "slx" else 0.5
    frame = simulate(w, rho=rho, seed=21, model=model)
    res = SDM.fit_sdm(frame, CONTROLS, w, FAST, None, model=model)
    s = res.summary
    assert res.diagnostics.divergences == 0 and res.diagnostics.max_r_hat < 1.02
    assert _in_interval(s.loc["beta[agglomeration]"], 1.0) and _in_interval(s.loc["beta[develop]"], -0.5)
    if model != "slx":
        assert _in_interval(s.loc["rho"], rho)
    else:
        assert _in_interval(s.loc["theta[agglomeration]"], 0.5)
    if model == "sem":  # no global spillover: direct = beta, indirect = 0
        assert np.allclose(res.idata.posterior["indirect_effect"], 0.0, atol=1e-10)


@pytest.mark.recovery
def test_sdm_on_real_geography():
    w = real_weights()
    assert w is not None, "the bundled geography is missing"
    frame = simulate(w, t=5, rho=0.3, seed=8)
    res = SDM.fit_sdm(frame, CONTROLS, w, FAST, None, model="sdm")
    s = res.summary
    for label, value in {"rho": 0.3, "beta[agglomeration]": 1.0, "theta[agglomeration]": 0.5}.items():
        assert _in_interval(s.loc[label], value), label
    assert res.extra["paper_rho_admissible"] is False
    assert res.extra["rho_bounds"][0] > -2.1086


@pytest.fixture(scope="module")
def car_case():
    w = make_graph()
    frame, b = simulate_bym2(w)
    res = CAR.fit_car(frame, CONTROLS, w, FAST.replace(target_accept=0.9), None, kind="bym2")
    return w, frame, b, res


@pytest.mark.recovery
def test_bym2_recovers_beta_and_city_effects(car_case):
    w, frame, b, res = car_case
    s = res.summary
    assert res.diagnostics.divergences == 0
    assert _in_interval(s.loc["beta[agglomeration]"], 1.0) and _in_interval(s.loc["beta[develop]"], -0.5)
    assert _in_interval(s.loc["sigma"], 0.5)
    est = res.tables["city_effects"]["mean"].to_numpy()
    assert np.corrcoef(est, b)[0, 1] > 0.9
    assert set(res.extra["scaling_factors"]) == {"0", "1"}
    assert "log_likelihood" in res.idata.groups()


@pytest.mark.recovery
def test_leroux_recovers_beta_and_city_effects():
    w = make_graph()
    frame, b = simulate_bym2(w, seed=9)
    res = CAR.fit_car(frame, CONTROLS, w, FAST.replace(target_accept=0.9), None, kind="leroux")
    s = res.summary
    assert _in_interval(s.loc["beta[agglomeration]"], 1.0)
    assert np.corrcoef(res.tables["city_effects"]["mean"].to_numpy(), b)[0, 1] > 0.9


def _nonspatial_result(frame, w, draws=400, seed=0):
    """A two-way FE fit (numpy LSDV) with Gaussian draws around it, shaped like a posterior with mu."""
    y = frame["nqp"].to_numpy()
    x = frame[["agglomeration", *CONTROLS]].to_numpy()
    city = pd.get_dummies(frame.index.get_level_values("city")).to_numpy(float)
    year = pd.get_dummies(frame.index.get_level_values("year")).to_numpy(float)[:, 1:]
    design = np.column_stack([x, city, year])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    sigma = np.sqrt(resid @ resid / (len(y) - design.shape[1]))
    rng = np.random.default_rng(seed)
    n, t = w.n, frame.index.get_level_values("year").nunique()
    fit = (design @ coef).reshape(n, t)
    mu = fit[None, None] + 0.01 * sigma * rng.normal(size=(1, draws, n, t))
    years = sorted(frame.index.get_level_values("year").unique())
    idata = az.from_dict(posterior={"mu": mu, "sigma": np.full((1, draws), sigma)},
                         dims={"mu": ["city", "year"]}, coords={"city": list(w.ids), "year": years})
    return BayesResult("bayes_twfe", "two-way", idata, pd.DataFrame(), diagnose(idata, ["sigma"]))


@pytest.mark.recovery
def test_ppc_moran_flags_the_non_spatial_model(sdm_case, car_case):
    w, frame, sdm, _ = sdm_case
    frame_lag = simulate(w, rho=0.7, seed=1)  # strong lag: a non-spatial two-way model leaves autocorrelation
    out = C.ppc_moran({"twfe": _nonspatial_result(frame_lag, w)}, w, frame_lag, n_draws=100)
    t = out["table"].loc["twfe"]
    assert (t["moran_i"] > 0.1).all() and (t["ppp"] < 0.05).mean() >= 0.75
    out = C.ppc_moran({"sdm": sdm, "twfe": _nonspatial_result(frame, w)}, w, frame, n_draws=100)
    tab = out["table"]
    assert out["id"] == "ppc_moran" and len(tab) == 16
    assert (tab.loc["sdm"]["ppp"] > 0.01).mean() >= 0.75  # the true model leaves white innovations
    assert out["figure"].axes
    wc, frame_c, _, car = car_case
    out = C.ppc_moran({"car": car}, wc, frame_c, n_draws=50)
    assert np.isfinite(out["table"]["moran_i"]).all()


def test_ppc_moran_interval_is_the_hdi():
    """ppc_moran's interval is the report's one convention: the CI_PROB HDI of the draws of I per year."""
    w = make_graph()
    frame = simulate(w, t=4, seed=3)
    res = _nonspatial_result(frame, w, draws=200)
    out = C.ppc_moran({"twfe": res}, w, frame, n_draws=100, seed=5)
    resid, _, _ = C.residual_draws(res, w, frame, 100, 5)  # the same draws ppc_moran takes
    low, high = hdi_bounds(C.moran_i(resid, w))
    tab = out["table"].loc["twfe"]
    np.testing.assert_array_equal(tab["ci_low"].to_numpy(), low)
    np.testing.assert_array_equal(tab["ci_high"].to_numpy(), high)
    assert f"{int(CI_PROB * 100)}% HDI" in out["figure"].axes[0].get_title()


@pytest.mark.recovery
def test_spatial_compare_prefers_the_true_sdm(sdm_case):
    w, frame, sdm, _ = sdm_case
    slx = SDM.fit_sdm(frame, CONTROLS, w, FAST, None, model="slx")
    out = C.spatial_compare({"sdm": sdm, "slx": slx, "twfe": _nonspatial_result(frame, w)}, w, frame,
                            n_draws=400)
    assert out["id"] == "bayes_spatial_compare"
    table = out["table"]
    assert table.index[0] == "sdm"
    assert out["loo"]["sdm"]["pointwise"].startswith("exact Gaussian conditional")
    assert np.isfinite(table["elpd_loo"]).all()


@pytest.mark.recovery
def test_bym2_with_mundlak_terms_matches_the_two_way_fe_estimate():
    """City effects correlated with x: Mundlak city means make beta's posterior the within estimate."""
    w = make_graph()
    rng = np.random.default_rng(14)
    n, t = w.n, 8
    x = rng.normal(size=(n, t, 2))
    x[..., 0] += rng.normal(size=(n, 1)) * 1.5
    b = 1.2 * x[..., 0].mean(axis=1) + 0.5 * rng.normal(size=n)
    y = x @ np.array([1.0, -0.5]) + b[:, None] + rng.normal(size=t)[None, :] + 0.5 * rng.normal(size=(n, t))
    frame = _frame(w, y, x)
    # two-way FE (LSDV) by numpy as the oracle
    design = np.column_stack([frame[["agglomeration", "develop"]].to_numpy(),
                              pd.get_dummies(frame.index.get_level_values("city")).to_numpy(float),
                              pd.get_dummies(frame.index.get_level_values("year")).to_numpy(float)[:, 1:]])
    coef, *_ = np.linalg.lstsq(design, frame["nqp"].to_numpy(), rcond=None)
    resid = frame["nqp"].to_numpy() - design @ coef
    cov = resid @ resid / (len(resid) - design.shape[1]) * np.linalg.inv(design.T @ design)
    se = np.sqrt(np.diag(cov))[:2]
    oracle = AnalysisResult("twfe", "TWFE", coef_frame(["agglomeration", "develop"], coef[:2], se, [0, 0], [1, 1],
                                                       [0, 0], [0, 0]), len(frame), "iid")
    spec = load_spec("bayes_car")
    spec = spec.replace(options={**spec.options, "mundlak": True})
    res = CAR.fit_car(frame, CONTROLS, w, FAST, oracle, kind="bym2", spec=spec)
    assert res.meant_to_match
    assert (res.agreement["z"].abs() < 0.3).all(), res.agreement
    assert res.diagnostics.divergences == 0


@pytest.mark.recovery
def test_spatial_compare_with_car_uses_its_likelihood_in_data_units(car_case):
    w, frame, _, car = car_case
    out = C.spatial_compare({"car": car, "twfe": _nonspatial_result(frame, w)}, w, frame)
    loo = out["loo"]
    assert loo["car"]["pointwise"] == "likelihood given latent effects"
    # both on the nqp scale: the elpd per observation is near the Gaussian entropy of sigma = 0.5
    per_obs = loo["car"]["elpd_loo"] / len(frame)
    assert per_obs == pytest.approx(-0.5 * np.log(2 * np.pi * np.e * 0.25), abs=0.15)
    assert out["table"] is not None and set(out["table"].index) == {"car", "twfe"}


@pytest.mark.parametrize("kind,param", [("bym2", "centered"), ("leroux", "centered"), ("leroux", "integrated")])
def test_an_unknown_car_parametrisation_is_refused(kind, param):
    """A typo, and a BYM2-only form asked of a Leroux model, are refused rather than ignored."""
    w = make_graph()
    frame, _ = simulate_bym2(w)
    spec = load_spec("bayes_car" if kind == "bym2" else "bayes_car_leroux")
    spec = spec.replace(options={**spec.options, "parametrisation": param})
    with pytest.raises(InputError, match="parametrisation .*must be"):
        CAR.build_car_model(frame, CONTROLS, w, spec, kind)
