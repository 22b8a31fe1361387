"""Which way is up in a body scan: the body's long axis, and which end the head is at.

* Long axis: the principal axis of largest surface-area-weighted variance. Legs and torso make
  a standing body long even in a T-pose: on the template the height's standard deviation is
  2x the arm span's in T-pose, 2.3x in A-pose, 3.7x with arms raised (arms are thin).
* Head side: compare the scan's profile along the axis with the template's, read both ways.
  A standing body has a typical profile: thin, two-legged lower half, a bulky torso with the
  arms beside it above the middle, a small head on top. Per height bin (the length normalised
  to [0, 1]) we take the cumulative surface area (CDF) and the horizontal spread (radius of
  gyration of the slice about its centre, over the length). The distance to a reference is the
  earth mover's distance of the area distributions (mean |CDF difference|) plus
  SPREAD_WEIGHT x the mean |spread difference|, both in fractions of the length. References:
  the template in a few standing poses (:data:`REFERENCE_POSES`, shipped as data so that
  reading a scan needs no body model); the reading direction nearer to its closest reference is up.
  How wide its margins are on held-out poses and scans, and which simpler cues failed:
  docs/register.md, "Before the fit: units and up axis".
* Snapping: scanners write axis-aligned frames, and a posed body's long axis leans (up to
  21 deg on the synthetic scans: a forward bend with raised arms), so an axis within SNAP_DEG
  of a file axis is taken to be that axis; otherwise the exact direction is kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ghum_pipe.io.detect import PrincipalAxes, principal_axes, vertex_weights

SNAP_DEG = 30.0
N_BINS = 40
SPREAD_WEIGHT = 2.0  # spread and area differences are both length fractions; spread is the sharper cue
UNCERTAIN_MARGIN = 0.01  # margin (length fraction) below which the head side is called a guess

# Axis-angle (radians) per template joint, world-aligned joint frames (template/lbs.py).
# Standing poses a body scanner sees: A (rest), T, arms raised overhead, one knee raised,
# and a half squat, so a crouch or a raised arm is still nearer "up" than "down".
REFERENCE_POSES = {
    "A": {},
    "T": {"shoulder01.L": (0, -0.4, 0), "shoulder01.R": (0, 0.4, 0),
          "upperarm01.L": (0, -0.8, 0), "upperarm01.R": (0, 0.8, 0)},
    "arms_up": {"upperarm01.L": (0, -2.3, 0), "upperarm01.R": (0, 2.3, 0)},
    "knee_up": {"upperleg01.L": (-0.9, 0, 0), "lowerleg01.L": (1.3, 0, 0)},
    "squat": {"upperleg01.L": (-1.2, 0, 0), "lowerleg01.L": (1.8, 0, 0),
              "upperleg01.R": (-1.2, 0, 0), "lowerleg01.R": (1.8, 0, 0)},
}


def axial_profile(points: np.ndarray, weights: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(2, N_BINS) profile along ``axis``, the extent normalised to [0, 1] in N_BINS slices:
    row 0 the cumulative weight (CDF), row 1 each slice's horizontal radius of gyration about
    its own centre, over the length (0 for an empty slice)."""
    s = points @ axis
    length = s.max() - s.min()
    t = (s - s.min()) / length if length > 0 else np.zeros_like(s)
    b = np.minimum((t * N_BINS).astype(np.int64), N_BINS - 1)
    area = np.bincount(b, weights, N_BINS)
    safe = np.maximum(area, 1e-300)
    horizontal = points - np.outer(s, axis)
    centre = np.stack([np.bincount(b, weights * horizontal[:, k], N_BINS) for k in range(3)], 1) / safe[:, None]
    mean_sq = np.bincount(b, weights * (horizontal**2).sum(1), N_BINS) / safe
    spread = np.sqrt(np.clip(mean_sq - (centre**2).sum(1), 0.0, None)) / max(length, 1e-300)
    return np.stack([np.cumsum(area) / area.sum(), spread])


