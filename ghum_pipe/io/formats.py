"""Readers: one scan file -> :class:`RawGeometry` in the file's own units and axes.

Meshes (PLY, OBJ, STL, OFF, GLB/GLTF) and point clouds (PLY without faces, PCD, XYZ) go
through trimesh where it reads the format well; PCD (ascii/binary) and XYZ have small readers
here because trimesh has none and open3d reports failures only as printed warnings (open3d
is used for the LZF-compressed PCD variant only). Every failure becomes a one-line
:class:`~ghum_pipe.errors.ScanError` naming the file.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ghum_pipe.errors import ScanError

MESH_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb", ".gltf")
CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".pts", ".txt")
SUFFIXES = tuple(sorted(set(MESH_SUFFIXES + CLOUD_SUFFIXES)))


@dataclass
class RawGeometry:
    """What a file holds, untouched: file units and axes.

    verts (N, 3) float64; faces (F, 3) int64 or None; normals (N, 3) float64 or None;
    colors (N, 3) uint8 or None (texture colours sampled at the vertices when textured);
    uv (N, 2) float64 and texture (H, W, 3) uint8 when the file has a texture.
    """

    verts: np.ndarray
    faces: np.ndarray | None = None
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_point_cloud(self) -> bool:
        return self.faces is None


def read_geometry(path: Path) -> RawGeometry:
    """Read ``path`` by its suffix. Raises ScanError (missing, unknown suffix, unreadable)."""
    path = Path(path)
    if not path.exists():
        raise ScanError("file not found", path, "Check the path (scans are read, never moved)")
    if not path.is_file():
        raise ScanError("not a file", path, "Pass a scan file, or a folder to the batch commands")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ScanError(f"unknown scan format {suffix or '(no extension)'!r}", path,
                        "Use one of " + " ".join(SUFFIXES))
    if path.stat().st_size == 0:
        raise ScanError("the file is empty (0 bytes)", path, "Re-export the scan")
    try:
        if suffix == ".pcd":
            return _read_pcd(path)
        if suffix in (".xyz", ".pts", ".txt"):
            return _read_xyz(path)
        return _read_trimesh(path)
    except ScanError as e:
        if e.path is None:
            raise ScanError(e.message, path, e.hint or "Export the body as a mesh or point cloud") from None
        raise
    except Exception as e:  # trimesh/numpy raise many types on damaged files
        what = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ScanError(f"cannot read the file ({what}); it may be truncated or damaged", path,
                        "Re-export or re-copy the scan") from e


# --- trimesh formats ---------------------------------------------------------------------------

def _read_trimesh(path: Path) -> RawGeometry:
    import trimesh

    loaded = trimesh.load(str(path), process=False)
    if isinstance(loaded, trimesh.Scene):
        return _from_scene(loaded)
    raw = _from_trimesh_geometry(loaded, path.suffix.lower() == ".stl")
    if path.suffix.lower() == ".ply":
        _check_ply_counts(path, raw)
    return raw


def _check_ply_counts(path: Path, raw: RawGeometry) -> None:
    """trimesh reads a truncated ASCII PLY without complaint: compare with the header's counts."""
    with open(path, "rb") as f:
        head = f.read(4096).split(b"end_header")[0].decode("ascii", errors="replace")
    counts = dict((m[0], int(m[1])) for m in re.findall(r"element\s+(\w+)\s+(\d+)", head))
    n_verts, n_faces = counts.get("vertex", len(raw.verts)), counts.get("face", 0)
    got_faces = 0 if raw.faces is None else len(raw.faces)
    if len(raw.verts) != n_verts or got_faces < n_faces:  # polygons may become more triangles
        raise ScanError(f"the header promises {n_verts} vertices and {n_faces} faces, the file holds "
                        f"{len(raw.verts)} and {got_faces}; it is truncated or damaged", path,
                        "Re-copy or re-export the scan")


def _from_scene(scene) -> RawGeometry:
    """Concatenate every geometry instance of a (glTF) scene with its world transform applied."""
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name].copy()
        geom.apply_transform(transform)
        parts.append(_from_trimesh_geometry(geom, merge=False))
    if not parts:
        return RawGeometry(verts=np.zeros((0, 3)))
    meshes = [p for p in parts if p.faces is not None]
    parts = meshes or parts  # a scene with meshes and stray points: keep the meshes
    if len(parts) == 1:
        return parts[0]
    # Several meshes: their textures cannot share one uv space, so only the sampled colours stay.
    offsets = np.cumsum([0] + [len(p.verts) for p in parts])[:-1]
    out = RawGeometry(
        verts=np.concatenate([p.verts for p in parts]),
        faces=np.concatenate([p.faces + o for p, o in zip(parts, offsets)]) if meshes else None,
    )
    if all(p.normals is not None for p in parts):
        out.normals = np.concatenate([p.normals for p in parts])
    if any(p.colors is not None for p in parts):
        grey = lambda p: np.full((len(p.verts), 3), 200, np.uint8)  # noqa: E731
        out.colors = np.concatenate([p.colors if p.colors is not None else grey(p) for p in parts])
    if len(parts) > 1:
        out.notes.append(f"{len(parts)} scene meshes concatenated with their transforms")
    return out


