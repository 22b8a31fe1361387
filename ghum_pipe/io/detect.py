"""Guess a scan's units and up axis from the body itself, and tell a person from other shapes.

All cues are computed on surface-area-weighted points (a mesh's vertex areas; uniform weights
for point clouds), so a densely tessellated face or hand does not outweigh the legs.

* Units: a person's longest extent (along the principal axes; raised arms included) is
  0.5-3 m. Reading the file as m, cm or mm puts that extent in range in at most one unit,
  because the three ranges (0.5-3, 50-300, 500-3000 file units) do not overlap.
* Up axis: the principal axis of largest area-weighted variance. Legs and torso make a
  standing body long even in a T-pose: on the template the height's standard deviation is
  2x the arm span's in T-pose, 2.3x in A-pose, 3.7x with arms raised (arms are thin).
* Head side (the sign): two cues that agree on every template pose we tried (A, T, arms
  raised, knee raised, torso twist, squat; see tests/test_io_detect.py):
  (1) the feet end carries more surface in its last 5 % of height (two flat feet, 2.6x the
  skull cap in A-pose, still 1.26x in a squat), and (2) the area distribution along the
  axis is skewed toward the feet (long thin legs below a bulky torso: skewness -0.4 in
  A-pose). The score log(area_bottom / area_top) - skewness is > 0 when the axis points up.
* Person or not: the area-weighted principal standard deviations s1 >= s2 >= s3 of a standing
  person are elongated (s1/s2 ~ 1.7 in a squat, 2-3.7 standing) and not flat (s3/s1 ~ 0.17).
  We reject s1/s2 < 1.5 (spheres, cubes, boxes such as 1.7 x 1.2 x 0.15 m (1.38)) and s3/s1 < 0.05
  (planes, sheets). A column or a mannequin torso with legs passes: this is a sanity check,
  not a person detector; the landmark stage's MediaPipe detection is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.io.frame import METRES_PER_UNIT

PERSON_EXTENT_M = (0.5, 3.0)
MIN_ELONGATION = 1.5  # s1 / s2
MIN_THICKNESS = 0.05  # s3 / s1
END_SLAB = 0.05  # fraction of the height compared at each end for the head-side cue
SNAP_DEG = 20.0  # scanners write axis-aligned frames: snap the up axis to a file axis within this
UNCERTAIN_SCORE = 0.25  # |head-side score| below this: say the up sign is a guess


def vertex_weights(verts: np.ndarray, faces: np.ndarray | None) -> np.ndarray:
    """(N,) surface area per vertex (a third of each adjacent triangle), or ones for clouds.

    Unreferenced mesh vertices get the mean weight so they still count.
    """
    if faces is None or len(faces) == 0:
        return np.ones(len(verts))
    v = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
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


def plausible_units(extent_file: float) -> list[str]:
    """Units in which a longest extent of ``extent_file`` file units is a person's (0.5-3 m)."""
    lo, hi = PERSON_EXTENT_M
    return [u for u, mpu in METRES_PER_UNIT.items() if lo <= extent_file * mpu <= hi]


def shape_problem(pa: PrincipalAxes) -> str | None:
    """Why the principal spreads are not a standing person's, or None when they are."""
    s1, s2, s3 = pa.std
    if s1 <= 0 or s2 <= 0:
        return "all points lie on a line"
    if s1 / s2 < MIN_ELONGATION:
        return (f"it is not elongated like a standing body (spread ratio {s1 / s2:.2f} along its two "
                f"main axes, a person has > {MIN_ELONGATION})")
    if s3 / s1 < MIN_THICKNESS:
        return f"it is flat (thickness ratio {s3 / s1:.3f}, a person has > {MIN_THICKNESS})"
    return None


@dataclass(frozen=True)
class UpGuess:
    """up (3,) unit vector in file axes; axis "+y"... when snapped, else None; score > 0 = sure."""

    up: np.ndarray
    axis: str | None
    angle_deg: float  # between the body's long axis and the snapped file axis
    score: float

    def describe(self) -> str:
        where = (f"{self.axis} (body axis {self.angle_deg:.0f} deg from it)" if self.axis
                 else "the body's long axis " + ",".join(f"{x:.3f}" for x in self.up)
                 + f" ({self.angle_deg:.0f} deg from the nearest file axis, kept exact)")
        text = f"up axis detected: {where}"
        if abs(self.score) < UNCERTAIN_SCORE:
            text += "; head side uncertain, pass --up if the result is upside down"
        return text


def head_side_score(points: np.ndarray, weights: np.ndarray, axis: np.ndarray) -> float:
    """> 0 when ``axis`` points from the feet to the head (see the module docstring)."""
    w = weights / weights.sum()
    s = points @ axis
    lo, hi = s.min(), s.max()
    slab = END_SLAB * (hi - lo)
    bottom = w[s <= lo + slab].sum()
    top = w[s >= hi - slab].sum()
    mu = w @ s
    sd = np.sqrt(w @ (s - mu) ** 2)
    skew = w @ ((s - mu) / sd) ** 3 if sd > 0 else 0.0
    return float(np.log((bottom + 1e-9) / (top + 1e-9)) - skew)


def detect_up(points: np.ndarray, weights: np.ndarray) -> UpGuess:
    """The file-space up direction of a body: long axis, head side, snapped to a file axis."""
    pa = principal_axes(points, weights)
    axis = pa.axes[:, 0]
    score = head_side_score(points, weights, axis)
    if score < 0:
        axis, score = -axis, -score
    i = int(np.argmax(np.abs(axis)))
    angle = float(np.degrees(np.arccos(np.clip(abs(axis[i]), 0.0, 1.0))))
    if angle <= SNAP_DEG:
        name = ("+" if axis[i] > 0 else "-") + "xyz"[i]
        snapped = np.zeros(3)
        snapped[i] = np.sign(axis[i])
        return UpGuess(up=snapped, axis=name, angle_deg=angle, score=score)
    return UpGuess(up=axis, axis=None, angle_deg=angle, score=score)
