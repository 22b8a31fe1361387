"""``load_scan``: one body scan file -> :class:`Scan` in metres, +Z up, with its file :class:`Frame`.

Steps (each failure is a one-line ScanError naming the file, what is wrong and what to try):
read the file (formats.py); drop non-finite points when they are < 1 %; split into bodies and
pick the unit in which the largest body has a person's size (bodies.py, detect.py); keep the
largest body; check it is person-shaped; detect the up axis; convert to metres, +Z up.
Close-ups (``kind`` head / hand_left / hand_right, see kinds.py) are checked against a head's or
a hand's size instead, have no floor, and take their up axis from ``up``, else (head) from the
neck cut (detect.head_up_from_cut); a hand keeps the file's axes (its registration finds the
hand's orientation from its landmarks, so no up is needed). The input file is only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ghum_pipe.errors import ScanError
from ghum_pipe.io.bodies import split_bodies, cell_size_m
from ghum_pipe.io.detect import (PrincipalAxes, closeup_problem, extent_range_m, head_up_from_cut, plausible_units,
                                 principal_axes, shape_problem, vertex_weights)
from ghum_pipe.io.formats import RawGeometry, read_geometry
from ghum_pipe.io.frame import METRES_PER_UNIT, Frame, canonical_metres, parse_units, parse_up
from ghum_pipe.io.floor import Floor, find_floor
from ghum_pipe.io.kinds import check_kind
from ghum_pipe.io.upright import detect_up, snap_up

MAX_NONFINITE_SHARE = 0.01
MIN_BODY_SHARE = 0.5


@dataclass(eq=False)
class Scan:
    """One body scan, in ghum-pipe's frame.

    Attributes:
        id: the file stem ("subject_012" for subject_012.ply).
        path: the file read.
        verts: (N, 3) float64, metres, +Z up; the largest body only.
        faces: (F, 3) int64 into verts, or None for a point cloud.
        normals: (N, 3) float64 unit vectors in internal axes, when the file had them.
        colors: (N, 3) uint8 per vertex (texture sampled at the vertices when textured).
        uv: (N, 2) float64 and texture (H, W, 3) uint8, when the file had a texture.
        frame: the file's units and axes; ``frame.to_file`` takes results back.
        notes: what was changed or guessed, for the report.
    """

    id: str
    path: Path
    verts: np.ndarray
    faces: np.ndarray | None
    normals: np.ndarray | None
    colors: np.ndarray | None
    frame: Frame
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_point_cloud(self) -> bool:
        return self.faces is None

    @property
    def n_points(self) -> int:
        return len(self.verts)

    def to_trimesh(self):
        """A trimesh.Trimesh (or PointCloud) of the internal-frame geometry."""
        import trimesh

        if self.faces is None:
            return trimesh.PointCloud(self.verts, colors=self.colors)
        return trimesh.Trimesh(self.verts, self.faces, vertex_colors=self.colors, process=False)


def load_scan(path: str | Path, units: str | None = None, up: str | None = None,
              min_points: int = 2000, kind: str = "body", frame: Frame | None = None) -> Scan:
    """Read a body scan (or a head/hand close-up) and bring it to metres, +Z up.

    Args:
        path: a .ply .obj .stl .off .glb .gltf mesh or .ply .pcd .xyz (.pts .txt) point cloud.
        units: "m" | "cm" | "mm" to force the file's unit; None = detect from the body's size.
        up: "+x" ... "-z" (or "y" = "+y") to force the file's up axis; None = detect.
        min_points: fewer points than this (in the kept body) is an error.
        kind: "body" | "head" | "hand_left" | "hand_right" (see ``ghum_pipe.io.kinds``).
        frame: the file's frame as an earlier read found it (``scan.json``): units and up axis are
            not detected again and the person-shape checks are skipped; ``units``/``up`` ignored.
    Returns:
        :class:`Scan`. Raises :class:`ScanError` on anything a user must fix.
    """
    path = Path(path)
    try:
        units = None if units is None else parse_units(units)
        up = None if up is None else parse_up(up)
    except ValueError as e:
        raise ScanError(str(e), path, "Fix the --units/--up option") from None
    kind = check_kind(kind, path)
    raw = read_geometry(path)
    notes = list(raw.notes)
    if len(raw.verts) == 0:
        raise ScanError("the file holds no vertices", path, "Check the export wrote the geometry")
    raw = _drop_nonfinite(raw, path, notes)
    if len(raw.verts) < min_points:
        raise ScanError(f"{len(raw.verts)} points, a body scan needs at least {min_points}", path,
                        "Check the file is a whole-body scan, not a preview or a part")
    weights = vertex_weights(raw.verts, raw.faces)
    if frame is not None:
        units = frame.units
    units, keep, axes, floor = _units_and_body(raw, weights, path, units, notes, kind)
    raw, weights = _subset(raw, keep), weights[keep]
    if len(raw.verts) < min_points:
        raise ScanError(f"the kept body has {len(raw.verts)} points, at least {min_points} are needed",
                        path, "Check the file is a whole-body scan")
    if frame is None and kind != "body":
        frame = _closeup_frame(raw, weights, axes, path, units, up, kind, notes)
    elif frame is None:  # (a given frame was recorded by an earlier read of this file)
        problem = shape_problem(axes)
        if problem:
            raise ScanError(f"does not look like a person: {problem}", path,
                            "Check the file is a scan of one standing person (sitting or crouched bodies are not "
                            "supported); for a head or hand close-up give its kind (id suffix -head, -hand_left, "
                            "-hand_right, or kinds.csv)")
        if up is None:
            if floor is not None:
                guess = snap_up(floor.normal, 1.0, "floor normal")
            else:
                guess = detect_up(raw.verts, weights, axes)
            notes.append(guess.describe())
            frame = Frame.make(units, guess.axis or guess.up)
        else:
            frame = Frame.make(units, up)
    normals = None
    if raw.normals is not None:
        normals = frame.to_internal_normals(raw.normals)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = canonical_metres(np.divide(normals, length, out=np.zeros_like(normals), where=length > 0))
    # one grid whatever the file's units and axes (canonical_metres): same scan, same numbers
    return Scan(id=path.stem, path=path, verts=canonical_metres(frame.to_internal(raw.verts)), faces=raw.faces,
                normals=normals, colors=raw.colors, frame=frame, uv=raw.uv, texture=raw.texture,
                notes=notes)


def _closeup_frame(raw: RawGeometry, weights: np.ndarray, axes: PrincipalAxes, path: Path, units: str,
                   up: str | None, kind: str, notes: list[str]) -> Frame:
    """The file frame of a head/hand close-up: its shape checked (not a line or a sheet), up from
    ``up``, else a head's neck cut; a hand keeps the file's axes (see the module docstring)."""
    problem = closeup_problem(axes)
    if problem:
        raise ScanError(f"does not look like a {kind.replace('_', ' ')} close-up: {problem}", path,
                        "Check the file and its kind (kinds.csv or the -head/-hand_left/-hand_right id suffix)")
    if up is not None:
        return Frame.make(units, up)
    if kind != "head":
        notes.append("up axis: the file's axes kept (a hand close-up needs none; its landmarks orient it)")
        return Frame.make(units, "+z")
    direction = head_up_from_cut(raw.verts, raw.faces, weights)
    if direction is None:
        what = "a point cloud" if raw.faces is None else "a mesh without an open neck cut"
        raise ScanError(f"cannot tell which way is up on this head close-up ({what})", path,
                        "Pass --up (the file axis from the neck to the crown, e.g. --up y)")
    guess = snap_up(direction, 1.0, "neck-to-crown axis")
    notes.append(guess.describe())
    return Frame.make(units, guess.axis or guess.up)


def _drop_nonfinite(raw: RawGeometry, path: Path, notes: list[str]) -> RawGeometry:
    ok = np.all(np.isfinite(raw.verts), axis=1)
    n_bad = int((~ok).sum())
    if n_bad == 0:
        return raw
    share = n_bad / len(ok)
    if share >= MAX_NONFINITE_SHARE:
        raise ScanError(f"{n_bad} of {len(ok)} points ({100 * share:.1f}%) have NaN/inf coordinates",
                        path, "Re-export the scan; up to 1% of bad points are dropped automatically")
    notes.append(f"dropped {n_bad} points with NaN/inf coordinates ({100 * share:.2f}%)")
    return _subset(raw, ok)


def _units_and_body(raw: RawGeometry, weights: np.ndarray, path: Path, forced: str | None,
                    notes: list[str], kind: str = "body") -> tuple[str, np.ndarray, PrincipalAxes, Floor | None]:
    """The file unit, a (N,) mask of the largest body's points (without a floor it stands on),
    that body's principal axes, and the floor.

    Tries the units in which the whole file could hold a person (finest first) and takes the
    first whose largest body has a person's longest extent; body grouping and the floor test
    depend on the unit because their distances are in metres. A close-up ``kind`` is held to a
    head's or hand's size instead and has no floor.
    """
    verts = raw.verts
    whole = float(np.linalg.norm(verts.max(0) - verts.min(0)))
    lo, hi = extent_range_m(kind)
    what = "a person is" if kind == "body" else f"a {kind.replace('_', ' ')} close-up is"
    # a close-up mistaken for a body (or the reverse) is the likely cause of a size mismatch
    kind_hint = ("; for a head or hand close-up give its kind (id suffix -head, -hand_left, -hand_right, or kinds.csv)"
                 if kind == "body" else f"; or fix its kind ({kind}) in kinds.csv")
    candidates = [forced] if forced else [u for u in ("mm", "cm", "m") if whole * METRES_PER_UNIT[u] >= lo]
    if not candidates:
        raise ScanError(f"the whole scan is {whole:.3g} units across: {_as_sizes(whole)}; "
                        f"{what} {lo}-{hi} m", path, "Check this is a body scan (or its unit)" + kind_hint)
    cell_m = cell_size_m(len(verts))
    largest_extent = None
    for unit in candidates:
        area = weights if raw.faces is not None else None
        bodies = split_bodies(verts, raw.faces, cell_m / METRES_PER_UNIT[unit], area)
        if bodies is None:
            continue
        keep = bodies.labels == 0
        floor = find_floor(verts[keep] * METRES_PER_UNIT[unit]) if kind == "body" else None
        if floor is not None:
            keep = _without_floor(raw, keep, floor.floor, cell_m / METRES_PER_UNIT[unit])
        axes = principal_axes(verts[keep], weights[keep])
        extent = float(axes.extent[0])
        largest_extent = extent if largest_extent is None else largest_extent
        if not (forced or unit in plausible_units(extent, kind)):
            continue
        if forced and unit not in plausible_units(extent, kind):
            raise ScanError(f"the body is {extent * METRES_PER_UNIT[unit]:.3g} m long read as {unit}, "
                            f"{what} {lo}-{hi} m", path, "Check --units, or leave it out to detect" + kind_hint)
        if bodies.largest_share < MIN_BODY_SHARE:
            raise ScanError(f"no single body: {bodies.n_bodies} separate parts, the largest holds "
                            f"{100 * bodies.largest_share:.0f}% of {bodies.measure}", path,
                            "Crop the scan to one person")
        if not forced:
            notes.append(f"units detected: {unit} (body {extent:.4g} {unit} long)")
        notes.extend(n for n in (bodies.describe(), floor and floor.describe()) if n)
        return unit, keep, axes, floor
    size = largest_extent if largest_extent is not None else whole
    whose = what.replace(" is", "'s")  # "a person's", "a head close-up's"
    raise ScanError(f"the body is {size:.3g} units long: {_as_sizes(size)}, none is {whose} "
                    f"{lo}-{hi} m", path, "Check this is a body scan, or force --units" + kind_hint)


def _without_floor(raw: RawGeometry, keep: np.ndarray, floor: np.ndarray, cell: float) -> np.ndarray:
    """(N,) mask: the kept points minus the floor (``floor``: mask over the kept points), then
    only the largest group left (floor edges outside the plane tolerance are fragments)."""
    rest = np.nonzero(keep)[0][~floor]
    mask = np.zeros(len(keep), dtype=bool)
    mask[rest] = True
    sub = _subset(raw, mask)
    bodies = split_bodies(sub.verts, sub.faces, cell)
    out = np.zeros(len(keep), dtype=bool)
    out[rest[bodies.labels == 0]] = True
    return out


def _as_sizes(extent: float) -> str:
    return ", ".join(f"{extent * mpu:.3g} m if in {u}" for u, mpu in METRES_PER_UNIT.items())


def _subset(raw: RawGeometry, keep: np.ndarray) -> RawGeometry:
    """The points where ``keep`` (N,) bool, faces whose three corners are kept, reindexed."""
    if keep.all():
        return raw
    faces = None
    if raw.faces is not None:
        new_index = np.cumsum(keep) - 1
        faces = new_index[raw.faces[np.all(keep[raw.faces], axis=1)]]
    take = lambda a: None if a is None else a[keep]  # noqa: E731
    return RawGeometry(verts=raw.verts[keep], faces=faces, normals=take(raw.normals),
                       colors=take(raw.colors), uv=take(raw.uv), texture=raw.texture,
                       notes=raw.notes)
