"""Guess a scan's units from the body's size, and tell a person-shaped body from other shapes.

All cues are computed on surface-area-weighted points (a mesh's vertex areas; uniform weights
for point clouds), so a densely tessellated face or hand does not outweigh the legs.

* Units: a person's longest extent (along the principal axes; raised arms included) is
  0.5-3 m. Reading the file as m, cm or mm puts that extent in range in at most one unit,
  because the three ranges (0.5-3, 50-300, 500-3000 file units) do not overlap.
* Up axis: see upright.py.
* Person or not: the area-weighted principal standard deviations s1 >= s2 >= s3 of a standing
  person are elongated (s1/s2 ~ 1.7 in a squat, 2-3.7 standing) and not flat (s3/s1 ~ 0.17).
  Point clouds weight every point alike, which lowers the ratio: a posed scanner cloud measured
  1.47 and a T-posed cloud 1.53. We reject s1/s2 < 1.3 (spheres, cubes), s1/s2 < 1.5 when the
  body is also board-like, s3/s2 < 0.2 (boxes such as 1.7 x 1.2 x 0.15 m: 1.38 and 0.13, where
  a person has s3/s2 of 0.28-0.41 from A- to T-pose), and s3/s1 < 0.05 (planes, sheets). A column or a mannequin torso with legs passes: this is a sanity check,
  not a person detector; the landmark stage's MediaPipe detection is the real one.
* Close-ups (``kind`` head / hand_left / hand_right, see kinds.py): the longest extent of a head
  cropped at the neck is 0.15-0.45 m (0.24 m on the synthetic ones), of a hand cropped at the
  wrist 0.07-0.30 m (0.13 m curled, 0.2 m open); each range spans less than a factor 10, so
  m, cm and mm are again told apart by size alone. Close-ups skip the person-shape test (only
  lines and sheets are rejected). A head's up axis is the direction from its neck cut (the
  scan's largest open boundary) to its centroid (:func:`head_up_from_cut`; 19 deg from the
  true up on a synthetic head with a random neck pose, snapped to the file axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.io.frame import METRES_PER_UNIT

PERSON_EXTENT_M = (0.5, 3.0)
MIN_ELONGATION = 1.3  # s1 / s2
MIN_ELONGATION_IF_BOARD = 1.5  # s1 / s2 when s3 / s2 < MAX_BOARD_DEPTH
MAX_BOARD_DEPTH = 0.2  # s3 / s2
MIN_THICKNESS = 0.05  # s3 / s1
CLOSEUP_EXTENT_M = {"head": (0.15, 0.45), "hand_left": (0.07, 0.30), "hand_right": (0.07, 0.30)}
MIN_CUT_RATIO = 0.3  # open-boundary length / sqrt(surface area) below this: no neck cut (a neck cut ~0.9)


def extent_range_m(kind: str = "body") -> tuple[float, float]:
    """(lo, hi) longest extent in metres of a scan of ``kind`` (body, head, hand_left, hand_right)."""
    return PERSON_EXTENT_M if kind == "body" else CLOSEUP_EXTENT_M[kind]


def vertex_weights(verts: np.ndarray, faces: np.ndarray | None) -> np.ndarray:
    """(N,) surface area per vertex (a third of each adjacent triangle), or ones for clouds.

    Unreferenced mesh vertices get the mean weight so they still count.
    """
    if faces is None or len(faces) == 0:
        return np.ones(len(verts))
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    a, b = v1 - v0, v2 - v0
    # |a x b| written out: np.cross is ~5x slower on (F, 3) arrays.
    cx = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    cy = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    cz = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    area = 0.5 * np.sqrt(cx * cx + cy * cy + cz * cz)
    w = np.bincount(faces.ravel(), weights=np.repeat(area / 3.0, 3), minlength=len(verts))
    if w.sum() <= 0:
        return np.ones(len(verts))
    w[w == 0] = w[w > 0].mean()
    return w


@dataclass(frozen=True)
class PrincipalAxes:
    """mean (3,); axes (3, 3) columns = unit axes by decreasing variance; std (3,); extent (3,)."""

    mean: np.ndarray
    axes: np.ndarray
    std: np.ndarray
    extent: np.ndarray


def principal_axes(points: np.ndarray, weights: np.ndarray) -> PrincipalAxes:
    """Weighted PCA of (N, 3) points; ``extent`` = max - min of the points along each axis."""
    w = weights / weights.sum()
    mean = w @ points
    c = points - mean
    cov = (c * w[:, None]).T @ c
    var, axes = np.linalg.eigh(cov)
    var, axes = var[::-1], axes[:, ::-1]
    proj = c @ axes
    return PrincipalAxes(mean=mean, axes=axes, std=np.sqrt(np.clip(var, 0, None)),
                         extent=proj.max(0) - proj.min(0))


def plausible_units(extent_file: float, kind: str = "body") -> list[str]:
    """Units in which a longest extent of ``extent_file`` file units is a person's (0.5-3 m), or
    that of a head/hand close-up for ``kind`` (:data:`CLOSEUP_EXTENT_M`)."""
    lo, hi = extent_range_m(kind)
    return [u for u, mpu in METRES_PER_UNIT.items() if lo <= extent_file * mpu <= hi]


def shape_problem(pa: PrincipalAxes) -> str | None:
    """Why the principal spreads are not a standing person's, or None when they are."""
    s1, s2, s3 = pa.std
    if s1 <= 0 or s2 <= 0:
        return "all points lie on a line"
    limit = MIN_ELONGATION_IF_BOARD if s3 / s2 < MAX_BOARD_DEPTH else MIN_ELONGATION
    if s1 / s2 < limit:
        return (f"it is not elongated like a standing body (spread ratio {s1 / s2:.2f} along its two "
                f"main axes, a person has > {limit})")
    if s3 / s1 < MIN_THICKNESS:
        return f"it is flat (thickness ratio {s3 / s1:.3f}, a person has > {MIN_THICKNESS})"
    return None


