"""Entropy-weight (熵值法) composite index over a pooled panel.

For indicator j over all N city-years (pooled, not per year, so the index is comparable across years):
  positive attribute  x'_ij = (x_ij - min_j) / (max_j - min_j)
  negative attribute  x'_ij = (max_j - x_ij) / (max_j - min_j)
  shift               z_ij  = x'_ij + SHIFT          (so that p_ij > 0 and log 0 never occurs)
  p_ij = z_ij / sum_i z_ij,   e_j = -(1 / ln N) sum_i p_ij ln p_ij,   d_j = 1 - e_j,   w_j = d_j / sum_j d_j
  index_i = sum_j w_j z_ij
The shift is the common 1e-4 of the applied literature; it sets the index floor at 1e-4 and moves the
weights by far less than their reported precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SHIFT = 1e-4


def entropy_weights(values: np.ndarray, negative: np.ndarray | None = None, shift: float = SHIFT
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Weights (k,) and index (n,) from an (n, k) matrix of raw indicators (rows: city-years).

    ``negative``: boolean (k,) marking negative attributes. Raises ``ValueError`` on a constant or
    non-finite column; the data stage reports those to the user with names before we get here.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("need an (n >= 2, k) matrix of indicators")
    if not np.isfinite(x).all():
        raise ValueError("indicators contain NaN or inf")
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    if (span <= 0).any():
        raise ValueError(f"constant indicator column(s) {np.flatnonzero(span <= 0).tolist()}")
    norm = (x - lo) / span
    if negative is not None:
        neg = np.asarray(negative, dtype=bool)
        norm[:, neg] = (hi[neg] - x[:, neg]) / span[neg]
    z = norm + shift
    p = z / z.sum(axis=0)
    entropy = -(p * np.log(p)).sum(axis=0) / np.log(x.shape[0])
    divergence = 1.0 - entropy
    weights = divergence / divergence.sum()
    return weights, z @ weights


@dataclass(frozen=True)
class EntropyIndex:
    """The index per city-year and the weight (and entropy rank) of every indicator."""

    index: pd.Series  # indexed like the input frame, named "nqp"
    weights: pd.Series  # indexed by indicator, sums to 1

    def weights_table(self, descriptions: dict[str, str] | None = None) -> pd.DataFrame:
        table = self.weights.rename("weight").to_frame()
        table["rank"] = table["weight"].rank(ascending=False).astype(int)
        if descriptions:
            table.insert(0, "description", [descriptions.get(i, "") for i in table.index])
        return table


def entropy_index(frame: pd.DataFrame, indicators: list[str], negative: list[str] | tuple[str, ...] = (),
                  name: str = "nqp") -> EntropyIndex:
    """Entropy-weight index of ``indicators`` (columns of ``frame``), pooled over all rows."""
    unknown = set(negative) - set(indicators)
    if unknown:
        raise ValueError(f"negative indicators not among the indicators: {sorted(unknown)}")
    mask = np.array([c in set(negative) for c in indicators])
    weights, index = entropy_weights(frame[list(indicators)].to_numpy(dtype=float), mask)
    return EntropyIndex(index=pd.Series(index, index=frame.index, name=name),
                        weights=pd.Series(weights, index=pd.Index(list(indicators), name="indicator")))
