"""Textured synthetic scans: a known texture in the template's UV atlas, and scans coloured by it.

``known_texture`` paints a subject: its per-vertex region colours (skin, lips, hair, shorts:
``synth.skin``) interpolated over the atlas, modulated by +-18 % of fine detail (plane waves of
1.5-5 cm wavelength on the rest-pose surface, so the detail is continuous across UV seams and
finer than the template's ~1 cm vertex spacing: a per-vertex colour transfer cannot hold it).
``textured_scan`` recolours a synthetic scan's vertices from that texture at each vertex's
closest point on the true surface, so a bake from the scan can be scored against the texture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ghum_pipe.export.texture import sample_texture, uv_atlas

DETAIL_AMPLITUDE = 0.18  # relative colour modulation
DETAIL_WAVELENGTHS_M = (0.015, 0.05)
N_WAVES = 8


def known_texture(t, vertex_colors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """(size, size, 3) uint8 texture in t's atlas: vertex colours (V, 3) 0-255 times fine detail.

    Texels outside the UV islands copy the nearest island texel (no dark seams)."""
    rng = np.random.default_rng([seed, 18])
    tm = uv_atlas(t.face_uvs, size)
    base = tm.surface(np.asarray(vertex_colors, dtype=np.float64), t.faces)
    pos = tm.surface(t.rest_verts, t.faces)
    dirs = rng.normal(size=(N_WAVES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lam = rng.uniform(*DETAIL_WAVELENGTHS_M, N_WAVES)
    phase = rng.uniform(0, 2 * np.pi, N_WAVES)
    mix = rng.uniform(0.5, 1.0, (N_WAVES, 3))  # each wave tints the channels differently
    waves = np.cos(2 * np.pi * (pos @ dirs.T) / lam + phase)  # (N, K)
    detail = waves @ mix / mix.sum(0)  # (N, 3) in [-1, 1]
    colour = np.clip(base * (1.0 + DETAIL_AMPLITUDE * detail), 0, 255)
    return np.clip(np.rint(tm.image(colour)), 0, 255).astype(np.uint8)


def closest_uv(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray) -> np.ndarray:
    """(N, 2) the UV of each point's closest point on the mesh (verts (V, 3), faces (F, 3))."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    ans = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    fid = ans["primitive_ids"].numpy().astype(np.int64)
    buv = ans["primitive_uvs"].numpy().astype(np.float64)
    w = np.column_stack([1 - buv[:, 0] - buv[:, 1], buv[:, 0], buv[:, 1]])
    return np.einsum("nk,nkc->nc", w, face_uvs[fid].astype(np.float64))


def textured_scan(t, scan, texture: np.ndarray):
    """The SynthScan with its vertex colours taken from ``texture`` (t's atlas) at each vertex's
    closest point on the true surface (``scan.truth['verts']``, same frame; interior parts left
    out so a lip vertex never takes the mouth cavity's colour)."""
    surface_faces = t.masks["surface"][t.faces].all(1)
    uv = closest_uv(np.asarray(scan.verts), np.asarray(scan.truth["verts"]), t.faces[surface_faces],
                    t.face_uvs[surface_faces])
    colors = np.clip(np.rint(sample_texture(texture, uv)), 0, 255).astype(np.uint8)
    return dataclasses.replace(scan, colors=colors, info={**scan.info, "textured": True})


def uv_textured_scan(t, scan, texture: np.ndarray, seam_uv: float = 0.05):
    """The SynthScan as a textured mesh: the known ``texture`` itself and per-vertex UVs, each
    vertex taking the UV of its closest point on the true surface. A face whose corners then
    span more than ``seam_uv`` in UV crosses a seam of the atlas: its corners are re-taken a
    tenth of the way towards the face's centre (so they land on the face's own side of the
    seam; if they still span it, all three take the centre's UV) on vertices of their own, as
    at the seams of any textured scan."""
    surface_faces = t.masks["surface"][t.faces].all(1)
    truth_f, truth_uv = t.faces[surface_faces], t.face_uvs[surface_faces]
    truth_v = np.asarray(scan.truth["verts"])
    verts = np.asarray(scan.verts, dtype=np.float64)
    faces = np.asarray(scan.faces, dtype=np.int64)
    uv = closest_uv(verts, truth_v, truth_f, truth_uv)
    corner = uv[faces]  # (F, 3, 2)
    cross = np.abs(corner - corner.mean(1, keepdims=True)).max((1, 2)) > seam_uv
    if cross.any():
        tri = verts[faces[cross]]
        centre = tri.mean(1, keepdims=True)
        pts = np.concatenate([(0.9 * tri + 0.1 * centre).reshape(-1, 3), centre[:, 0]])
        got = closest_uv(pts, truth_v, truth_f, truth_uv)
        n = int(cross.sum())
        c_uv, m_uv = got[: 3 * n].reshape(n, 3, 2), got[3 * n:]
        still = np.abs(c_uv - c_uv.mean(1, keepdims=True)).max((1, 2)) > seam_uv
        c_uv[still] = m_uv[still, None]
        new = len(verts) + np.arange(3 * n).reshape(n, 3)  # their own vertices
        verts = np.concatenate([verts, tri.reshape(-1, 3)])
        uv = np.concatenate([uv, c_uv.reshape(-1, 2)])
        faces = faces.copy()
        faces[cross] = new
    return dataclasses.replace(scan, verts=verts, faces=faces, colors=None, uv=uv, texture=texture,
                               info={**scan.info, "textured": "uv", "seam_faces": int(cross.sum())})


def write_known_texture(out: Path, scan_id: str, texture: np.ndarray) -> Path:
    """OUT/truth/<id>.texture.png, atomically."""
    from PIL import Image

    from ghum_pipe.io.atomic import atomic_path

    path = Path(out) / "truth" / f"{scan_id}.texture.png"
    with atomic_path(path) as tmp:
        Image.fromarray(texture).save(tmp)
    return path


def known_subject_texture(t, seed: int, index: int, config, size: int = 2048) -> np.ndarray:
    """(size, size, 3) uint8: the known texture of subject ``index`` (the same for all its scans)."""
    from ghum_pipe.synth.generate import make_subject

    subject = make_subject(t, seed, index, config)
    return known_texture(t, subject.colors, size, seed * 100_003 + index)
