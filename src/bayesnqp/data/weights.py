"""Symmetric contiguity weights keyed by region id (6-digit adcode for the 280 cities).

Conventions (documented in ARCHITECTURE.md):
- ``binary`` is the 0/1 adjacency A; ``row_standardised`` is W = D^-1 A. An island (no neighbour) keeps a
  zero row in W, so it neither sends nor receives spillovers: its W y and W x are 0.
- The eigenvalues of W are real because W is similar to the symmetric D^-1/2 A D^-1/2; they are computed
  once (``spatial_linalg``, cached here), never inside a log-density. rho is admissible in (1/lambda_min, 1).
- ``components`` labels connected components (islands are singleton components); the CAR/BYM2 prior
  uses them for one sum-to-zero constraint and one scaling factor per component.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .. import spatial_linalg
from ..errors import InputError, Problem


@dataclass(frozen=True, eq=False)
class SpatialWeights:
    """Undirected neighbour graph over ``ids`` (order = row order of every matrix)."""

    ids: tuple[str, ...]
    edges: np.ndarray  # (m, 2) int, each undirected edge once with i < j

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        if edges.size:
            lo, hi = np.minimum(edges[:, 0], edges[:, 1]), np.maximum(edges[:, 0], edges[:, 1])
            if (lo == hi).any():
                raise ValueError("self-loops are not allowed in spatial weights")
            edges = np.unique(np.column_stack([lo, hi]), axis=0)
            if hi.max() >= len(self.ids) or lo.min() < 0:
                raise ValueError("edge index out of range")
        object.__setattr__(self, "edges", edges)
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("duplicate region ids in spatial weights")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, ids: list[str] | tuple[str, ...], pairs: list[tuple[str, str]]) -> "SpatialWeights":
        index = {c: i for i, c in enumerate(ids)}
        edges = [(index[a], index[b]) for a, b in pairs if a != b]
        return cls(tuple(ids), np.array(edges, dtype=np.int64).reshape(-1, 2))

    @classmethod
    def from_dense(cls, ids: list[str] | tuple[str, ...], matrix: np.ndarray) -> "SpatialWeights":
        a = np.asarray(matrix) != 0
        i, j = np.nonzero(np.triu(a | a.T, k=1))
        return cls(tuple(ids), np.column_stack([i, j]))

    @classmethod
    def read(cls, path: str | Path, ids: list[str] | None = None) -> "SpatialWeights":
        """Read a GAL file or an edge-list CSV (two columns of region ids, header optional).

        ``ids`` fixes the row order (the panel's cities); every id in the file must be among them and
        every panel city must appear in the file (as an island line in GAL, or in an edge).
        """
        path = Path(path)
        name = str(path)
        if not path.is_file():
            raise InputError([Problem(name, "spatial weights file not found")])
        text = path.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise InputError([Problem(name, "spatial weights file is empty")])
        if path.suffix.lower() == ".gal":
            file_ids, pairs = _parse_gal(name, text)
        else:
            file_ids, pairs = _parse_edge_csv(name, text)
        order = list(ids) if ids is not None else sorted(file_ids)
        problems = [Problem(name, "region id is not in the panel", city=c) for c in sorted(file_ids - set(order))]
        if ids is not None and path.suffix.lower() == ".gal":
            problems += [Problem(name, "panel city is missing from the weights file", city=c)
                         for c in order if c not in file_ids]
        if problems:
            raise InputError(problems)
        return cls.from_pairs(order, pairs)

    # ---- derived matrices ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    @cached_property
    def binary(self) -> sp.csr_array:
        n, e = self.n, self.edges
        rows = np.concatenate([e[:, 0], e[:, 1]])
        cols = np.concatenate([e[:, 1], e[:, 0]])
        return sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n, n))

    @cached_property
    def n_neighbors(self) -> np.ndarray:
        return np.asarray(self.binary.sum(axis=1)).ravel().astype(int)

    @cached_property
    def row_standardised(self) -> sp.csr_array:
        d = self.n_neighbors.astype(float)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        return sp.csr_array(sp.diags(inv) @ self.binary)

    @cached_property
    def components(self) -> np.ndarray:
        """Component label of every region (islands are their own component)."""
        _, labels = connected_components(self.binary, directed=False)
        return labels

    @property
    def n_components(self) -> int:
        return int(self.components.max()) + 1 if self.n else 0

    @property
    def islands(self) -> tuple[str, ...]:
        return tuple(c for c, k in zip(self.ids, self.n_neighbors) if k == 0)

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """Real eigenvalues of the row-standardised W, ascending (islands contribute zeros)."""
        return spatial_linalg.eigenvalues(self.binary, self.n_neighbors)

    @cached_property
    def spectrum(self) -> spatial_linalg.Spectrum:
        """W = P diag(lam) P^-1 (eigenvalues and eigenvectors), computed once and shared by the ML oracles
        and the Bayesian spatial models."""
        return spatial_linalg.Spectrum.of(self)

    @property
    def rho_bounds(self) -> tuple[float, float]:
        """Admissible interval (1/lambda_min, 1) of the spatial autoregressive parameter."""
        return (1.0 / float(self.eigenvalues.min()), 1.0)

    def subset(self, ids: list[str] | tuple[str, ...]) -> "SpatialWeights":
        """The graph induced on ``ids`` (in that order)."""
        keep = {c: i for i, c in enumerate(ids)}
        old = np.array([keep.get(c, -1) for c in self.ids])
        a, b = old[self.edges[:, 0]], old[self.edges[:, 1]]
        ok = (a >= 0) & (b >= 0)
        return SpatialWeights(tuple(ids), np.column_stack([a[ok], b[ok]]))

    def to_libpysal(self):
        """A libpysal ``W`` (binary, same ids), for esda / spreg."""
        from libpysal.weights import W

        neighbors: dict[str, list[str]] = {c: [] for c in self.ids}
        for i, j in self.edges:
            neighbors[self.ids[i]].append(self.ids[j])
            neighbors[self.ids[j]].append(self.ids[i])
        return W(neighbors, id_order=list(self.ids), silence_warnings=True)

    def write_gal(self, path: str | Path) -> None:
        nbrs: list[list[str]] = [[] for _ in self.ids]
        for i, j in self.edges:
            nbrs[i].append(self.ids[j])
            nbrs[j].append(self.ids[i])
        lines = [f"0 {self.n}"]
        for c, nb in zip(self.ids, nbrs):
            lines.append(f"{c} {len(nb)}")
            lines.append(" ".join(sorted(nb)))
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _parse_gal(name: str, text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """GAL: header line, then per region a line 'id count' and a line of neighbour ids (blank for an island)."""
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and lines[-1] == "":
        lines.pop()
    ids: set[str] = set()
    pairs: list[tuple[str, str]] = []
    pos = 1
    try:
        while pos < len(lines):
            head = lines[pos].split()
            if len(head) != 2:
                raise ValueError(f"expected 'id count', got {lines[pos]!r}")
            region, count = head[0], int(head[1])
            ids.add(region)
            if count == 0:
                # an island: its neighbour line is blank (libpysal) or absent (some writers)
                pos += 2 if pos + 1 < len(lines) and lines[pos + 1] == "" else 1
                continue
            nb = lines[pos + 1].split()
            if len(nb) != count:
                raise ValueError(f"region {region} declares {count} neighbours, lists {len(nb)}")
            pairs += [(region, other) for other in nb]
            pos += 2
    except (IndexError, ValueError) as exc:
        raise InputError([Problem(name, f"malformed GAL file near line {pos + 1}: {exc}")]) from None
    ids |= {b for _, b in pairs}
    return ids, pairs


def _parse_edge_csv(name: str, text: str) -> tuple[set[str], list[tuple[str, str]]]:
    rows = [r for r in csv.reader(text.splitlines()) if r and any(x.strip() for x in r)]
    if rows and not any(ch.isdigit() for ch in rows[0][0]):
        rows = rows[1:]  # header
    pairs, problems = [], []
    for k, r in enumerate(rows, start=1):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            problems.append(Problem(name, f"edge-list row {k} needs two region ids, got {r!r}"))
            continue
        pairs.append((r[0].strip(), r[1].strip()))
    if problems:
        raise InputError(problems)
    if not pairs:
        raise InputError([Problem(name, "edge list has no edges")])
    return {x for p in pairs for x in p}, pairs
