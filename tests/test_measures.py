"""Entropy-weight index and location quotient: hand-computed examples and properties."""

import math

import numpy as np
import pandas as pd
import pytest

from bayesnqp.measures import entropy_index, entropy_weights, location_quotient
from bayesnqp.measures.entropy import SHIFT


def hand_entropy(x: np.ndarray, negative=()) -> tuple[np.ndarray, np.ndarray]:
    """Literal transcription of the textbook steps, loop by loop."""
    n, k = x.shape
    z = np.empty_like(x, dtype=float)
    for j in range(k):
        lo, hi = min(x[:, j]), max(x[:, j])
        for i in range(n):
            v = (hi - x[i, j]) if j in negative else (x[i, j] - lo)
            z[i, j] = v / (hi - lo) + SHIFT
    d = []
    for j in range(k):
        total = sum(z[:, j])
        e = -sum((z[i, j] / total) * math.log(z[i, j] / total) for i in range(n)) / math.log(n)
        d.append(1 - e)
    w = np.array(d) / sum(d)
    return w, np.array([sum(w[j] * z[i, j] for j in range(k)) for i in range(n)])


def test_entropy_matches_hand_computation_on_small_example():
    x = np.array([[1.0, 10.0, 0.2], [2.0, 30.0, 0.4], [4.0, 20.0, 0.1], [8.0, 25.0, 0.3]])
    w, idx = entropy_weights(x)
    hw, hidx = hand_entropy(x)
    np.testing.assert_allclose(w, hw, rtol=1e-12)
    np.testing.assert_allclose(idx, hidx, rtol=1e-12)
    # The skewed first column is the most dispersed: it carries the largest weight.
    assert np.argmax(w) == 0


def test_negative_attribute_reverses_the_normalisation():
    x = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 4.0], [9.0, 1.0]])
    w, idx = entropy_weights(x, negative=np.array([False, True]))
    hw, hidx = hand_entropy(x, negative=(1,))
    np.testing.assert_allclose(w, hw, rtol=1e-12)
    np.testing.assert_allclose(idx, hidx, rtol=1e-12)


def test_weights_sum_to_one_and_are_scale_invariant():
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=(200, 6))
    w, idx = entropy_weights(x)
    assert w.sum() == pytest.approx(1.0, abs=1e-14)
    assert (w > 0).all()
    scaled = x * np.array([1.0, 1e4, 0.01, 7.0, 1.0, 3.0]) + np.array([0, 0, 0, 0, 5.0, 0])
    w2, idx2 = entropy_weights(scaled)
    np.testing.assert_allclose(w2, w, rtol=1e-10)
    np.testing.assert_allclose(idx2, idx, rtol=1e-10)
    assert idx.min() >= SHIFT - 1e-15


def test_constant_indicator_is_refused():
    x = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    with pytest.raises(ValueError, match="constant"):
        entropy_weights(x)


def test_entropy_index_keeps_the_panel_index_and_names_weights():
    idx = pd.MultiIndex.from_product([["A", "B", "C"], [2020, 2021]], names=["city", "year"])
    frame = pd.DataFrame({"a": [1, 2, 3, 4, 5, 9], "b": [3, 1, 4, 1, 5, 9]}, index=idx, dtype=float)
    result = entropy_index(frame, ["a", "b"], negative=["b"])
    assert result.index.index.equals(idx)
    assert list(result.weights.index) == ["a", "b"]
    table = result.weights_table()
    assert set(table.columns) == {"weight", "rank"}
    with pytest.raises(ValueError, match="not among the indicators"):
        entropy_index(frame, ["a"], negative=["b"])


def test_location_quotient_hand_example_and_weighted_mean_one():
    idx = pd.MultiIndex.from_product([["A", "B"], [2020, 2021]], names=["city", "year"])
    digital = pd.Series([10.0, 20.0, 30.0, 20.0], index=idx)
    total = pd.Series([100.0, 100.0, 300.0, 400.0], index=idx)
    lq = location_quotient(digital, total)
    # 2020: national share 40/400 = 0.1; A: 0.1/0.1 = 1, B: 0.1/0.1 = 1.
    # 2021: national share 40/500 = 0.08; A: 0.2/0.08 = 2.5, B: 0.05/0.08 = 0.625.
    np.testing.assert_allclose(lq.to_numpy(), [1.0, 2.5, 1.0, 0.625])
    rng = np.random.default_rng(0)
    idx2 = pd.MultiIndex.from_product([[f"c{i}" for i in range(50)], range(2013, 2023)], names=["city", "year"])
    tot = pd.Series(rng.lognormal(4, 1, len(idx2)), index=idx2)
    dig = tot * rng.uniform(0.001, 0.1, len(idx2))
    lq2 = location_quotient(dig, tot)
    weighted = (lq2 * tot).groupby(level="year").sum() / tot.groupby(level="year").sum()
    np.testing.assert_allclose(weighted.to_numpy(), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        location_quotient(dig, tot * 0)
