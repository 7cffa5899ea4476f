"""SpatialWeights: matrices, eigenvalues, components, islands and the two file formats."""

import numpy as np
import pytest

from bayesnqp.data.weights import SpatialWeights
from bayesnqp.errors import InputError


def small_graph() -> SpatialWeights:
    # A path a-b-c, a triangle d-e-f (second component) and an island g.
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    pairs = [("a", "b"), ("b", "c"), ("d", "e"), ("e", "f"), ("d", "f"), ("b", "a")]
    return SpatialWeights.from_pairs(ids, pairs)


def test_matrices_components_islands():
    w = small_graph()
    assert len(w.edges) == 5  # the duplicate b-a collapses
    dense = w.binary.toarray()
    assert (dense == dense.T).all()
    np.testing.assert_array_equal(w.n_neighbors, [1, 2, 1, 2, 2, 2, 0])
    rs = w.row_standardised.toarray()
    np.testing.assert_allclose(rs.sum(axis=1), [1, 1, 1, 1, 1, 1, 0])
    assert w.islands == ("g",)
    assert w.n_components == 3
    assert w.components[0] == w.components[2] != w.components[3]


def test_eigenvalues_and_rho_bounds_match_dense():
    w = small_graph()
    dense = np.linalg.eigvals(w.row_standardised.toarray())
    np.testing.assert_allclose(np.sort(dense.real), w.eigenvalues, atol=1e-12)
    assert np.abs(dense.imag).max() < 1e-12
    lo, hi = w.rho_bounds
    assert hi == 1.0 and lo == pytest.approx(1 / dense.real.min())
    # The path and the triangle both have eigenvalue -1 or -0.5: lambda_min = -1 here.
    assert lo == pytest.approx(-1.0)


def test_gal_and_edge_csv_round_trip(tmp_path):
    w = small_graph()
    gal = tmp_path / "w.gal"
    w.write_gal(gal)
    back = SpatialWeights.read(gal, ids=list(w.ids))
    np.testing.assert_array_equal(back.edges, w.edges)
    assert back.islands == ("g",)
    csv = tmp_path / "w.csv"
    csv.write_text("from,to\n" + "\n".join(f"{w.ids[i]},{w.ids[j]}" for i, j in w.edges) + "\n")
    back2 = SpatialWeights.read(csv, ids=list(w.ids))
    np.testing.assert_array_equal(back2.edges, w.edges)


def test_weights_file_errors_name_file_and_region(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("a,b\nb,zz\n")
    with pytest.raises(InputError) as info:
        SpatialWeights.read(csv, ids=["a", "b", "c"])
    assert "w.csv" in str(info.value) and "city zz" in str(info.value)
    bad = tmp_path / "w.gal"
    bad.write_text("0 2\na 2\nb\nb 1\na\n")
    with pytest.raises(InputError, match="declares 2 neighbours"):
        SpatialWeights.read(bad, ids=["a", "b"])
    gal = tmp_path / "miss.gal"
    gal.write_text("0 1\na 0\n\n")
    with pytest.raises(InputError, match="missing from the weights file"):
        SpatialWeights.read(gal, ids=["a", "b"])


def test_subset_keeps_induced_edges():
    w = small_graph().subset(["c", "b", "d", "e"])
    assert w.ids == ("c", "b", "d", "e")
    assert {tuple(sorted((w.ids[i], w.ids[j]))) for i, j in w.edges} == {("b", "c"), ("d", "e")}