def flipped_profile(profile: np.ndarray) -> np.ndarray:
    """The same profile read from the other end."""
    cdf, spread = profile
    return np.stack([np.concatenate([1.0 - cdf[-2::-1], [1.0]]), spread[::-1]])


PROFILES_FILE = Path(__file__).with_name("upright_profiles.npy")


def profiles_of(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(P, V, 3) posed meshes of one topology (+Z up) -> (P, 2, N_BINS) profiles along +Z."""
    z = np.array([0.0, 0.0, 1.0])
    return np.stack([axial_profile(v, vertex_weights(v, faces), z) for v in np.asarray(verts, dtype=np.float64)])


@functools.lru_cache(maxsize=1)
def reference_profiles() -> np.ndarray:
    """(P, 2, N_BINS) profiles of the template in :data:`REFERENCE_POSES`, shipped with the
    package (reading a scan needs no body model); ``scripts/make_upright_profiles.py`` makes
    them from the template with :func:`profiles_of` and checks the shipped copy."""
    return np.load(PROFILES_FILE)


def profile_distance(profile: np.ndarray) -> float:
    """Distance (length fraction) from a (2, N_BINS) profile to the nearest reference."""
    diff = np.abs(reference_profiles() - profile).mean(2)  # (P, 2)
    return float((diff[:, 0] + SPREAD_WEIGHT * diff[:, 1]).min())


def head_side_margin(points: np.ndarray, weights: np.ndarray, axis: np.ndarray) -> float:
    """> 0 when ``axis`` points from the feet to the head; |value| is the confidence."""
    profile = axial_profile(points, weights, axis)
    return profile_distance(flipped_profile(profile)) - profile_distance(profile)


@dataclass(frozen=True)
class UpGuess:
    """up (3,) unit vector in file axes; axis "+y"... when snapped, else None.

    angle_deg: between the body's long axis and the nearest file axis; margin: the head-side
    margin (>= 0; small = unsure).
    """

    up: np.ndarray
    axis: str | None
    angle_deg: float
    margin: float
    source: str = "body axis"  # or "floor normal"

    def describe(self) -> str:
        if self.axis:
            where = f"{self.axis} ({self.source} {self.angle_deg:.0f} deg from it)"
        else:
            where = (f"the {self.source} " + ",".join(f"{x:.3f}" for x in self.up)
                     + f" ({self.angle_deg:.0f} deg from the nearest file axis, kept exact)")
        text = f"up axis detected: {where}"
        if self.margin < UNCERTAIN_MARGIN:
            text += "; head side uncertain, pass --up if the result is upside down"
        return text


def detect_up(points: np.ndarray, weights: np.ndarray, axes: PrincipalAxes | None = None) -> UpGuess:
    """The file-space up direction of a body.

    Args:
        points: (N, 3) the body's points in file coordinates (any unit).
        weights: (N,) surface area per point (:func:`vertex_weights`).
        axes: their :func:`principal_axes`, when already computed.
    """
    axes = principal_axes(points, weights) if axes is None else axes
    axis = axes.axes[:, 0]
    margin = head_side_margin(points, weights, axis)
    if margin < 0:
        axis, margin = -axis, -margin
    return snap_up(axis, margin)


def snap_up(axis: np.ndarray, margin: float, source: str = "body axis") -> UpGuess:
    """An :class:`UpGuess` for a (3,) file-space up direction, snapped to a file axis within SNAP_DEG."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    i = int(np.argmax(np.abs(axis)))
    angle = float(np.degrees(np.arccos(np.clip(abs(axis[i]), 0.0, 1.0))))
    if angle <= SNAP_DEG:
        snapped = np.zeros(3)
        snapped[i] = np.sign(axis[i])
        return UpGuess(up=snapped, axis=("+" if axis[i] > 0 else "-") + "xyz"[i], angle_deg=angle,
                       margin=margin, source=source)
    return UpGuess(up=axis, axis=None, angle_deg=angle, margin=margin, source=source)
