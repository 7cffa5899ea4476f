"""The shared panel operations (``panelops``) and spatial linear algebra (``spatial_linalg``): each layout
and variant against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from bayesnqp import panelops, spatial_linalg
from bayesnqp.data.weights import SpatialWeights


def _dummy_residuals(values: np.ndarray, city: np.ndarray, year: np.ndarray) -> np.ndarray:
    d = np.column_stack([np.eye(city.max() + 1)[city], np.eye(year.max() + 1)[year][:, 1:]])
    coef, *_ = np.linalg.lstsq(d, values, rcond=None)
    return values - d @ coef


def test_balanced_within_in_both_layouts_equals_the_dummy_regression():
    rng = np.random.default_rng(0)
    n, t, k = 7, 5, 2
    x = rng.normal(size=(n, t, k)) + rng.normal(size=(n, 1, 1)) + rng.normal(size=(1, t, 1))
    city, year = np.repeat(np.arange(n), t), np.tile(np.arange(t), n)
    ref = _dummy_residuals(x.reshape(n * t, k), city, year).reshape(n, t, k)
    np.testing.assert_allclose(panelops.within(x), ref, atol=1e-12)
    np.testing.assert_allclose(panelops.within(x, axes=(1, 0)), ref, atol=1e-12)
    stacked = x.transpose(1, 0, 2).reshape(t * n, k)  # year-major
    np.testing.assert_allclose(panelops.within_stacked(stacked, n, t), ref.transpose(1, 0, 2).reshape(t * n, k),
                               atol=1e-12)
    np.testing.assert_allclose(panelops.year_major(x[..., 0].reshape(-1), n, t), x[..., 0].T)
    np.testing.assert_array_equal(panelops.region_major(x.reshape(n * t, k), n, t), x)


@pytest.mark.parametrize("fn", [panelops.two_way_within, panelops.two_way_within_uncentred])
def test_unbalanced_within_variants_equal_the_dummy_regression(fn):
    rng = np.random.default_rng(1)
    n, t = 9, 6
    city, year = np.repeat(np.arange(n), t), np.tile(np.arange(t), n)
    keep = rng.random(n * t) > 0.25
    keep[:t] = True  # every year present somewhere
    city, year = city[keep], year[keep]
    values = rng.normal(size=(keep.sum(), 3)) + city[:, None] - 0.5 * year[:, None]
    np.testing.assert_allclose(fn(values, city, year), _dummy_residuals(values, city, year), atol=1e-9)


def test_median_split_puts_ties_low():
    high, med = panelops.median_split(np.array([1.0, 2.0, 2.0, 3.0, 2.0]))
    assert med == 2.0
    assert high.tolist() == [False, False, False, True, False]


def test_lag_is_the_same_in_both_layouts_and_the_spectrum_rebuilds_w():
    w = SpatialWeights.from_pairs(["a", "b", "c", "d", "e"], [("a", "b"), ("b", "c"), ("c", "a"), ("d", "e")])
    x = np.random.default_rng(2).normal(size=(5, 4, 3))  # (n, T, k)
    dense = w.row_standardised.toarray()
    by_region = spatial_linalg.lag(w.row_standardised, x)
    by_year = spatial_linalg.lag(w.row_standardised, x.transpose(1, 0, 2), region_axis=1)
    np.testing.assert_allclose(by_region, np.einsum("ij,jtk->itk", dense, x), atol=1e-14)
    np.testing.assert_allclose(by_year.transpose(1, 0, 2), by_region, atol=1e-14)
    spec = w.spectrum
    assert w.spectrum is spec  # computed once per weights
    np.testing.assert_allclose(spec.matfun(spec.lam), dense, atol=1e-12)
    np.testing.assert_allclose(spec.lam, w.eigenvalues, atol=1e-12)
    rho = 0.4
    np.testing.assert_allclose(spatial_linalg.log_det(rho, w.eigenvalues),
                               np.linalg.slogdet(np.eye(5) - rho * dense)[1], atol=1e-12)
    s = np.linalg.inv(np.eye(5) - rho * dense) @ (0.7 * np.eye(5) + 0.2 * dense)
    avg = spatial_linalg.average_effects(np.array([0.7]), np.array([0.2]), np.array(rho), spec)
    per = spatial_linalg.spatial_effects(np.array([rho]), np.array([0.7]), np.array([0.2]), w, eig=spec)
    for got in (avg["direct"][0], per["direct"][0]):
        assert got == pytest.approx(np.trace(s) / 5, abs=1e-12)
    for got in (avg["total"][0], per["total"][0]):
        assert got == pytest.approx(s.sum() / 5, abs=1e-12)
