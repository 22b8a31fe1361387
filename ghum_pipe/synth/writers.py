"""Write a :class:`SynthScan` to OUT/scans/<id>.<ext> and its truth to OUT/truth/<id>.npz/.json.

Meshes: PLY (binary, vertex colours), OBJ (vertex colours as ``v x y z r g b``, or with a
texture: ``vt`` UVs, an MTL and a PNG beside it), STL (no colour), GLB (vertex colours or a
texture). Point clouds: PLY, PCD (binary, colours and normals) or XYZ
(plain ``x y z``), written by open3d. All files are written atomically and are the same bytes
for the same scan. The truth never goes beside the scans, so the pipeline cannot read it. Scans
with the planted truth (``SynthConfig.planted``) also write OUT/truth/subjects/<subject>.npz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import atomic_path, write_json, write_npz

MESH_FORMATS = ("ply", "obj", "stl", "glb")
POINT_FORMATS = ("ply", "pcd", "xyz")


def write_scan(out_dir: Path, scan, fmt: str) -> Path:
    """Write the scan file and its truth; returns the scan file's path."""
    out_dir = Path(out_dir)
    path = out_dir / "scans" / f"{scan.scan_id}.{fmt}"
    if scan.faces is None:
        _write_points(path, scan, fmt)
    else:
        _write_mesh(path, scan, fmt)
    truth = dict(scan.truth)
    write_npz(out_dir / "truth" / f"{scan.scan_id}.npz", **truth)
    write_json(out_dir / "truth" / f"{scan.scan_id}.json", {**scan.info, "file": f"scans/{path.name}"})
    if scan.info.get("planted"):  # the subject's rest shape and true (shifted) joints, as synth --registrations
        write_npz(out_dir / "truth" / "subjects" / f"{scan.info['subject']}.npz", rest_verts=truth["rest_verts"],
                  rest_joints=truth["rest_joints"])
    return path


def _write_mesh(path: Path, scan, fmt: str) -> None:
    import trimesh

    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {MESH_FORMATS}, got {fmt!r}")
    mesh = trimesh.Trimesh(scan.verts, scan.faces, process=False)
    textured = getattr(scan, "texture", None) is not None and fmt in ("obj", "glb")
    if textured and fmt == "obj":
        _write_textured_obj(path, scan)
        return
    if textured:
        from PIL import Image

        mesh.visual = trimesh.visual.TextureVisuals(uv=scan.uv, image=Image.fromarray(scan.texture))
    elif scan.colors is not None and fmt != "stl":
        rgba = np.concatenate([scan.colors, np.full((len(scan.colors), 1), 255, np.uint8)], 1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    with atomic_path(path) as tmp:
        if fmt == "obj":
            data = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=True,
                                                   include_texture=False, header=None)
            tmp.write_text(data)
        elif fmt == "ply":
            tmp.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", include_attributes=False))
        else:
            mesh.export(tmp, file_type=fmt)


def _write_textured_obj(path: Path, scan) -> None:
    """OBJ with ``vt`` UVs (one per vertex), ``<id>.mtl`` and ``<id>.png`` beside it; the MTL and
    PNG are written first, so an OBJ on disk always finds its texture."""
    import io

    from PIL import Image

    stem = path.stem
    png = io.BytesIO()
    Image.fromarray(scan.texture).save(png, format="PNG")
    with atomic_path(path.with_suffix(".png")) as tmp:
        tmp.write_bytes(png.getvalue())
    with atomic_path(path.with_suffix(".mtl")) as tmp:
        tmp.write_text(f"newmtl skin\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nmap_Kd {stem}.png\n")
    f = np.asarray(scan.faces) + 1
    lines = [f"mtllib {stem}.mtl", "usemtl skin"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(scan.verts, dtype=np.float64)]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(scan.uv, dtype=np.float64)]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in f]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _write_points(path: Path, scan, fmt: str) -> None:
    import open3d as o3d

    if fmt not in POINT_FORMATS:
        raise ValueError(f"point-cloud format must be one of {POINT_FORMATS}, got {fmt!r}")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(scan.verts, np.float64)))
    if scan.colors is not None:
        pcd.colors = o3d.utility.Vector3dVector(scan.colors / 255.0)
    if scan.normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(scan.normals)
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False, compressed=False):
            raise OSError(f"{path}: open3d could not write the point cloud")
