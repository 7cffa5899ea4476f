"""The disk-cacheable Student-t likelihood (``bayes/student_t.py``) against pm.StudentT and scipy."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import special

from bayesnqp.bayes import student_t as S


def test_digamma_matches_scipy():
    x = np.concatenate([np.geomspace(1e-3, 1e4, 400), np.linspace(0.5, 30, 300)])
    got = np.array([S.digamma(v) for v in x])
    assert np.allclose(got, special.digamma(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_log_density_and_gradient_match_pm_student_t(mode):
    rng = np.random.default_rng(1)
    value = rng.standard_t(4.0, size=50) * 0.3 + 0.1
    mu_v, sigma_v = rng.normal(size=50) * 0.1, 0.3 + rng.uniform(size=50)
    mu, sigma, nu = pt.dvector("mu"), pt.dvector("sigma"), pt.dscalar("nu")
    ours = S.student_t_logp(pt.as_tensor_variable(value), mu, sigma, nu).sum()
    ref = pm.logp(pm.StudentT.dist(nu=nu, mu=mu, sigma=sigma), value).sum()
    f = pytensor.function([mu, sigma, nu], [ours, *pt.grad(ours, [mu, sigma, nu])], mode=mode)
    g = pytensor.function([mu, sigma, nu], [ref, *pt.grad(ref, [mu, sigma, nu])], mode=mode)
    # FAST_RUN runs PyTensor's C digamma in both graphs (accurate to about 1e-10); NUMBA compares this
    # module's digamma with scipy's
    tol = 1e-12 if mode == "NUMBA" else 1e-9
    for nu_v in (0.7, 3.0, 25.0, 400.0):
        for a, b in zip(f(mu_v, sigma_v, nu_v), g(mu_v, sigma_v, nu_v)):
            assert np.allclose(a, b, rtol=tol, atol=tol), nu_v


def test_the_numba_log_density_and_gradient_have_a_disk_cache_key():
    """The point of the module: PyTensor can key (and so cache on disk) the compiled log-density and
    gradient of a Student-t model, which it cannot with pm.StudentT (its gradient calls scipy's digamma
    through a function pointer)."""
    from pytensor import config
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    if not config.numba__cache:
        pytest.skip("PyTensor's numba cache is turned off (PYTENSOR_FLAGS=numba__cache=False): nothing is keyed")

    def keyed(build) -> bool:
        with pm.Model() as model:
            nu = pm.Gamma("nu", 2.0, 0.1)
            mu = pm.Normal("mu")
            build("y", mu=mu, sigma=1.0, nu=nu, observed=np.array([0.1, -0.3, 2.0]))
        logp = model.logp()
        fn = pytensor.function(model.value_vars, [logp, *pt.grad(logp, model.value_vars)], mode="NUMBA")
        return CACHED_SRC_FUNCTIONS.get(getattr(fn.vm.jit_fn, "py_func", None)) is not None

    assert keyed(S.StudentT)
    assert not keyed(lambda name, **kw: pm.StudentT(name, **kw))  # why this module exists


def test_digamma_edges():
    assert S.digamma(0.0) == -np.inf and np.isnan(S.digamma(-1.0)) and np.isnan(S.digamma(np.nan))
    assert S.digamma(np.inf) == np.inf


@pytest.mark.parametrize("size", [20000, None])
def test_posterior_predictive_draws_have_the_student_t_law(size):
    """One independent draw per element, with or without an explicit size."""
    from scipy import stats

    rng = np.random.default_rng(3)
    draws = S.student_t_random(np.full(20000, 1.0), np.full(20000, 2.0), 5.0, rng=rng, size=size)
    assert draws.shape == (20000,)
    assert stats.kstest((draws - 1.0) / 2.0, stats.t(5.0).cdf).pvalue > 0.01
