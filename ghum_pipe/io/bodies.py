"""Separate a scan into bodies: connected groups of points, so the largest person is kept.

A scan may hold a second person, a stool, or floating scanner debris. We group points that
are close in space (occupied voxels touching in the 26-neighbourhood, a DBSCAN-like rule with
minPts = 1) or joined by a mesh edge, and label the connected groups. Working on voxels keeps
this linear in the number of points (a million-point scan takes well under a second) where a
radius search on every point would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# A body's typical surface area (m^2); with N points the mean spacing is about sqrt(area / N).
BODY_AREA_M2 = 2.0
# Voxel edge in metres: gaps wider than ~1-2 voxels separate bodies. Two people standing apart,
# a prop on a table, debris: all further than this. Raised for sparse clouds (see cell_size_m).
MIN_CELL_M = 0.04
# A group with at least this share of the largest group's points counts as another body
# (reported); smaller groups are fragments (debris, a detached strand of hair).
BODY_SHARE_OF_LARGEST = 0.10


@dataclass(frozen=True)
class Bodies:
    """labels (N,) int64 group per point, 0 = largest; sizes (G,) each group's weight (surface
    area for a mesh, point count for a cloud), descending; measure names that weight."""

    labels: np.ndarray
    sizes: np.ndarray
    measure: str = "points"

    @property
    def largest_share(self) -> float:
        return float(self.sizes[0] / self.sizes.sum())

    @property
    def n_bodies(self) -> int:
        return int((self.sizes >= BODY_SHARE_OF_LARGEST * self.sizes[0]).sum())

    def describe(self) -> str | None:
        """A note for the Scan when anything was dropped, else None."""
        if len(self.sizes) == 1:
            return None
        share = 100.0 * self.largest_share
        n_frag = len(self.sizes) - self.n_bodies
        text = []
        if self.n_bodies > 1:
            text.append(f"{self.n_bodies} bodies found; kept the largest ({share:.0f}% of {self.measure})")
        if n_frag:
            frag = 100.0 * self.sizes[self.n_bodies:].sum() / self.sizes.sum()
            text.append(f"dropped {n_frag} small fragment{'s' * (n_frag > 1)} ({frag:.1f}% of {self.measure})")
        return "; ".join(text)


def cell_size_m(n_points: int) -> float:
    """Voxel edge (m): MIN_CELL_M, or 2x the expected point spacing for sparse clouds."""
    return max(MIN_CELL_M, 2.0 * np.sqrt(BODY_AREA_M2 / max(n_points, 1)))


def split_bodies(points: np.ndarray, faces: np.ndarray | None, cell: float,
                 weights: np.ndarray | None = None) -> Bodies | None:
    """Group points into bodies, the largest first.

    Args:
        points: (N, 3) finite coordinates, any unit.
        faces: (F, 3) int64 or None; mesh edges always join their vertices' groups.
        cell: voxel edge in the points' unit.
        weights: (N,) surface area per vertex for a mesh, so "largest" means the most surface
            whatever the tessellation; None counts points.
    Returns:
        :class:`Bodies`, or None when the grid would be absurdly fine for this extent (more than
        2^20 voxels along an axis): the caller's unit guess is then wrong anyway.
    """
    q = np.floor((points - points.min(0)) / cell).astype(np.int64) + 1
    dims = q.max(0) + 2
    if np.any(dims > 2**20):
        return None
    keys = (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]
    voxel_keys, point_voxel = np.unique(keys, return_inverse=True)
    point_voxel = point_voxel.ravel()
    rows, cols = [], []
    # Half of the 26 neighbour offsets; the graph is undirected.
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)]
    for a, b, c in offsets:
        target = voxel_keys + (a * dims[1] + b) * dims[2] + c
        j = np.searchsorted(voxel_keys, target)
        j[j == len(voxel_keys)] = 0
        hit = voxel_keys[j] == target
        rows.append(np.nonzero(hit)[0])
        cols.append(j[hit])
    if faces is not None and len(faces):
        for i0, i1 in ((0, 1), (1, 2)):
            a, b = point_voxel[faces[:, i0]], point_voxel[faces[:, i1]]
            far = a != b
            rows.append(a[far])
            cols.append(b[far])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = len(voxel_keys)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, voxel_label = connected_components(graph, directed=False)
    label = voxel_label[point_voxel]
    sizes = np.bincount(label, weights=weights)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    measure = "points" if weights is None else "the surface"
    return Bodies(labels=rank[label].astype(np.int64), sizes=sizes[order], measure=measure)
