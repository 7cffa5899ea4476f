"""Power-scaling sensitivity on models with exact posterior draws (conjugate Normal; no sampling)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytest

from bayesnqp import simulate
from bayesnqp.checks import sensitivity as sens
from bayesnqp.checks.flags import PSENS_THRESHOLD

N_OBS = 50


def _conjugate(y: np.ndarray, prior_sd: float, seed: int = 0, draws: int = 2000) -> az.InferenceData:
    """Exact posterior draws of mu for y ~ N(mu, 1), mu ~ N(0, prior_sd)."""
    precision = 1 / prior_sd**2 + len(y)
    mean = y.sum() / precision
    mu = np.random.default_rng(seed).normal(mean, 1 / np.sqrt(precision), size=(4, draws // 4))
    return az.from_dict(posterior={"mu": mu, "mu_twice": 2 * mu})


def _model(y: np.ndarray, prior_sd: float, *, as_potential: bool = False) -> pm.Model:
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, prior_sd)
        if as_potential:
            pm.Potential("loglik", pm.logp(pm.Normal.dist(mu, 1.0), y).sum())
        else:
            pm.Normal("y", mu, 1.0, observed=y)
    return model


@pytest.fixture
def y():
    return np.random.default_rng(1).normal(0.5, 1.0, N_OBS)


def test_a_weak_prior_is_not_flagged_and_the_likelihood_dominates(y):
    res = sens.power_scaling(_model(y, 10.0), _conjugate(y, 10.0), ["mu", "mu_twice"])
    assert res.available
    assert list(res.table.index) == ["mu", "mu_twice"]
    assert (res.table["prior"] < 0.01).all()
    assert (res.table["likelihood"] > PSENS_THRESHOLD).all()
    assert (res.table["diagnosis"] == "-").all()
    assert res.scaled_priors == ("mu",) and res.likelihood_terms == ("y",)


def test_a_prior_far_from_the_data_is_a_prior_data_conflict(y):
    y = y + 3.0
    res = sens.power_scaling(_model(y, 0.1), _conjugate(y, 0.1), ["mu"])
    row = res.table.loc["mu"]
    assert row["prior"] > PSENS_THRESHOLD and row["likelihood"] > PSENS_THRESHOLD
    assert row["diagnosis"] == "prior-data conflict"
    assert res.block()["flagged"] == ["mu"]


def test_a_likelihood_written_as_a_potential_gives_the_same_answer(y):
    idata = _conjugate(y, 0.3)
    a = sens.power_scaling(_model(y, 0.3), idata, ["mu"])
    b = sens.power_scaling(_model(y, 0.3, as_potential=True), idata, ["mu"], likelihood_potentials=["loglik"])
    np.testing.assert_allclose(a.table[["prior", "likelihood"]], b.table[["prior", "likelihood"]], rtol=1e-10)
    # the same potential counted as part of the prior is a different (wrong) check: it must not be silent
    c = sens.power_scaling(_model(y, 0.3, as_potential=True), idata, ["mu"])
    assert not c.available and "no likelihood" in c.reason


def test_log_densities_are_the_joint_densities_at_each_draw(y):
    idata = _conjugate(y, 2.0, draws=40)
    lp, ll = sens.log_densities(_model(y, 2.0), idata.posterior)
    mu = idata.posterior["mu"].values
    from scipy import stats

    np.testing.assert_allclose(lp.values, stats.norm(0, 2.0).logpdf(mu), rtol=1e-7)
    np.testing.assert_allclose(ll.values, stats.norm.logpdf(y[None, None, :], mu[..., None], 1.0).sum(-1),
                               rtol=1e-7)


def test_hierarchical_priors_are_not_scaled_and_vector_quantities_are_labelled():
    rng = np.random.default_rng(2)
    groups = ["a", "b", "c"]
    with pm.Model(coords={"g": groups}) as model:
        tau = pm.HalfNormal("tau", 1.0)
        theta = pm.Normal("theta", 0.0, tau, dims="g")
        pm.Normal("y", theta[np.repeat(np.arange(3), 20)], 1.0, observed=rng.normal(size=60))
    assert sens.hierarchical_priors(model) == ["theta"]
    idata = az.from_dict(posterior={"tau": np.abs(rng.normal(0.5, 0.1, (2, 200))),
                                    "theta": rng.normal(0, 0.2, (2, 200, 3))}, coords={"g": groups},
                         dims={"theta": ["g"]})
    res = sens.power_scaling(model, idata, ["theta", "tau"])
    assert res.available and res.scaled_priors == ("tau",)
    assert {"theta[a]", "theta[b]", "theta[c]", "tau"} == set(res.table.index)


def test_draws_that_do_not_fit_the_model_are_refused(y):
    idata = az.from_dict(posterior={"nu": np.zeros((2, 10))})
    res = sens.power_scaling(_model(y, 1.0), idata, ["nu"])
    assert not res.available and "lacks" in res.reason
    wrong = az.from_dict(posterior={"mu": np.zeros((2, 10, 3))})
    res = sens.power_scaling(_model(y, 1.0), wrong, ["mu"])
    assert not res.available and "shape" in res.reason
    assert res.block() == {"available": False, "reason": res.reason}


# --------------------------------------------------------------------------------------------------
# one real fit: the stage scales the exact densities of the model that produced the draws


def test_stage_checks_the_two_way_model_and_finds_its_weak_priors_harmless(tmp_path):
    from types import SimpleNamespace

    from bayesnqp import frequentist as fq
    from bayesnqp.bayes import table3
    from bayesnqp.bayes.sampling import SamplerSettings
    from bayesnqp.report.html import ReportBuilder
    from bayesnqp.stages.bayesian import prior_sensitivity
    from bayesnqp.stages.context import RunContext

    controls = ("develop", "finance")
    frame, _ = simulate.simulate_panel(n_city=40, n_year=6, seed=3, controls=controls)
    settings = SamplerSettings(draws=250, tune=300, chains=2, seed=5)
    oracles = {x.id: x for x in fq.table3(frame, controls=list(controls))}
    _honest, col4 = table3.fit_table3(frame, controls, settings, oracles, columns=(4,))  # the iid rebuild
    study = SimpleNamespace(frame=frame, roles=SimpleNamespace(controls=controls, instrument=None, mechanisms={}))
    report = ReportBuilder(tmp_path, title="t", synthetic=True, meta={})
    ctx = RunContext(study=study, settings=settings, report=report, out=tmp_path,  # type: ignore[arg-type]
                     summary={"analyses": {col4.id: {}}, "failed": {}})
    assert col4.likelihood_potentials == () and "nqp" in col4.model.named_vars
    prior_sensitivity(ctx, report.section("s", "s"), col4)
    block = ctx.summary["analyses"][col4.id]["prior_sensitivity"]
    assert ctx.summary["failed"] == {}
    assert block["available"], block
    assert "nqp" in block["likelihood_terms"] and "beta_std" in block["scaled_priors"]
    row = block["quantities"]["beta[agglomeration]"]
    assert row["prior"] < PSENS_THRESHOLD < row["likelihood"]
    assert row["diagnosis"] == "-"
    assert not [f for f in ctx.flagged if f.kind == "prior_sensitivity" and "agglomeration" in f.message]
    # a result without its model (sent between processes) says why the check is unavailable
    ctx.summary["analyses"][col4.id] = {}
    prior_sensitivity(ctx, report.section("s2", "s2"), col4.without_model())
    block = ctx.summary["analyses"][col4.id]["prior_sensitivity"]
    assert not block["available"] and "model" in block["reason"]


def test_a_parameter_the_data_do_not_inform_is_prior_driven(y):
    """nu enters no likelihood term: its posterior is its prior, which power-scaling the prior moves and
    power-scaling the likelihood does not (the situation of a loading identified only by the prior)."""
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 10.0)
        pm.Normal("nu", 0.0, 1.0)
        pm.Normal("y", mu, 1.0, observed=y)
    idata = _conjugate(y, 10.0, draws=4000)
    idata.posterior["nu"] = (("chain", "draw"), np.random.default_rng(9).normal(size=(4, 1000)))
    res = sens.power_scaling(model, idata, ["mu", "nu"])
    assert res.table.loc["nu", "prior"] > PSENS_THRESHOLD > res.table.loc["nu", "likelihood"]
    assert res.table.loc["nu", "diagnosis"] == "prior-driven"
    assert res.table.loc["mu", "diagnosis"] == "-"
