"""The sampling entry: settings validation, observed_data, the compile cache's data swap and its guard."""

import numpy as np
import pymc as pm
import pytest
from conftest import require

from bayesnqp import simulate
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


def labelled_model(x, y, labels: list[str]) -> pm.Model:
    with pm.Model(coords={"obs": np.arange(len(x)), "coef": labels}) as model:
        xd = pm.Data("x", x, dims=("obs", "coef"))
        yd = pm.Data("y_obs", y, dims="obs")
        b = pm.Normal("b", 0, 5, dims="coef")
        pm.Normal("y", pm.math.dot(xd, b), 1.0, observed=yd, dims="obs")
    return model


@pytest.mark.recovery
def test_cached_compilation_carries_the_new_models_labels():
    """Same structure, other term names: the reused compilation must not keep the first model's labels."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 2))
    y = x @ np.array([1.0, -1.0]) + rng.normal(size=100)
    sampling._COMPILED.clear()
    settings = SamplerSettings(draws=100, tune=100, chains=1, seed=3)
    sample(labelled_model(x, y, ["a", "b"]), settings, cache_key="labelled")
    second = sample(labelled_model(x, y, ["c", "d"]), settings, cache_key="labelled")
    assert len(sampling._COMPILED) == 1
    assert list(second.posterior["b"].coords["coef"].values) == ["c", "d"]


def test_missing_optional_sampler_says_which_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("jax", "numpyro") else real(name, *a))
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    for name, extra in (("nutpie-jax", "jax"), ("numpyro", "numpyro")):
        with pytest.raises(ImportError, match=rf"bayesnqp\[{extra}\]"):
            sample(linear_model(x, x), SamplerSettings(draws=10, tune=10, chains=1, sampler=name))


@pytest.mark.recovery
def test_jax_backend_gives_the_default_posterior():
    """--sampler nutpie-jax against the default on the column (4) iid model of a small simulated panel:
    posterior means within 4 Monte Carlo SEs, sds within 10% (4 chains: with 2 x 1000 draws one sd came 7%
    apart by chance; with 4 x 2000 they agree within 1%)."""
    require("jax", "the jax extra: the nutpie-jax sampler")
    import arviz as az

    from bayesnqp.bayes import panel
    from bayesnqp.bayes.spec import load_spec

    frame, _ = simulate.simulate_panel(40, 6, seed=3)
    spec = load_spec("bayes_table3_col4_iid")
    fits = {}
    for name in ("nutpie", "nutpie-jax"):
        settings = SamplerSettings(draws=1000, tune=1000, chains=4, seed=11, sampler=name)
        _, idata, _ = panel.fit_spec(frame, spec, ("develop",), settings)
        fits[name] = az.summary(idata, var_names=["beta", "sigma", "sigma_city"], round_to="none")
    a, b = fits["nutpie"], fits["nutpie-jax"]
    assert list(a.index) == list(b.index)
    assert (a["ess_bulk"] > 400).all() and (b["ess_bulk"] > 400).all()
    mcse = np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    assert ((a["mean"] - b["mean"]).abs() <= 4 * mcse).all(), (a, b)
    assert ((b["sd"] / a["sd"] - 1).abs() < 0.1).all(), (a, b)


@pytest.mark.recovery
def test_jax_compilation_is_not_reused_with_stale_data():
    """nutpie's JAX model has the data baked in (nothing to swap): new data must compile anew."""
    require("jax", "the jax extra: the nutpie-jax sampler")
    rng = np.random.default_rng(4)
    x = rng.normal(size=200)
    sampling._COMPILED.clear()
    settings = SamplerSettings(draws=300, tune=300, chains=2, seed=3, sampler="nutpie-jax")
    y = 2 * x + rng.normal(size=200)
    first = sample(linear_model(x, y), settings, cache_key="lin")
    second = sample(linear_model(x, -1 * x + rng.normal(size=200)), settings, cache_key="lin")
    assert abs(float(first.posterior["b"].mean()) - 2) < 0.2
    assert abs(float(second.posterior["b"].mean()) + 1) < 0.2
    assert len(sampling._COMPILED) == 2
    again = sample(linear_model(x, y), settings, cache_key="lin")  # the same data: reused, same draws
    assert len(sampling._COMPILED) == 2
    assert np.array_equal(again.posterior["b"].values, first.posterior["b"].values)


