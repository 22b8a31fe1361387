"""The frames a synthetic scan is written in: a random rigid placement, then file units/axes.

Everything inside ghum-pipe is metres, +Z up. A synthetic scan is the posed template moved by
a random rigid transform (``random_rigid``: any rotation about the vertical, a small tilt, a
translation up to a metre), giving the truth's ``verts_m``; the file frame
(``file_transform``) then scales to the file's units and, for +Y up, turns +Z into +Y
(x, y, z) -> (x, z, -y), so a body facing -Y faces +Z, the usual +Y-up convention.
The truth's ``transform`` is ``file_transform @ random_rigid``: template metres -> file.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

METRES_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001}
Z_TO_Y_UP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # (x, y, z) -> (x, z, -y)


def resolve_frame(units: str, up: str, index: int) -> tuple[str, str]:
    """The units and up axis of scan ``index``: 'mixed' alternates so that any two
    consecutive scans differ in units and any four cover (m|mm) x (+Z|+Y)."""
    if units == "mixed":
        units = ("m", "mm")[index % 2]
    if up == "mixed":
        up = ("z", "y", "y", "z")[index % 4]
    if units not in METRES_PER_UNIT or up not in ("z", "y"):
        raise ValueError(f"units must be m|cm|mm|mixed and up z|y|mixed, got {units!r}, {up!r}")
    return units, up


def file_transform(units: str, up: str) -> np.ndarray:
    """4x4 from internal metres, +Z up to the file's units and axes."""
    T = np.eye(4)
    R = Z_TO_Y_UP if up == "y" else np.eye(3)
    T[:3, :3] = R / METRES_PER_UNIT[units]
    return T


def random_rigid(rng: np.random.Generator, max_tilt_deg: float = 5.0, max_translation_m: float = 1.0) -> np.ndarray:
    """4x4 rigid transform: uniform rotation about +Z, a tilt of at most ``max_tilt_deg`` about
    a random horizontal axis, then a translation uniform in a ball of ``max_translation_m``."""
    yaw = rng.uniform(0, 2 * np.pi)
    tilt_axis = rng.uniform(0, 2 * np.pi)
    tilt = np.radians(rng.uniform(0, max_tilt_deg))
    R = (Rotation.from_rotvec(tilt * np.array([np.cos(tilt_axis), np.sin(tilt_axis), 0.0]))
         * Rotation.from_rotvec([0.0, 0.0, yaw])).as_matrix()
    d = rng.normal(size=3)
    d *= max_translation_m * rng.random() ** (1 / 3) / np.linalg.norm(d)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = d
    return T


def apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) points through a 4x4 affine transform."""
    return points @ T[:3, :3].T + T[:3, 3]


def apply_to_normals(T: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals through the linear part of T (a similarity), renormalised."""
    n = normals @ T[:3, :3].T
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-300)
