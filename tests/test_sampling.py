"""The sampling entry: settings validation, observed_data, the compile cache's data swap and its guard."""

import numpy as np
import pymc as pm
import pytest

from bayesnqp.bayes import sampling
from bayesnqp.bayes.sampling import SamplerSettings, constants_fingerprint, sample


def linear_model(x, y, baked_scale: float = 1.0) -> pm.Model:
    with pm.Model(coords={"obs": np.arange(len(x))}) as model:
        xd = pm.Data("x", x, dims="obs")
        yd = pm.Data("y_obs", y, dims="obs")
        b = pm.Normal("b", 0, 5)
        pm.Normal("y", b * xd * baked_scale, 1.0, observed=yd, dims="obs")
    return model


def test_settings_are_validated():
    with pytest.raises(ValueError, match="sampler"):
        SamplerSettings(sampler="stan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_accept"):
        SamplerSettings(target_accept=1.0)
    assert SamplerSettings().replace(draws=10).draws == 10


def test_fingerprint_sees_baked_constants_but_not_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    a = linear_model(x, 2 * x)
    b = linear_model(x + 1, 3 * x)  # other data, same structure
    c = linear_model(x, 2 * x, baked_scale=3.0)
    assert constants_fingerprint(a) == constants_fingerprint(b)
    assert constants_fingerprint(a) != constants_fingerprint(c)
    with pm.Model() as d:  # observed values given as a plain array are constants: no stale reuse
        pm.Normal("y", pm.Normal("m"), 1.0, observed=x)
    with pm.Model() as e:
        pm.Normal("y", pm.Normal("m"), 1.0, observed=x + 1)
    assert constants_fingerprint(d) != constants_fingerprint(e)


def test_cache_reuses_compilation_and_swaps_data(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    sampling._COMPILED.clear()
    settings = SamplerSettings(draws=300, tune=300, chains=2, seed=3)
    first = sample(linear_model(x, 2 * x + rng.normal(size=200)), settings, cache_key="lin")
    assert len(sampling._COMPILED) == 1
    second = sample(linear_model(x, -1 * x + rng.normal(size=200)), settings, cache_key="lin")
    assert len(sampling._COMPILED) == 1  # reused
    assert abs(float(first.posterior["b"].mean()) - 2) < 0.2
    assert abs(float(second.posterior["b"].mean()) + 1) < 0.2  # the new data, not the cached ones
    assert "observed_data" in second.groups()
    sample(linear_model(x, x, baked_scale=2.0), settings, cache_key="lin")
    assert len(sampling._COMPILED) == 2  # different baked constants: compiled anew


def test_hdi_bounds_match_arviz():
    import arviz as az

    from bayesnqp.checks.diagnostics import CI_PROB, hdi_bounds

    rng = np.random.default_rng(5)
    draws = np.column_stack([rng.gamma(2.0, size=4000), rng.normal(size=4000)])
    low, high = hdi_bounds(draws)
    for j in range(2):
        ref = az.hdi(draws[:, j], hdi_prob=CI_PROB)
        assert (low[j], high[j]) == pytest.approx(tuple(ref), abs=1e-12)
    draws[3, 1] = np.nan
    low, high = hdi_bounds(draws)
    assert np.isnan(low[1]) and np.isfinite(low[0])