def test_command_line_beats_spec_beats_code_default():
    """A model spec's [sampler] table applies only where the user set nothing (command line, API, --quick)."""
    from bayesnqp.bayes.spec import load_spec
    from bayesnqp.study import QUICK, RunOptions

    spec = load_spec("bayes_sar")  # pins tune = 1000
    assert spec.sampler["tune"] == 1000
    pinned_spec = spec.replace(sampler={"draws": 123, "tune": 1000, "chains": 3, "target_accept": 0.9})

    nothing_given = RunOptions().sampler_settings()
    assert nothing_given.pinned == frozenset()
    run = pinned_spec.sampler_settings(nothing_given)
    assert (run.draws, run.tune, run.chains, run.target_accept) == (123, 1000, 3, 0.9)  # the spec's
    assert spec.sampler_settings(nothing_given).draws == 1000  # the code default

    quick = pinned_spec.sampler_settings(RunOptions(quick=True).sampler_settings())
    assert (quick.draws, quick.tune, quick.chains) == (QUICK["draws"], QUICK["tune"], QUICK["chains"])
    assert quick.target_accept == 0.9  # not set by the user: the spec's

    given = pinned_spec.sampler_settings(RunOptions(tune=50, sampler="pymc").sampler_settings())
    assert (given.tune, given.sampler, given.draws) == (50, "pymc", 123)
    with pytest.raises(ValueError, match="cannot pin"):
        SamplerSettings(pinned=frozenset({"seed"}))


def test_specs_are_strict_about_builder_and_options():
    """Every field of a spec is read or refused: an unknown family, an option the family does not read,
    or a value outside the family's choices is an InputError naming the file and the field."""
    import tomllib

    from bayesnqp.bayes.spec import BUILDER_OPTIONS, parse_spec
    from bayesnqp.errors import InputError
    from bayesnqp.paths import bundled

    raw = tomllib.loads((bundled("models") / "bayes_sar.toml").read_text())
    assert parse_spec(raw, "bayes_sar.toml").options["model"] == "sar"
    for change, message in (({"builder": "gp"}, "builder must be one of"),
                            ({"options": {**raw["options"], "modle": "sar"}}, "unknown option 'modle'"),
                            ({"options": {**raw["options"], "model": "gns"}}, "option 'model' must be one of"),
                            ({"priors": {**raw["priors"], "bteta": {"dist": "normal"}}}, "unknown prior 'bteta'"),
                            ({"sampler": {"tune": "1000"}}, "sampler.tune must be a whole number")):
        with pytest.raises(InputError, match=message) as err:
            parse_spec({**raw, **change}, "my_models/bayes_sar.toml")
        assert "my_models/bayes_sar.toml" in str(err.value)
    # every option a bundled spec sets is one its family reads
    for path in sorted(bundled("models").glob("*.toml")):
        spec = tomllib.loads(path.read_text())
        assert set(spec.get("options", {})) <= set(BUILDER_OPTIONS[spec["builder"]]), path.name


def _group_model(x, y, groups) -> pm.Model:
    with pm.Model(coords={"obs": np.arange(len(x)), "group": np.arange(6)}) as model:
        xd = pm.Data("x", x, dims="obs")
        yd = pm.Data("y_obs", y, dims="obs")
        gd = pm.Data("g", groups, dims="obs")
        b = pm.Normal("b", 0, 5)
        effect = pm.ZeroSumNormal("effect", 1.0, dims="group")
        pm.Deterministic("scaled", 2 * b)
        pm.Normal("y", b * xd + effect[gd], pm.HalfNormal("sigma", 2), observed=yd, dims="obs")
    return model


