"""The county-size panel generator: a planar contiguity graph with several components and islands, and a
spatial Durbin panel on it whose generating equation holds exactly."""

from __future__ import annotations

import numpy as np

from bayesnqp.panelops import within
from bayesnqp.simulate import COUNTY_TRUTH, county_graph, county_panel


def test_county_graph_is_planar_with_components_and_islands():
    w = county_graph(seed=1)
    assert w.n == 2850 and len(w.islands) == 6
    assert w.n_components == 3 + 6  # three clusters, and each island is its own component
    degree = 2 * len(w.edges) / (w.n - 6)
    assert 5.5 < degree < 6.0  # Delaunay: just under 6 neighbours on average, like shared borders
    assert len(w.edges) <= 3 * w.n - 6  # a planar graph's bound
    assert np.allclose(np.asarray(w.row_standardised.sum(axis=1)).ravel()[: w.n - 6], 1.0)
    assert county_graph(seed=1).edges.tolist() == w.edges.tolist()  # seeded


def test_county_panel_follows_its_spatial_durbin_equation():
    frame, w, truth = county_panel(county_graph(n_regions=400, seed=2, n_islands=2), n_years=6, seed=2)
    assert truth == COUNTY_TRUTH and frame.shape == (400 * 6, 5)
    y = frame["nqp"].to_numpy().reshape(400, 6)
    x = frame["agglomeration"].to_numpy().reshape(400, 6)
    dev = frame["develop"].to_numpy().reshape(400, 6)
    W = w.row_standardised
    resid = (y - truth["rho"] * (W @ y) - truth["beta"] * x - truth["theta"] * (W @ x)
             - truth["control_beta"] * dev)
    e = within(resid)  # region and year effects removed: what is left is the unit-variance noise
    assert abs(e.std() * np.sqrt(400 * 6 / ((400 - 1) * (6 - 1))) - 1.0) < 0.06
