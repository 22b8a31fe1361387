"""A scan file's frame: its length unit and up axis, and the similarity to ghum-pipe's frame.

Inside ghum-pipe every geometry is in metres with +Z up. A :class:`Frame` records how a scan
file differs (``units``, ``up``) and converts points and directions both ways, so every output
can be written back in the file's own units and axes:

    p_internal = metres_per_unit * rotation @ p_file          (no translation)
    p_file     = rotation.T @ p_internal / metres_per_unit

``rotation`` is the smallest proper rotation taking the file's up direction onto +Z (a
quarter turn about X for a +Y-up file, so a glTF body facing +Z ends up facing -Y like the
template). There is no translation: the body stays where the file put it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRES_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001}

AXES = {
    "+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0),
    "+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0),
}


def parse_up(up: str) -> str:
    """Normalise a user's up axis ("y", "+Y", "-z", " Z ") to one of :data:`AXES`' keys.

    Raises ValueError naming the accepted spellings.
    """
    key = str(up).strip().lower()
    if key in ("x", "y", "z"):
        key = "+" + key
    if key not in AXES:
        raise ValueError(f"up axis {up!r} not understood; use one of +x -x +y -y +z -z")
    return key


def parse_units(units: str) -> str:
    """Normalise "M", " mm " ... to a key of :data:`METRES_PER_UNIT`; ValueError otherwise."""
    key = str(units).strip().lower()
    if key not in METRES_PER_UNIT:
        raise ValueError(f"units {units!r} not understood; use one of m cm mm")
    return key


def canonical_metres(p: np.ndarray) -> np.ndarray:
    """(..., 3) internal coordinates (metres) rounded to the nearest float32, returned as float64.

    The same geometry written in metres or millimetres, +Z or +Y up, reaches the internal frame
    with differences in the last bits of a float64 (0.001 * (1000 x) is not always x). The
    registration's optimiser amplifies differences that small into tenths of a millimetre (see
    docs/register.md, "Same scan, any frame"), so every scan input (points, normals, landmarks)
    is rounded onto one grid at load: the same numbers whatever the file's frame. float32 in
    metres keeps 0.12 microns at 2 m, what every PLY file holds anyway.
    """
    return np.asarray(p, dtype=np.float64).astype(np.float32).astype(np.float64)


def rotation_to_z_up(up_file: np.ndarray) -> np.ndarray:
    """(3, 3) proper rotation R with R @ up_file = +Z: the smallest such rotation (Rodrigues).

    ``up_file``: (3,) direction in file coordinates (normalised here). A -Z up is a half turn,
    whose axis is ambiguous: we turn about X.
    """
    u = np.asarray(up_file, dtype=np.float64)
    u = u / np.linalg.norm(u)
    z = np.array([0.0, 0.0, 1.0])
    c = float(u @ z)
    if c < -1.0 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    k = np.cross(u, z)  # axis * sin(angle)
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + K + K @ K / (1.0 + c)


@dataclass(frozen=True, eq=False)
class Frame:
    """How a scan file's coordinates relate to ghum-pipe's (metres, +Z up).

    Attributes:
        units: "m", "cm" or "mm": the file's length unit.
        up: the file's up axis, "+x" ... "-z"; or "x,y,z" (a unit vector, 4 decimals) when the
            body stands along no file axis and the exact direction was kept.
        metres_per_unit: 1, 0.01 or 0.001.
        rotation: (3, 3) proper rotation, file axes -> internal axes (+Z up).
    """

    units: str
    up: str
    metres_per_unit: float
    rotation: np.ndarray

    @classmethod
    def make(cls, units: str = "m", up: str | np.ndarray = "+z") -> "Frame":
        """A frame from a unit name and an up axis name ("+y") or a (3,) file-space direction."""
        units = parse_units(units)
        if isinstance(up, str):
            up_name = parse_up(up)
            up_vec = np.array(AXES[up_name])
        else:
            up_vec = np.asarray(up, dtype=np.float64)
            up_vec = up_vec / np.linalg.norm(up_vec)
            up_name = ",".join(f"{x:.4f}" for x in up_vec)
        R = rotation_to_z_up(up_vec)
        return cls(units=units, up=up_name, metres_per_unit=METRES_PER_UNIT[units], rotation=R)

    def to_internal(self, p_file: np.ndarray) -> np.ndarray:
        """(..., 3) points in file units/axes -> (..., 3) float64 metres, +Z up."""
        return self.metres_per_unit * (np.asarray(p_file, dtype=np.float64) @ self.rotation.T)

    def to_file(self, p_m: np.ndarray) -> np.ndarray:
        """(..., 3) points in metres, +Z up -> (..., 3) float64 in the file's units and axes."""
        return (np.asarray(p_m, dtype=np.float64) @ self.rotation) / self.metres_per_unit

    def to_internal_normals(self, n_file: np.ndarray) -> np.ndarray:
        """(..., 3) directions (normals) in file axes -> internal axes; lengths unchanged."""
        return np.asarray(n_file, dtype=np.float64) @ self.rotation.T

    def to_file_normals(self, n_m: np.ndarray) -> np.ndarray:
        """(..., 3) directions in internal axes -> file axes; lengths unchanged."""
        return np.asarray(n_m, dtype=np.float64) @ self.rotation

    def matrix(self) -> np.ndarray:
        """(4, 4) similarity taking internal metres (+Z up) to file coordinates."""
        T = np.eye(4)
        T[:3, :3] = self.rotation.T / self.metres_per_unit
        return T

    def to_dict(self) -> dict:
        """JSON-able: ``{"units", "up", "metres_per_unit", "rotation": 3x3 nested list}``."""
        return {
            "units": self.units,
            "up": self.up,
            "metres_per_unit": self.metres_per_unit,
            "rotation": self.rotation.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Frame":
        R = np.asarray(d["rotation"], dtype=np.float64).reshape(3, 3)
        return cls(units=str(d["units"]), up=str(d["up"]),
                   metres_per_unit=float(d["metres_per_unit"]), rotation=R)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Frame) and self.units == other.units and self.up == other.up
                and np.allclose(self.rotation, other.rotation, atol=1e-9))

    def __hash__(self) -> int:
        return hash((self.units, self.up))

    def __repr__(self) -> str:
        return f"Frame(units={self.units!r}, up={self.up!r})"