def test_disk_cached_wrappers_compute_what_nutpies_compute():
    """The disk-cached C entry points wrap the same PyTensor function as nutpie's own and read the data
    through nutpie's user_data: the same log-density, gradient and expanded values at random points, before
    and after a data swap that changes the number of rows (a wrapper with the data's shapes baked in would
    fail it), and sampling after the swap uses the new data. Draws are not compared bit for bit: when
    the wrapped function is compiled in the same process, LLVM may inline it into either wrapper with
    fast-math reassociation, so the last digits may differ and NUTS trajectories then part."""
    import ctypes

    import nutpie

    from bayesnqp.bayes.nutpie_disk_cache import compile_numba_cached

    rng = np.random.default_rng(4)
    x = rng.normal(size=150)
    model = _group_model(x, 1.5 * x + rng.normal(size=150), rng.integers(0, 6, size=150))
    ours = compile_numba_cached(model)
    assert ours is not None
    theirs = nutpie.compile_pymc_model(model)

    def evaluate(compiled, point):
        grad, logp = np.zeros(compiled.n_dim), np.zeros(())
        expanded = np.zeros(compiled.n_expanded)
        as_ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))  # noqa: E731
        user = ctypes.c_void_p(compiled.user_data.ctypes.data)
        code = compiled.compiled_logp_func.ctypes(compiled.n_dim, as_ptr(point), as_ptr(grad), as_ptr(logp), user)
        code_expand = compiled.compiled_expand_func.ctypes(compiled.n_dim, compiled.n_expanded, as_ptr(point),
                                                           as_ptr(expanded), user)
        return code, code_expand, float(logp), grad, expanded

    short_x = rng.normal(size=90)
    swap = {"x": short_x, "y_obs": -short_x + rng.normal(size=90), "g": rng.integers(0, 6, size=90)}
    pairs = ((ours, theirs), (ours.with_data(**swap), theirs.with_data(**swap)))
    values = []
    for a, b_ in pairs:
        for _ in range(5):
            point = rng.normal(size=ours.n_dim)
            mine, nutpies = evaluate(a, point), evaluate(b_, point)
            assert mine[:2] == nutpies[:2] == (0, 0)
            np.testing.assert_allclose(mine[2], nutpies[2], rtol=1e-12)
            np.testing.assert_allclose(mine[3], nutpies[3], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(mine[4], nutpies[4], rtol=1e-12)
        values.append(mine[2])
    assert values[0] != values[1]  # the swap changed the density
    draws = nutpie.sample(pairs[1][0], draws=200, tune=200, chains=2, cores=1, seed=9, progress_bar=False)
    assert float(draws.posterior["b"].mean()) < 0  # the swapped data were used
    assert evaluate(ours, np.full(ours.n_dim, np.nan))[0] != 0  # a non-finite point is reported, not hidden


def test_disk_cached_wrappers_step_aside_when_they_cannot_be_cached(monkeypatch):
    """With PyTensor's numba cache turned off, or when building the wrappers fails, nutpie's own compile
    is used (with a warning for a failure), and sampling goes on."""
    import pytensor

    from bayesnqp.bayes import nutpie_disk_cache
    from bayesnqp.bayes.nutpie_disk_cache import compile_numba_cached

    x = np.linspace(0, 1, 20)
    with pytensor.config.change_flags(numba__cache=False):
        assert compile_numba_cached(linear_model(x, x)) is None

    def broken(*args, **kwargs):
        raise RuntimeError("nutpie changed")

    monkeypatch.setattr(nutpie_disk_cache, "_cached_cfunc", broken)
    with pytest.warns(RuntimeWarning, match="could not be cached"):
        assert compile_numba_cached(linear_model(x, x)) is None
    sampling._COMPILED.clear()
    with pytest.warns(RuntimeWarning, match="could not be cached"):
        idata = sample(linear_model(x, 2 * x), SamplerSettings(draws=100, tune=100, chains=1), cache_key="fallback")
    assert idata.posterior["b"].shape == (1, 100)


def test_broadcast_checks_compare_lengths_in_the_order_given():
    """PyTensor's broadcast check of a dimension that several arrays share compares its symbolic lengths
    in the order of a set of Variables (hashed by id), so the same model gave a different graph, and a
    different compile-cache key, from one process to the next. Importing the package puts the lengths in
    the order the arrays were given in: over 30 fresh triples the first is always the one compared against
    (by chance 2^-30 with a set), and the others follow in order."""
    import pytensor
    import pytensor.scalar as ps
    from pytensor.tensor import extra_ops

    import bayesnqp.bayes  # noqa: F401 - installs the ordered checks
    from bayesnqp.bayes.nutpie_disk_cache import order_broadcast_checks

    assert getattr(extra_ops.broadcast_shape_iter, "_ordered_broadcast_checks", False)  # by the import
    assert order_broadcast_checks()  # a second call is a no-op
    for k in range(30):
        lengths = [ps.int64(f"{name}{k}") for name in "abc"]
        (dim,) = extra_ops.broadcast_shape_iter([(v,) for v in lengths], arrays_are_shapes=True)
        first, condition = dim.owner.inputs
        assert first is lengths[0]
        # the condition is all([eq(a, b), eq(a, c)]): its comparisons name b, then c
        compared = [v for v in pytensor_ancestors(condition) if v in lengths[1:]]
        assert compared == lengths[1:]
    # the ordered version gives the same checks: a mismatch still raises, a match passes
    a, b = ps.int64("a"), ps.int64("b")
    (dim,) = extra_ops.broadcast_shape_iter([(a,), (b,)], arrays_are_shapes=True)
    check = pytensor.function([a, b], dim, mode="FAST_COMPILE")
    assert check(4, 4) == 4
    with pytest.raises(AssertionError, match="Could not broadcast"):
        check(4, 5)


def pytensor_ancestors(variable):
    """The graph's variables from the inputs up, in a deterministic (depth-first, inputs in order) walk."""
    seen, order = set(), []

    def walk(v):
        if id(v) in seen:
            return
        seen.add(id(v))
        if v.owner is not None:
            for inp in v.owner.inputs:
                walk(inp)
        order.append(v)

    walk(variable)
    return order