def _from_trimesh_geometry(geom, merge: bool) -> RawGeometry:
    import trimesh

    if isinstance(geom, trimesh.PointCloud):
        raw = RawGeometry(verts=np.asarray(geom.vertices, dtype=np.float64))
        colors = getattr(geom, "colors", None)
        if colors is not None and len(colors) == len(raw.verts):
            raw.colors = np.asarray(colors)[:, :3].astype(np.uint8)
        raw.normals = _ply_normals(geom.metadata, len(raw.verts))
        return raw
    if not isinstance(geom, trimesh.Trimesh):
        raise ScanError(f"holds a {type(geom).__name__}, not a mesh or point cloud")
    if merge:  # STL is a triangle soup: three vertices per face until merged
        geom.merge_vertices()
    raw = RawGeometry(verts=np.asarray(geom.vertices, dtype=np.float64),
                      faces=np.asarray(geom.faces, dtype=np.int64))
    if len(raw.faces) == 0:
        raw.faces = None  # a PLY with an empty face element is a point cloud
    if "vertex_normals" in geom._cache:  # only when the file had them; never computed here
        raw.normals = np.asarray(geom.vertex_normals, dtype=np.float64)
    visual = geom.visual
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        image = _texture_image(visual.material)
        if image is not None:
            raw.uv = np.asarray(visual.uv, dtype=np.float64)
            raw.texture = image
            raw.colors = np.asarray(visual.to_color().vertex_colors)[:, :3].astype(np.uint8)
    elif visual.kind in ("vertex", "face"):  # trimesh averages face colours onto vertices
        raw.colors = np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    return raw


def _texture_image(material) -> np.ndarray | None:
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    if image is None:
        return None
    return np.asarray(image.convert("RGB"))


def _ply_normals(metadata: dict, n: int) -> np.ndarray | None:
    """trimesh keeps a PLY point cloud's extra vertex properties in metadata['_ply_raw']."""
    try:
        data = metadata["_ply_raw"]["vertex"]["data"]
        normals = np.stack([np.asarray(data[k], dtype=np.float64).ravel() for k in ("nx", "ny", "nz")], 1)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return normals if len(normals) == n else None


# --- PCD (Point Cloud Library) -----------------------------------------------------------------

_PCD_DTYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4",
               ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("U", 8): "u8", ("I", 8): "i8"}


def _read_pcd(path: Path) -> RawGeometry:
    """PCD v0.7, DATA ascii or binary (binary_compressed goes to open3d)."""
    blob = path.read_bytes()
    header, pos = {}, 0
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise ScanError("PCD header has no DATA line; the file is truncated or not a PCD", path,
                            "Re-export the point cloud")
        line = blob[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        header[key.upper()] = value.split()
        if key.upper() == "DATA":
            break
    try:
        fields = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        n = int(header["POINTS"][0])
        mode = header["DATA"][0].lower()
    except (KeyError, ValueError, IndexError) as e:
        raise ScanError(f"PCD header is missing or has a bad {e} entry", path, "Re-export the point cloud")
    names = [f if c == 1 else f"{f}_{i}" for f, c in zip(fields, counts) for i in range(c)]
    if mode == "ascii":
        rows = [r for r in blob[pos:].decode("ascii", errors="replace").splitlines() if r.strip()]
        if len(rows) < n:
            raise ScanError(f"PCD says {n} points but holds {len(rows)}; the file is truncated", path,
                            "Re-copy or re-export the point cloud")
        table = np.array([r.split() for r in rows[:n]], dtype=np.float64)
        cols = {k: table[:, i] for i, k in enumerate(names)}
    elif mode == "binary":
        dtype = np.dtype([(k, _PCD_DTYPES[(t, s)]) for f, s, t, c in zip(fields, sizes, types, counts)
                          for k in ([f] if c == 1 else [f"{f}_{i}" for i in range(c)])])
        if len(blob) - pos < n * dtype.itemsize:
            raise ScanError(f"PCD says {n} points but the data ends early; the file is truncated",
                            path, "Re-copy or re-export the point cloud")
        rec = np.frombuffer(blob, dtype=dtype, count=n, offset=pos)
        cols = {k: rec[k] for k in dtype.names}
    elif mode == "binary_compressed":
        return _read_pcd_open3d(path)
    else:
        raise ScanError(f"unknown PCD DATA mode {mode!r}", path, "Use ascii or binary PCD")
    if not all(k in cols for k in "xyz"):
        raise ScanError("PCD has no x y z fields", path, "Export the point positions")
    raw = RawGeometry(verts=np.stack([np.asarray(cols[k], np.float64) for k in "xyz"], 1))
    if all(k in cols for k in ("normal_x", "normal_y", "normal_z")):
        raw.normals = np.stack([np.asarray(cols[k], np.float64) for k in ("normal_x", "normal_y", "normal_z")], 1)
    packed = cols.get("rgb", cols.get("rgba"))
    if packed is not None:  # PCL packs 0x00RRGGBB into a float32's (or uint32's) bits
        bits = np.asarray(packed)
        bits = bits.astype(np.float32).view(np.uint32) if bits.dtype.kind == "f" else bits.astype(np.uint32)
        raw.colors = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], 1).astype(np.uint8)
    return raw