def closeup_problem(pa: PrincipalAxes) -> str | None:
    """Why a close-up's principal spreads are not a head's or hand's (a line, a sheet), or None."""
    s1, s2, s3 = pa.std
    if s1 <= 0 or s2 <= 0:
        return "all points lie on a line"
    if s3 / s1 < MIN_THICKNESS:
        return f"it is flat (thickness ratio {s3 / s1:.3f}, a head or hand has > {MIN_THICKNESS})"
    return None


def head_up_from_cut(verts: np.ndarray, faces: np.ndarray | None, weights: np.ndarray) -> np.ndarray | None:
    """(3,) unit up direction of a head close-up in file axes, or None when it cannot be told.

    A head scanned on its own is open only where it was cut from the body, at the neck: the
    area-weighted centroid lies above that cut. Boundary vertices (of edges used by one face)
    are weighted by their boundary edge length, so small holes (nostrils, unseen patches) count
    little. None for point clouds and closed meshes, or when the open boundary is too short
    (below MIN_CUT_RATIO x sqrt(surface area)) to be a neck cut.
    """
    if faces is None or len(faces) == 0:
        return None
    f = np.asarray(faces, dtype=np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    rim = uniq[counts == 1]
    if len(rim) == 0:
        return None
    length = np.linalg.norm(verts[rim[:, 0]] - verts[rim[:, 1]], axis=1)
    area = weights.sum()
    if area <= 0 or length.sum() < MIN_CUT_RATIO * np.sqrt(area):
        return None
    cut = (0.5 * length[:, None] * (verts[rim[:, 0]] + verts[rim[:, 1]])).sum(0) / length.sum()
    centre = weights @ verts / area
    up = centre - cut
    n = np.linalg.norm(up)
    return None if n <= 0 else up / n
