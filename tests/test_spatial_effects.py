"""Spatial numerics against dense linear algebra: log-determinant, BYM2 scaling factors, effects,
conditional densities of the SAR process, Moran's I (no MCMC)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from bayesnqp import panelops, spatial_linalg
from bayesnqp.bayes import car, spatial as S
from bayesnqp.data.weights import SpatialWeights


def lattice_edges(rows: int, cols: int, offset: int = 0) -> list[tuple[int, int]]:
    edges = []
    for i in range(rows):
        for j in range(cols):
            k = offset + i * cols + j
            if j + 1 < cols:
                edges.append((k, k + 1))
            if i + 1 < rows:
                edges.append((k, k + cols))
    return edges


def make_graph(rows: int = 6, cols: int = 6) -> SpatialWeights:
    """A rows x cols lattice, a separate 3 x 4 lattice (second component) and one island (last id)."""
    first = rows * cols
    edges = lattice_edges(rows, cols) + lattice_edges(3, 4, first)
    # a few diagonal links so that row-standardised W is not bipartite (lambda_min > -1)
    edges += [(0, cols + 1), (cols + 2, 2 * cols + 3), (first, first + 5)]
    n = first + 12 + 1
    ids = tuple(f"{110000 + 100 * i}" for i in range(n))
    return SpatialWeights(ids, np.array(edges))


def real_weights() -> SpatialWeights | None:
    """The bundled 280-city contiguity graph, where it is present (a broken one fails the test)."""
    from bayesnqp.paths import bundled

    try:
        folder = bundled("geography")
    except FileNotFoundError:
        return None
    if not (folder / "contiguity.gal").is_file():
        return None
    from bayesnqp.data.geography import load_geography

    return load_geography().weights


@pytest.fixture(params=["lattice", "real"])
def weights(request) -> SpatialWeights:
    if request.param == "real":
        w = real_weights()
        assert w is not None, "the bundled geography is missing"
        return w
    return make_graph()


def test_graph_has_two_components_and_an_island():
    w = make_graph()
    assert w.n_components == 3
    assert w.islands == (w.ids[-1],)
    lo, hi = w.rho_bounds
    assert lo < -1.0 and hi == 1.0  # not bipartite: lambda_min > -1


def test_logdet_matches_dense_slogdet(weights):
    wd = weights.row_standardised.toarray()
    lo, _ = weights.rho_bounds
    for rho in (lo * 0.95, -0.3, 0.0, 0.45, 0.97):
        sign, ref = np.linalg.slogdet(np.eye(weights.n) - rho * wd)
        assert sign > 0
        assert spatial_linalg.log_det(rho, weights.eigenvalues) == pytest.approx(ref, abs=1e-8)


def _riebler_scaling(q: np.ndarray) -> float:
    """Riebler et al. (2016) recipe: invert Q + eps I, then condition on the sum-to-zero constraint."""
    n = q.shape[0]
    sigma = np.linalg.inv(q + np.eye(n) * np.sqrt(np.finfo(float).eps) * np.max(np.diag(q)))
    a = np.ones((1, n))
    sigma_c = sigma - sigma @ a.T @ np.linalg.inv(a @ sigma @ a.T) @ a @ sigma
    return float(np.exp(np.mean(np.log(np.diag(sigma_c)))))


def test_bym2_scaling_factor_per_component_against_dense_generalised_inverse(weights):
    s = car.bym2_scaling_factors(weights)
    a = weights.binary.toarray()
    q = np.diag(a.sum(axis=1)) - a
    for c in range(weights.n_components):
        idx = np.flatnonzero(weights.components == c)
        if idx.size == 1:
            assert s[idx[0]] == 1.0  # island: no structured part
            continue
        ref = _riebler_scaling(q[np.ix_(idx, idx)])
        assert np.allclose(s[idx], ref, rtol=1e-5)
    # the sparse (grounded-Laplacian) route gives the same numbers
    assert np.allclose(car.bym2_scaling_factors(weights, method="sparse"), s, rtol=1e-8)


def test_scaling_factors_differ_between_components():
    w = make_graph()
    s = car.bym2_scaling_factors(w)
    assert len(np.unique(np.round(s, 8))) == 3  # two components with different factors, island 1


def test_scaling_factor_of_a_path_graph_by_hand():
    # path of 3: Q = [[1,-1,0],[-1,2,-1],[0,-1,1]]; Q^+ diagonal = (5/9, 2/9, 5/9)
    w = SpatialWeights(("a", "b", "c"), np.array([(0, 1), (1, 2)]))
    expected = np.exp(np.mean(np.log([5 / 9, 2 / 9, 5 / 9])))
    assert car.bym2_scaling_factors(w) == pytest.approx(np.full(3, expected))


def _dense_effects(rho, beta, theta, w):
    n = w.shape[0]
    s = np.linalg.inv(np.eye(n) - rho * w) @ (beta * np.eye(n) + theta * w)
    direct_city = np.diag(s)
    total_city = s.sum(axis=1)
    s_theta = np.linalg.inv(np.eye(n) - rho * w) @ (theta * w)
    return direct_city, total_city, np.diag(s_theta).mean()


def test_exact_effects_match_dense_inverse(weights):
    wd = weights.row_standardised.toarray()
    rho = np.array([-0.4, 0.2, 0.6])
    beta = np.array([1.0, 0.3, -0.2])
    theta = np.array([0.5, -0.7, 0.1])
    eff = spatial_linalg.spatial_effects(rho, beta, theta, weights, method="exact")
    for k in range(3):
        d_city, t_city, d_theta = _dense_effects(rho[k], beta[k], theta[k], wd)
        assert np.allclose(eff["direct_city"][k], d_city, atol=1e-9)
        assert np.allclose(eff["total_city"][k], t_city, atol=1e-9)
        assert eff["direct"][k] == pytest.approx(d_city.mean(), abs=1e-10)
        assert eff["indirect"][k] == pytest.approx(t_city.mean() - d_city.mean(), abs=1e-10)
        assert eff["theta_share"][k] == pytest.approx(d_theta / d_city.mean(), rel=1e-8)


def test_effects_of_islands_are_purely_direct():
    w = make_graph()
    eff = spatial_linalg.spatial_effects(np.array([0.5]), np.array([2.0]), np.array([1.0]), w, method="exact")
    island = w.n - 1
    assert eff["direct_city"][0, island] == pytest.approx(2.0)
    assert eff["indirect_city"][0, island] == pytest.approx(0.0, abs=1e-10)


def test_trace_approximation_close_to_exact():
    w = make_graph()
    rho, beta, theta = np.array([-0.5, 0.3, 0.7]), np.array([1.0, 1.0, 0.5]), np.array([0.5, -0.2, 0.4])
    exact = spatial_linalg.spatial_effects(rho, beta, theta, w, method="exact")
    approx = spatial_linalg.spatial_effects(rho, beta, theta, w, method="trace", n_probes=4000, n_terms=120, seed=3)
    assert str(approx["method"]) == "trace"
    # totals use exact W^k 1; averages of diagonals are Hutchinson estimates (Monte Carlo error ~1%)
    assert np.allclose(approx["total"], exact["total"], rtol=1e-6)
    assert np.allclose(approx["direct"], exact["direct"], rtol=0.02, atol=0.005)
    assert np.allclose(approx["indirect"], exact["indirect"], rtol=0.03, atol=0.01)


@pytest.mark.parametrize("bipartite,rho", [(False, 0.97), (True, 0.97), (True, -0.95)])
def test_trace_effects_stay_accurate_for_rho_near_one(bipartite, rho):
    """|rho| near 1, also on a bipartite lattice (lambda_min = -1, diag(W^k) alternates): the truncated
    series plus its closed-form remainder against the exact effects."""
    w = SpatialWeights(tuple(f"{110000 + 100 * i}" for i in range(64)), np.array(lattice_edges(8, 8))) \
        if bipartite else make_graph()
    rho_draws, beta, theta = np.array([rho]), np.array([1.0]), np.array([0.5])
    exact = spatial_linalg.spatial_effects(rho_draws, beta, theta, w, method="exact")
    approx = spatial_linalg.spatial_effects(rho_draws, beta, theta, w, method="trace", n_probes=3000, seed=1)
    assert np.allclose(approx["total"], exact["total"], rtol=1e-4)
    assert np.allclose(approx["direct"], exact["direct"], rtol=0.03)
    assert np.allclose(approx["indirect"], exact["indirect"], rtol=0.03)


def test_conditional_loglik_matches_dense_gaussian_conditional():
    w = make_graph()
    wd = w.row_standardised.toarray()
    n, t = w.n, 3
    rng = np.random.default_rng(5)
    rho, sigma = np.array([0.55, -0.3]), np.array([0.7, 1.3])
    y = rng.normal(size=(n, t))
    m = rng.normal(size=(n, t))
    e = np.stack([(np.eye(n) - r * wd) @ (y - m) for r in rho])
    got = S.conditional_loglik(e, rho, sigma, w, two_way=False)
    for d in range(2):
        a = np.eye(n) - rho[d] * wd
        q = a.T @ a / sigma[d] ** 2
        cov = np.linalg.inv(q)
        for i in (0, 7, n - 1):
            others = np.delete(np.arange(n), i)
            for k in range(t):
                c_oo = cov[np.ix_(others, others)]
                c_io = cov[i, others]
                mean = m[i, k] + c_io @ np.linalg.solve(c_oo, y[others, k] - m[others, k])
                var = cov[i, i] - c_io @ np.linalg.solve(c_oo, c_io)
                ref = st.norm.logpdf(y[i, k], mean, np.sqrt(var))
                assert got[d, i, k] == pytest.approx(ref, abs=1e-8)


def test_conditional_loglik_with_two_way_effects_integrated_out_matches_brute_force():
    """Effects integrated out: against the dense conditional of the Gaussian with city and year dummies
    under a Normal(0, kappa^2) prior as kappa -> infinity (generic dummy projector, no formula shared)."""
    w = make_graph()
    wd = w.row_standardised.toarray()
    n, t = w.n, 4
    rng = np.random.default_rng(8)
    rho, sigma = np.array([0.45, -0.6]), np.array([0.8, 1.4])
    y = rng.normal(size=(n, t)) + rng.normal(size=(n, 1)) + rng.normal(size=(1, t))
    m = rng.normal(size=(n, t))
    e = np.stack([panelops.within((np.eye(n) - r * wd) @ (y - m)) for r in rho])
    got = S.conditional_loglik(e, rho, sigma, w, two_way=True)
    for d in range(2):
        _assert_dense_conditional(got[d], y, m, wd, rho[d], sigma[d], year_columns=np.ones(n))


def _assert_dense_conditional(got: np.ndarray, y: np.ndarray, m: np.ndarray, wd: np.ndarray, rho: float,
                              sigma: float, year_columns: np.ndarray) -> None:
    """``got`` (n, T) against the dense conditional y_it | y_-it of the Gaussian A (y - m) = D theta + e,
    D the city dummies and per-year columns ``year_columns`` among the innovations, theta under a
    Normal(0, kappa^2) prior as kappa -> infinity (generic dummy projector, no formula shared)."""
    n, t = y.shape
    # stacked year by year: index k * n + i
    dummies = np.column_stack([np.tile(np.eye(n), (t, 1)), np.kron(np.eye(t), year_columns[:, None])[:, 1:]])
    kappa2 = 1e12
    resid = (y - m).T.ravel()
    big_a = np.kron(np.eye(t), np.eye(n) - rho * wd)
    # (sigma^2 I + kappa^2 D D')^-1 by Woodbury, exact to O(sigma^2 / kappa^2)
    inner = np.linalg.inv(dummies.T @ dummies + sigma ** 2 / kappa2 * np.eye(dummies.shape[1]))
    q = big_a.T @ ((np.eye(n * t) - dummies @ inner @ dummies.T) / sigma ** 2) @ big_a
    for i in (0, 5, n - 2, n - 1):
        for k in range(t):
            j = k * n + i
            others = np.delete(np.arange(n * t), j)
            mean = m[i, k] - q[j, others] @ resid[others] / q[j, j]
            ref = st.norm.logpdf(y[i, k], mean, np.sqrt(1.0 / q[j, j]))
            assert got[i, k] == pytest.approx(ref, abs=1e-8)



def test_conditional_loglik_with_data_level_years_matches_brute_force():
    """The SEM's year effects sit in y: among the innovations A (y - m) they point along a = A 1 (not 1
    where W has an island). Against the dense conditional with city dummies and those year columns under
    a Normal(0, kappa^2) prior as kappa -> infinity."""
    w = make_graph()  # has an island, so a is not constant
    wd = w.row_standardised.toarray()
    n, t = w.n, 4
    rng = np.random.default_rng(11)
    rho, sigma = np.array([0.5, -0.4]), np.array([0.9, 1.2])
    y = rng.normal(size=(n, t))
    m = rng.normal(size=(n, t))
    a = S.year_direction(rho, w)
    assert np.allclose(a, 1.0 - rho[:, None] * wd.sum(axis=1)[None, :]) and a[0, -1] == 1.0
    u = np.stack([(np.eye(n) - r * wd) @ panelops.within(y - m) for r in rho])  # A of the within residual
    e = S.project_out_years(u, a)
    got = S.conditional_loglik(e, rho, sigma, w, two_way=True, data_level_years=True)
    for d in range(2):
        _assert_dense_conditional(got[d], y, m, wd, rho[d], sigma[d], year_columns=a[d])


def test_the_bayesian_sem_likelihood_is_the_integrated_gaussian_with_year_effects_in_y():
    """The SEM model's likelihood terms (observed density and potentials) against the dense Gaussian
    y = X beta + D_city mu + D_year nu + u, u = rho W u + e, with mu and nu integrated out under flat
    priors: equal up to a constant, so their differences between parameter points agree at 1e-8."""
    from bayesnqp.bayes import sdm
    from bayesnqp.bayes.spec import load_spec

    w = make_graph()
    wd = w.row_standardised.toarray()
    n, t = w.n, 4
    rng = np.random.default_rng(2)
    idx = pd.MultiIndex.from_product([list(w.ids), list(range(2013, 2013 + t))], names=["city", "year"])
    frame = pd.DataFrame({"x1": rng.normal(size=n * t), "nqp": rng.normal(size=n * t)}, index=idx)
    data = sdm.sdm_data(frame, ["x1"], w, "nqp")
    spec = load_spec("bayes_sem").replace(terms=("x1",))
    model = sdm.build_sdm_model(data, w, spec, "sem")
    terms = list(model.observed_RVs) + list(model.potentials)
    loglik = model.compile_fn(model.logp(vars=terms), inputs=model.value_vars, on_unused_input="ignore")
    y_sd = float(np.std(data.y)); x_sd = float(np.std(data.x))
    ys, xs = data.y / y_sd, data.x[..., 0] / x_sd  # the standardised scale the model samples on
    dummies = np.column_stack([np.tile(np.eye(n), (t, 1)), np.kron(np.eye(t), np.ones((n, 1)))[:, 1:]])

    def dense(beta: float, rho: float, sigma: float) -> float:
        prec = np.kron(np.eye(t), (np.eye(n) - rho * wd).T @ (np.eye(n) - rho * wd)) / sigma ** 2
        r = (ys - beta * xs).T.ravel()
        dpd = dummies.T @ prec @ dummies
        quad = r @ prec @ r - r @ prec @ dummies @ np.linalg.solve(dpd, dummies.T @ prec @ r)
        return 0.5 * (np.linalg.slogdet(prec)[1] - np.linalg.slogdet(dpd)[1] - quad)

    def ours(beta: float, rho: float, sigma: float) -> float:
        lo, hi = w.rho_bounds
        point = {"beta_std": np.array([beta]), "sigma_std_log__": np.log(sigma),
                 "rho_interval__": np.log((rho - lo) / (hi - rho))}
        return float(loglik(point))

    points = [(0.3, 0.4, 0.8), (-0.2, -0.5, 1.3), (0.1, 0.85, 0.6)]
    for p0, p1 in zip(points, points[1:]):
        assert ours(*p1) - ours(*p0) == pytest.approx(dense(*p1) - dense(*p0), abs=1e-8)


def test_moran_i_matches_esda():
    from esda.moran import Moran

    w = make_graph(5, 5)
    rng = np.random.default_rng(2)
    # a connected graph (drop the island and the second component) for esda's definition of S0
    keep = [c for c, comp in zip(w.ids, w.components) if comp == w.components[0]]
    sub = w.subset(keep)
    values = rng.normal(size=(sub.n, 4)) + np.repeat(rng.normal(size=(sub.n, 1)), 4, axis=1)
    lw = sub.to_libpysal()
    lw.transform = "r"
    got = S.moran_i(values, sub)
    for k in range(4):
        assert got[k] == pytest.approx(Moran(values[:, k], lw, permutations=0).I, abs=1e-10)


def test_icar_kernel_equals_dense_quadratic_form():
    w = make_graph()
    a = w.binary.toarray()
    q = np.diag(a.sum(axis=1)) - a
    u = np.random.default_rng(0).normal(size=w.n)
    comp = w.components
    means_term = sum(u[comp == c].sum() ** 2 / (comp == c).sum() for c in range(w.n_components))
    assert car.icar_logp_numpy(u, w) == pytest.approx(-0.5 * u @ q @ u - 0.5 * means_term)