def _read_pcd_open3d(path: Path) -> RawGeometry:
    import open3d as o3d

    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):  # we raise instead
        pc = o3d.io.read_point_cloud(str(path), format="pcd")
    raw = RawGeometry(verts=np.asarray(pc.points, dtype=np.float64))
    if len(raw.verts) == 0:
        raise ScanError("open3d read no points from this compressed PCD; it may be damaged", path,
                        "Re-export it as ascii or binary PCD")
    if pc.has_normals():
        raw.normals = np.asarray(pc.normals, dtype=np.float64)
    if pc.has_colors():
        raw.colors = np.clip(np.asarray(pc.colors) * 255 + 0.5, 0, 255).astype(np.uint8)
    return raw


# --- XYZ text ----------------------------------------------------------------------------------

def _read_xyz(path: Path) -> RawGeometry:
    """Text rows ``x y z [nx ny nz] [r g b]`` (spaces, tabs or commas; '#' comments).

    Six columns are normals when rows 4-6 are unit vectors, colours otherwise (0-255, or 0-1
    floats scaled by 255). Nine or more: normals then colours (XYZ-normal-RGB, the common order).
    """
    table = _xyz_table(path)
    if table is None:
        return RawGeometry(verts=np.zeros((0, 3)))
    raw = RawGeometry(verts=table[:, :3])
    extra = table[:, 3:]
    if extra.shape[1] >= 3 and _unit_rows(extra[:, :3]):
        raw.normals, extra = extra[:, :3], extra[:, 3:]
    if extra.shape[1] >= 3:
        # 4 columns: "intensity r g b" (the .pts convention); otherwise colours come first.
        rgb = extra[:, 1:4] if extra.shape[1] == 4 else extra[:, :3]
        if np.all(rgb >= 0) and np.all(rgb <= 255):
            raw.colors = np.round(rgb * (255.0 if rgb.max() <= 1.0 else 1.0)).astype(np.uint8)
    return raw


def _xyz_table(path: Path) -> np.ndarray | None:
    """(N, C) float64 rows of an XYZ text file, None when it has no rows; ScanError if ragged.

    Fast path: one numpy parse of the whole text (~10x faster than per-row splitting on a
    million points); the per-row path runs only for comments or to name a bad row.
    """
    text = re.sub(r"[,;\t\r]", " ", path.read_text(errors="replace"))
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.split() and not line.lstrip().startswith("#")), None)
    if first is None:
        return None
    head = lines[first].split()
    if not _is_number(head[0]) or (len(head) == 1 and first + 1 < len(lines)):
        first += 1  # a header row of column names, or a .pts point count
    body = lines[first:]
    n_rows = sum(1 for line in body if line.strip())
    if n_rows == 0:
        return None
    if "#" not in text:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            flat = np.fromstring("\n".join(body), dtype=np.float64, sep=" ")
        width = len(next(line for line in body if line.strip()).split())
        if width >= 3 and flat.size == n_rows * width:  # else: ragged or non-numbers, see below
            return flat.reshape(n_rows, width)
    rows = [r for r in (line.split("#")[0].split() for line in body) if r]
    width = len(rows[0])
    if width < 3:
        raise ScanError(f"XYZ rows need at least 3 numbers, the first has {width}", path,
                        "Write one 'x y z' point per line")
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise ScanError(f"XYZ row {bad + 1} has {len(rows[bad])} numbers, the first has {width}; "
                        "the file may be truncated", path, "Re-export the point cloud")
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise ScanError(f"XYZ holds a non-number ({str(e)[-40:]})", path, "Write numbers only") from None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _unit_rows(a: np.ndarray) -> bool:
    norms = np.linalg.norm(a[np.all(np.isfinite(a), 1)], axis=1)
    return len(norms) > 0 and float(np.median(np.abs(norms - 1.0))) < 0.01
