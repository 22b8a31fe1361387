"""Mesh writers for stage outputs (registrations, debug meshes); atomic, format by suffix.

Callers convert to the scan's frame first: ``write_mesh(p, scan.frame.to_file(verts_m), faces)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import atomic_path

MESH_WRITE_SUFFIXES = (".ply", ".obj")


def write_mesh(path: str | Path, verts: np.ndarray, faces: np.ndarray | None,
               colors: np.ndarray | None = None) -> Path:
    """Write a mesh (or a point cloud when ``faces`` is None) to ``path`` atomically.

    Args:
        path: ``.ply`` (binary float32, what every viewer reads: < 1 micron error on a body in
            any unit) or ``.obj`` (text); the folder is created.
        verts: (V, 3) float coordinates, written as given (no unit or axis change).
        faces: (F, 3) int vertex indices, or None.
        colors: (V, 3) or (V, 4) uint8 per-vertex colours, optional.
    Returns:
        The path written. Raises ValueError for another suffix or inconsistent shapes.
    """
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_WRITE_SUFFIXES:
        raise ValueError(f"{path}: cannot write {suffix or 'no suffix'!r}; use .ply or .obj")
    verts = np.asarray(verts, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"{path}: verts must be (V, 3), got {verts.shape}")
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape[0] != len(verts):
            raise ValueError(f"{path}: {len(colors)} colours for {len(verts)} vertices")
        colors = colors.astype(np.uint8)
    if faces is None:
        geom = trimesh.PointCloud(verts, colors=colors)
    else:
        faces = np.asarray(faces, dtype=np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
            raise ValueError(f"{path}: face indices outside 0..{len(verts) - 1}")
        geom = trimesh.Trimesh(verts, faces, vertex_colors=colors, process=False)
    if suffix == ".ply":
        from trimesh.exchange.ply import export_ply

        data = export_ply(geom, encoding="binary", vertex_normal=False, include_attributes=False)
    else:
        data = geom.export(file_type="obj", include_normals=False, include_texture=False,
                           digits=9).encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
