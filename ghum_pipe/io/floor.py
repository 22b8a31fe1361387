"""Find and remove the floor a body stands on (raw photogrammetry / depth-camera scans keep it).

The floor touches the feet, so body splitting keeps it with the person, and it would wreck the
shape check and the up axis. We look for a plane under the body with RANSAC (open3d's
``segment_plane``, seeded) and call it a floor only when no part of a body could be it:

* it is wide in both directions (>= FLOOR_MIN_WIDTH_M): no body surface is flat to 1.5 cm over
  half a metre square, feet soles are 10 cm wide;
* it holds >= FLOOR_MIN_SHARE of the points;
* nearly all other points are on one side of it (the body stands on it, it does not cut it);
* the body above it is long along its normal (within FLOOR_MAX_TILT_DEG): a plane touching
  the shoulder blades, buttocks and calves of a body lying along it passes the tests above.

Its normal, pointing to the body, is then the up direction: better than the body's long axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOOR_TOLERANCE_M = 0.015  # inlier distance: scanner noise on a flat floor
FLOOR_MIN_WIDTH_M = 0.5
FLOOR_MIN_SHARE = 0.03
BOTTOM_SLAB = 0.15  # share of the extent searched at each end: a floor tilted up to ~8 deg fits
FLOOR_SAMPLE = 5000  # RANSAC on at most this many of those points (seeded); all are classified
RANSAC_ITERATIONS = 200
FLOOR_MAX_TILT_DEG = 40.0  # between the floor normal and the body's long axis
MAX_BELOW_SHARE = 0.01  # points more than a tolerance below the floor (through-floor noise)


@dataclass(frozen=True)
class Floor:
    """normal (3,) unit, pointing to the body; offset: plane is {p : normal @ p = offset};
    floor (N,) bool: floor points and anything below it, to remove."""

    normal: np.ndarray
    offset: float
    floor: np.ndarray

    def describe(self) -> str:
        return f"removed a floor plane ({int(self.floor.sum())} points)"


def find_floor(points_m: np.ndarray, seed: int = 0) -> Floor | None:
    """The floor under a body, or None. points_m: (N, 3) in metres, file axes.

    RANSAC runs on the bottom BOTTOM_SLAB of the points along each of the six file axes (a
    floor is under the body, and scanners write near-axis-aligned frames): there the floor is
    a large share of the points even when it is a small share of the scan, so a few hundred
    iterations find it reliably.
    """
    import open3d as o3d

    n = len(points_m)
    rng = np.random.default_rng(seed)
    o3d.utility.random.seed(seed)
    best = None
    for direction in np.concatenate([np.eye(3), -np.eye(3)]):
        s = points_m @ direction
        candidates = points_m[s <= s.min() + BOTTOM_SLAB * (s.max() - s.min())]
        if len(candidates) < 3:
            continue
        if len(candidates) > FLOOR_SAMPLE:
            candidates = candidates[rng.choice(len(candidates), FLOOR_SAMPLE, replace=False)]
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(candidates))
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            plane, _ = cloud.segment_plane(FLOOR_TOLERANCE_M, 3, RANSAC_ITERATIONS)
        floor = _check_floor(points_m, np.asarray(plane, dtype=np.float64))
        if floor is not None and (best is None or floor.floor.sum() > best.floor.sum()):
            best = floor
    return best


def _check_floor(points_m: np.ndarray, plane: np.ndarray) -> Floor | None:
    """A :class:`Floor` if the plane (a, b, c, d) passes the module's tests, else None."""
    n = len(points_m)
    scale = np.linalg.norm(plane[:3])
    normal, offset = plane[:3] / scale, -plane[3] / scale
    height = points_m @ normal - offset
    on_plane = np.abs(height) <= FLOOR_TOLERANCE_M
    if on_plane.sum() < FLOOR_MIN_SHARE * n:
        return None
    if (height > FLOOR_TOLERANCE_M).sum() < (height < -FLOOR_TOLERANCE_M).sum():
        normal, offset, height = -normal, -offset, -height  # point to the body
    if (height < -FLOOR_TOLERANCE_M).sum() > MAX_BELOW_SHARE * n:
        return None  # the plane cuts through the points: not something they stand on
    flat = points_m[on_plane] - points_m[on_plane].mean(0)
    flat = flat - np.outer(flat @ normal, normal)
    flat = flat[:: max(1, len(flat) // 20000)]
    # 4 standard deviations: a filled disc's diameter (1.15 sides of a square).
    widths = 4.0 * np.linalg.svd(flat, compute_uv=False)[:2] / np.sqrt(len(flat))
    if len(widths) < 2 or widths.min() < FLOOR_MIN_WIDTH_M:
        return None
    body = points_m[height > FLOOR_TOLERANCE_M]
    body = body[:: max(1, len(body) // 20000)] - body.mean(0)
    long_axis = np.linalg.svd(body, full_matrices=False)[2][0]
    if abs(long_axis @ normal) < np.cos(np.radians(FLOOR_MAX_TILT_DEG)):
        return None  # a plane along the body (touching its back), not under it
    return Floor(normal=normal, offset=float(offset), floor=height <= FLOOR_TOLERANCE_M)
