"""Texture baking on known geometry: a scan that is the template's own surface, 1 mm out along
its normals, coloured by a known texture in the template's atlas, must bake back to that texture;
a hole in the scan is filled and marked; padding leaves no seams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ghum_pipe.export.rig import split_uv_seams
from ghum_pipe.ops.normals import vertex_normals
from ghum_pipe.export.texture import (
    FILLED, OUTSIDE, SEEN, BakeConfig, bake_texture, nearest_vertex_texture, sample_texture, seam_colour_error,
    uv_atlas, uv_seams)
from ghum_pipe.synth.texture import known_texture

SIZE = 512  # texels: ~4 mm each on the body, enough for the checks and ~10x faster than 2048


def psnr(a, b, mask):
    mse = np.mean((a[mask].astype(np.float64) - b[mask].astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def known(template):
    """A subject-like texture: skin tone by height with the synthetic fine detail on top."""
    z = template.rest_verts[:, 2]
    colours = np.stack([200 + 30 * z / z.max(), 150 + 20 * z / z.max(), 120 + 0 * z], 1)
    return known_texture(template, colours, SIZE, seed=1)


def offset_scan(template, known, offset_m=0.001, drop=None, subdivide=0):
    """The template surface as a textured scan: split at UV seams (per-vertex UVs), moved
    ``offset_m`` out along its normals; faces of vertices in ``drop`` removed (a hole);
    ``subdivide`` times split into 4 (a scan denser than the template: ~2.5 mm after 2)."""
    import trimesh

    t = template
    keep = t.masks["surface"][t.faces].all(1)
    vmap, faces, uvs = split_uv_seams(t.faces[keep], t.face_uvs[keep])
    n = vertex_normals(t.rest_verts, t.faces)
    verts = t.rest_verts[vmap] + offset_m * n[vmap]
    if drop is not None:
        faces = faces[~drop[vmap][faces].any(1)]
    for _ in range(subdivide):
        verts, faces, attr = trimesh.remesh.subdivide(verts, faces, vertex_attributes={"uv": uvs})
        uvs = attr["uv"]
    return verts, faces, uvs, known


def test_bake_recovers_the_known_texture(template, known):
    t = template
    sv, sf, suv, tex = offset_scan(t, known)
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, sv, sf, scan_uv=suv, scan_texture=tex,
                       config=BakeConfig(size=SIZE))
    seen = res.mask == SEEN
    tm = uv_atlas(t.face_uvs, SIZE)
    surface_texels = np.zeros((SIZE, SIZE), bool)
    surface_texels[tm.rows, tm.cols] = t.masks["surface"][t.faces].all(1)[tm.face]
    # every texel of a surface face is seen (the scan covers the whole surface, 1 mm away)
    assert (seen & surface_texels).sum() / surface_texels.sum() > 0.995
    db = psnr(res.texture, tex, seen)
    print(f"bake PSNR {db:.1f} dB on {seen.sum()} texels")
    # the texture read back through the scan's own UVs, 1 mm off: measured 60.4 dB (exact up to
    # bilinear resampling); 45 dB still means < 1.5 levels RMS
    assert db > 45.0
    # confidence: a 1 mm hit with agreeing normals weighs exp(-(1/4)^2) ~ 0.94
    assert np.median(res.confidence[seen]) > 0.9


def test_bake_beats_nearest_vertex_on_fine_detail(template, known):
    t = template
    sv, sf, suv, tex = offset_scan(t, known, subdivide=2)
    colours = np.clip(np.rint(sample_texture(tex, suv)), 0, 255).astype(np.uint8)
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, sv, sf, scan_colors=colours, config=BakeConfig(size=SIZE))
    nv = nearest_vertex_texture(t.rest_verts, t.faces, t.face_uvs, sv, colours, SIZE)
    seen = res.mask == SEEN
    ours, peer = psnr(res.texture, tex, seen), psnr(nv, tex, seen)
    print(f"vertex colours: bake {ours:.1f} dB, nearest vertex {peer:.1f} dB")
    # a scan 4x denser than the template (2 subdivisions; midpoints sit on the flat faces, so
    # 1 mm off the true surface at most): the bake samples it per texel, the peer only at the
    # template's ~1 cm vertices and loses the 1.5-5 cm detail. Bound: the 5 dB.
    assert ours > peer + 5.0


def test_hole_is_filled_from_neighbours_and_marked(template, known):
    t = template
    hole = t.masks["hand_left"]
    sv, sf, suv, tex = offset_scan(t, known, drop=hole)
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, sv, sf, scan_uv=suv, scan_texture=tex,
                       config=BakeConfig(size=SIZE))
    tm = uv_atlas(t.face_uvs, SIZE)
    in_hole = hole[t.faces].all(1)[tm.face]
    far = ~hole[t.faces].any(1)[tm.face] & t.masks["surface"][t.faces].all(1)[tm.face]
    mask = res.mask[tm.rows, tm.cols]
    # inside the hole: unseen (rays hit nothing within 1 cm except at its rim)
    assert (mask[in_hole] == FILLED).mean() > 0.9, (mask[in_hole] == FILLED).mean()
    assert (mask[far] == SEEN).mean() > 0.995
    assert res.confidence[tm.rows[in_hole], tm.cols[in_hole]].mean() < 0.1
    # filled texels carry a colour from the surface near them (the wrist's skin), not black
    filled = res.texture[tm.rows[in_hole], tm.cols[in_hole]].astype(float)
    assert filled.mean(0).min() > 100
    # outside the islands: padded, never black
    assert (res.mask == OUTSIDE).any() and res.texture[res.mask == OUTSIDE].mean() > 100


def test_padding_and_seams(template, known):
    """The known texture is continuous across UV seams (its colours come from 3D positions),
    and a bake from a seam-free scan keeps its seams as tight."""
    t = template
    seams = uv_seams(t.faces, t.face_uvs)
    assert len(seams[0]) > 100
    sv, sf, suv, tex = offset_scan(t, known)
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, sv, sf, scan_uv=suv, scan_texture=tex,
                       config=BakeConfig(size=SIZE))
    known_seam, baked_seam = seam_colour_error(tex, seams), seam_colour_error(res.texture, seams)
    print(f"seam |RGB| difference: known {known_seam:.2f}, baked {baked_seam:.2f}")
    # both sides of a seam sample the same 3D point: only bilinear blur differs (measured ~2-3)
    assert known_seam < 6 and baked_seam < known_seam + 2
    # a texel just outside an island copies its nearest island texel
    from scipy import ndimage

    outside = res.mask == OUTSIDE
    ring = outside & ndimage.binary_dilation(~outside)
    _, (ri, ci) = ndimage.distance_transform_edt(outside, return_indices=True)
    assert np.array_equal(res.texture[ring], res.texture[ri[ring], ci[ring]])


def test_head_closeup_merges_into_the_body_texture(template, known):
    """A body scan as coarse as the template (vertex colours: the 1.5-5 cm detail is lost) and a
    head close-up 16x denser carrying the texture: merged, the head's texels come out far closer
    to the known texture than from the body alone, and the rest of the body is untouched."""
    from ghum_pipe.export.texture import merge_bakes

    t = template
    cfg = BakeConfig(size=SIZE)
    sv, sf, suv, tex = offset_scan(t, known)
    body = bake_texture(t.rest_verts, t.faces, t.face_uvs, sv, sf, config=cfg,
                        scan_colors=np.clip(np.rint(sample_texture(tex, suv)), 0, 255).astype(np.uint8))
    head = t.masks["head"]
    cv, cf, cuv, _ = offset_scan(t, known, drop=~head, subdivide=2)
    closeup = bake_texture(t.rest_verts, t.faces, t.face_uvs, cv, cf, scan_uv=cuv, scan_texture=tex, config=cfg)
    tm = uv_atlas(t.face_uvs, SIZE)
    merged = merge_bakes(body, [closeup], tm)
    in_head = np.zeros((SIZE, SIZE), bool)
    in_head[tm.rows, tm.cols] = head[t.faces].all(1)[tm.face] & t.masks["surface"][t.faces].all(1)[tm.face]
    in_head &= closeup.mask == SEEN
    alone, both = psnr(body.texture, tex, in_head), psnr(merged.texture, tex, in_head)
    print(f"head texels: body alone {alone:.1f} dB, merged with the close-up {both:.1f} dB")
    # bound: the margin of a real bake over a per-vertex transfer (5 dB)
    assert both > alone + 5.0
    untouched = (closeup.mask != SEEN) & (body.mask != 0)
    assert np.array_equal(merged.texture[untouched], body.texture[untouched])
    assert (merged.mask[closeup.mask == SEEN] == SEEN).all()


@pytest.mark.slow
def test_cli_bake_without_colours_fails_in_one_line(tmp_path, template):
    """A scan without colours asked to be baked: one line naming the scan, exit code 1."""
    from test_export import make_registration

    from ghum_pipe.io.frame import Frame
    from ghum_pipe.io.write import write_mesh

    work = tmp_path / "W"
    d = work / "scans" / "plain"
    frame = Frame.make("m", "+z")
    reg = make_registration(d, template, seed=4, frame=frame, pose_std=0.03)  # near the A-pose: a person
    scan_path = tmp_path / "scans" / "plain.ply"
    surf = template.masks["surface"][template.faces].all(1)
    write_mesh(scan_path, frame.to_file(reg["verts"]), template.faces[surf])  # no colours
    (d / "scan.json").write_text(json.dumps({"id": "plain", "path": str(scan_path), "units": "m", "up": "+z",
                                             "kind": "body"}))
    import os

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "export", "--work", str(work), "--texture", "bake"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if "plain.ply" in ln]
    assert len(lines) == 1 and "no vertex colours and no texture" in lines[0], r.stderr
    assert not (d / "avatar.glb").exists() and not (d / "texture.png").exists()


@pytest.mark.slow
def test_cli_bakes_a_textured_obj_scan(tmp_path, template, known):
    """A textured OBJ scan (its own UVs and PNG) -> `export --texture bake` -> texture.png equal
    to the known texture on the texels it saw, and a textured avatar.glb."""
    import os

    import pygltflib as gl
    import trimesh
    from PIL import Image

    from ghum_pipe.io.frame import Frame
    from test_export import make_registration

    t = template
    work = tmp_path / "W"
    d = work / "scans" / "tex"
    frame = Frame.make("m", "+z")
    reg = make_registration(d, t, seed=6, frame=frame, pose_std=0.03)  # near the A-pose: a person
    keep = t.masks["surface"][t.faces].all(1)
    vmap, faces, uvs = split_uv_seams(t.faces[keep], t.face_uvs[keep])
    verts = reg["verts"] + 0.001 * vertex_normals(reg["verts"], t.faces)  # the scan: 1 mm out
    mesh = trimesh.Trimesh(frame.to_file(verts[vmap]), faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uvs, image=Image.fromarray(known)))
    scan_path = tmp_path / "scans" / "tex.obj"
    scan_path.parent.mkdir()
    mesh.export(scan_path)
    (d / "scan.json").write_text(json.dumps({"id": "tex", "path": str(scan_path), "units": "m", "up": "+z",
                                             "kind": "body"}))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "export", "--work", str(work), "--texture", "bake",
                        "--texture-size", str(SIZE)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    baked = np.asarray(Image.open(d / "texture.png"))
    mask = np.asarray(Image.open(d / "texture_mask.png"))
    assert json.loads((d / "texture.json").read_text())["source"] == "texture"
    seen = mask == SEEN
    db = psnr(baked, known, seen)
    print(f"textured OBJ through load_scan: {db:.1f} dB on {seen.mean() * 100:.1f} % of the image")
    # measured 49.4 dB (60 from the arrays directly: the OBJ/PNG round trip costs some); 42 dB
    # is still < 2 levels RMS
    assert db > 42.0
    doc = gl.GLTF2().load(str(d / "avatar.glb"))
    assert len(doc.images) == 1 and doc.materials[0].pbrMetallicRoughness.baseColorTexture.index == 0


def test_point_cloud_scan_bakes_from_nearest_points(template, known):
    """A coloured point cloud (no faces): each texel takes its nearest point within 1 cm."""
    import trimesh

    t = template
    sv, sf, suv, tex = offset_scan(t, known, offset_m=0.0005)
    mesh = trimesh.Trimesh(sv, sf, process=False)
    pts, fidx = trimesh.sample.sample_surface_even(mesh, 400_000, seed=0)  # ~2 mm apart
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[fidx], pts)
    uv = np.einsum("nk,nkc->nc", bary, suv[sf[fidx]])
    colours = np.clip(np.rint(sample_texture(tex, uv)), 0, 255).astype(np.uint8)
    normals = mesh.face_normals[fidx]
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, pts, None, scan_colors=colours, scan_normals=normals,
                       config=BakeConfig(size=SIZE))
    seen = res.mask == SEEN
    tm = uv_atlas(t.face_uvs, SIZE)
    surface = t.masks["surface"][t.faces].all(1)[tm.face]
    db = psnr(res.texture, tex, seen)
    print(f"point cloud: {db:.1f} dB, {(res.mask[tm.rows, tm.cols][surface] == SEEN).mean() * 100:.1f} % seen")
    assert (res.mask[tm.rows, tm.cols][surface] == SEEN).mean() > 0.99
    # nearest of points ~2 mm apart on 1.5-5 cm detail: measured 47.4 dB; bound 40 dB (< 2.6 levels RMS)
    assert db > 40.0


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_synth_uv_textured_scan_bakes_back_its_texture(tmp_path, template, known, fmt):
    """synth --textured --format obj|glb: a mesh with UVs into the known texture. A scan that is
    the template's surface in millimetres (vertices shared across the atlas's seams, as a
    scanner's mesh is) is written, read back by load_scan and baked from the truth: the known
    texture comes back, and only the faces across a seam got vertices of their own."""
    from ghum_pipe.io import load_scan
    from ghum_pipe.synth.generate import SynthScan
    from ghum_pipe.synth.texture import uv_textured_scan
    from ghum_pipe.synth.writers import write_scan

    t = template
    keep = t.masks["surface"][t.faces].all(1)
    scan = SynthScan("uv", t.rest_verts * 1000.0, t.faces[keep], None, None,
                     {"verts": t.rest_verts * 1000.0}, {"units": "mm"})
    textured = uv_textured_scan(t, scan, known)
    n_seam = textured.info["seam_faces"]
    print(f"{n_seam} of {keep.sum()} faces across a seam")
    # every face beside one of the atlas's 1,177 seam edges, at most (a real scan, 5x denser: 1.4 %)
    assert 100 < n_seam < 0.2 * keep.sum() and len(textured.verts) == len(t.rest_verts) + 3 * n_seam
    path = write_scan(tmp_path, textured, fmt)
    loaded = load_scan(path, units="mm", up="+z")
    assert loaded.texture is not None and loaded.uv is not None
    res = bake_texture(t.rest_verts, t.faces, t.face_uvs, loaded.verts, loaded.faces, scan_uv=loaded.uv,
                       scan_texture=loaded.texture, config=BakeConfig(size=SIZE))
    seen = res.mask == SEEN
    db = psnr(res.texture, known, seen)
    print(f"{fmt}: {db:.1f} dB on {seen.mean() * 100:.1f} % of the image")
    # bound: 40 dB (< 2.6 levels RMS), as for the other round trips through a file
    assert db > 40.0 and seen.mean() > 0.5


def test_synth_textured_scan_takes_the_known_texture(template, known):
    """synth --textured: a scan vertex gets the known texture's colour at its closest point on
    the true surface; here the scan's vertices are points inside known faces."""
    from ghum_pipe.synth.generate import SynthScan
    from ghum_pipe.synth.texture import textured_scan

    t = template
    rng = np.random.default_rng(0)
    surf = np.flatnonzero(t.masks["surface"][t.faces].all(1))
    f = rng.choice(surf, 2000, replace=False)
    b = rng.dirichlet([2, 2, 2], 2000)
    pts = np.einsum("nk,nkc->nc", b, t.rest_verts[t.faces[f]])
    uv = np.einsum("nk,nkc->nc", b, t.face_uvs[f].astype(np.float64))
    scan = SynthScan("s", pts * 1000.0, None, None, None, {"verts": t.rest_verts * 1000.0})  # mm: any units
    got = textured_scan(t, scan, known).colors.astype(float)
    ref = sample_texture(known, uv)
    err = np.abs(got - ref)
    # the closest point is the point itself (float32 ray scene: ~0.1 micron off), same UV
    assert np.median(err) <= 1.0 and np.percentile(err, 99) <= 3.0, (np.median(err), np.percentile(err, 99))
