"""Scan ingest: every format, normals/colours/texture kept, bad input -> ScanError, writers."""

import json
import os

import numpy as np
import pytest
import trimesh

from ghum_pipe.io import Frame, ScanError, load_scan, write_mesh

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def body(template):
    """The template (metres, +Z up), its vertex normals, colours, and 20k surface samples."""
    mesh = template.to_trimesh()
    colors = RNG.integers(0, 256, (len(mesh.vertices), 3), dtype=np.uint8)
    points, face_idx = trimesh.sample.sample_surface_even(mesh, 20000, seed=3)
    return {
        "verts": template.rest_verts, "faces": template.faces,
        "normals": np.asarray(mesh.vertex_normals), "colors": colors,
        "points": np.asarray(points), "point_normals": np.asarray(mesh.face_normals[face_idx]),
    }


def files_in(folder):
    return sorted(os.listdir(folder))


# --- every format ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl", ".off"])
def test_mesh_formats(tmp_path, body, suffix):
    frame = Frame.make("mm", "+y")
    mesh = trimesh.Trimesh(frame.to_file(body["verts"]), body["faces"], process=False)
    path = tmp_path / f"subject{suffix}"
    mesh.export(path)
    before = files_in(tmp_path)
    scan = load_scan(path)
    assert files_in(tmp_path) == before  # nothing written beside the input
    assert scan.id == "subject" and not scan.is_point_cloud and scan.frame == frame
    assert scan.colors is None and scan.texture is None
    assert len(scan.faces) == len(body["faces"])
    # OBJ writes 8 significant digits; STL is float32 soup merged back into shared vertices.
    assert len(scan.verts) == len(body["verts"]) or suffix == ".stl"
    tree_d, _ = trimesh.proximity.ProximityQuery(trimesh.Trimesh(body["verts"], body["faces"])).vertex(scan.verts)
    assert tree_d.max() < 1e-5


def test_ply_mesh_keeps_normals_and_colours(tmp_path, body):
    mesh = trimesh.Trimesh(body["verts"] * 100, body["faces"], vertex_normals=body["normals"],
                           vertex_colors=body["colors"], process=False)
    path = tmp_path / "coloured.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh, vertex_normal=True))
    scan = load_scan(path)
    assert scan.frame.units == "cm" and scan.frame.up == "+z"
    assert np.array_equal(scan.colors, body["colors"])
    assert np.abs(scan.normals - body["normals"]).max() < 1e-6


def test_ply_point_cloud_with_normals(tmp_path, body):
    frame = Frame.make("m", "-x")
    pts, nrm = frame.to_file(body["points"]), frame.to_file_normals(body["point_normals"])
    colors = RNG.integers(0, 256, (len(pts), 3), dtype=np.uint8)
    header = ("ply\nformat ascii 1.0\nelement vertex %d\nproperty float x\nproperty float y\n"
              "property float z\nproperty float nx\nproperty float ny\nproperty float nz\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n" % len(pts))
    rows = "\n".join(" ".join(f"{x:.6f}" for x in p) + " " + " ".join(f"{x:.6f}" for x in n)
                     + " " + " ".join(str(c) for c in col) for p, n, col in zip(pts, nrm, colors))
    path = tmp_path / "cloud.ply"
    path.write_text(header + rows + "\n")
    scan = load_scan(path)
    assert scan.is_point_cloud and scan.frame == frame
    assert np.abs(scan.verts - body["points"]).max() < 1e-5
    assert np.abs(scan.normals - body["point_normals"]).max() < 1e-5
    assert np.array_equal(scan.colors, colors)


def _write_pcd(path, pts, normals=None, colors=None, binary=False):
    fields, cols = ["x", "y", "z"], [pts.astype(np.float32)]
    if normals is not None:
        fields += ["normal_x", "normal_y", "normal_z"]
        cols.append(normals.astype(np.float32))
    if colors is not None:  # PCL packs 0x00RRGGBB into a float's bits
        packed = (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8) | colors[:, 2]
        fields.append("rgb")
        cols.append(packed.view(np.float32)[:, None])
    table = np.concatenate(cols, 1).astype(np.float32)
    n = len(fields)
    header = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * n)}\n"
              f"TYPE {' '.join(['F'] * n)}\nCOUNT {' '.join(['1'] * n)}\nWIDTH {len(pts)}\nHEIGHT 1\n"
              f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA {'binary' if binary else 'ascii'}\n")
    with open(path, "wb") as f:
        f.write(header.encode())
        if binary:
            f.write(table.tobytes())
        else:  # ascii rgb is written as the packed float's repr, as PCL does
            f.write("\n".join(" ".join(repr(float(x)) for x in row) for row in table).encode())


@pytest.mark.parametrize("binary", [False, True])
def test_pcd(tmp_path, body, binary):
    frame = Frame.make("mm", "+y")
    colors = RNG.integers(0, 256, (len(body["points"]), 3), dtype=np.uint8)
    path = tmp_path / "cloud.pcd"
    _write_pcd(path, frame.to_file(body["points"]), frame.to_file_normals(body["point_normals"]), colors, binary)
    scan = load_scan(path)
    assert scan.frame == frame and scan.is_point_cloud
    assert np.abs(scan.verts - body["points"]).max() < 1e-6
    assert np.abs(scan.normals - body["point_normals"]).max() < 1e-5
    assert np.array_equal(scan.colors, colors)
    # Without extras.
    _write_pcd(path, frame.to_file(body["points"]), binary=binary)
    scan = load_scan(path)
    assert scan.normals is None and scan.colors is None and len(scan.verts) == len(body["points"])


def test_compressed_pcd_via_open3d(tmp_path, body):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(body["points"] * 1000))
    pc.normals = o3d.utility.Vector3dVector(body["point_normals"])
    path = tmp_path / "packed.pcd"
    assert o3d.io.write_point_cloud(str(path), pc, write_ascii=False, compressed=True)
    assert b"DATA binary_compressed" in path.read_bytes()[:400]
    scan = load_scan(path)
    assert scan.frame.units == "mm" and scan.colors is None
    assert np.abs(scan.verts - body["points"]).max() < 1e-6
    assert np.abs(scan.normals - body["point_normals"]).max() < 1e-5
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=r"packed\.pcd: open3d read no points"):
        load_scan(path)


@pytest.mark.parametrize("extras", ["none", "normals", "colors", "both"])
def test_xyz(tmp_path, body, extras):
    pts = body["points"] * 1000
    cols = [pts]
    colors = RNG.integers(0, 256, (len(pts), 3)).astype(np.uint8)
    if extras in ("normals", "both"):
        cols.append(body["point_normals"])
    if extras in ("colors", "both"):
        cols.append(colors)
    path = tmp_path / "cloud.xyz"
    np.savetxt(path, np.concatenate(cols, 1), fmt="%.6f")
    scan = load_scan(path)
    assert scan.frame.units == "mm" and scan.frame.up == "+z"
    # read exactly, then rounded onto the float32-in-metres grid every scan input is put on
    # (io.frame.canonical_metres): half a float32 ulp of the coordinate at most
    assert (np.abs(scan.verts - body["points"]) <= np.abs(body["points"]) * 2.0**-24 + 1e-9).all()  # + %.6f mm text
    assert (scan.normals is not None) == (extras in ("normals", "both"))
    assert (scan.colors is not None) == (extras in ("colors", "both"))
    if scan.colors is not None:
        assert np.array_equal(scan.colors, colors)


def test_glb_scene_concatenated_with_transforms(tmp_path, body):
    """Upper and lower body as two nodes, each stored at the origin with its own transform."""
    verts, faces = body["verts"], body["faces"]
    upper = np.all(verts[faces][:, :, 2] > 0.0, axis=1)
    scene = trimesh.Scene()
    moves = {}
    for name, mask in (("upper", upper), ("lower", ~upper)):
        part = trimesh.Trimesh(verts, faces[mask], process=False)
        part.remove_unreferenced_vertices()
        T = trimesh.transformations.translation_matrix(RNG.normal(size=3))
        moves[name] = part.vertices.copy()
        part.apply_transform(np.linalg.inv(T))
        scene.add_geometry(part, node_name=name, geom_name=name, transform=T)
    path = tmp_path / "scene.glb"
    scene.export(path)
    scan = load_scan(path)
    assert any("2 scene meshes" in n for n in scan.notes)
    expected = np.concatenate([moves["upper"], moves["lower"]])
    assert len(scan.verts) == len(expected) and len(scan.faces) == len(faces)
    assert np.abs(np.sort(scan.verts, 0) - np.sort(expected, 0)).max() < 1e-5


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_texture_sampled_into_vertex_colours(tmp_path, body, suffix):
    """u = height, v = left-right: a red-green ramp texture gives known colours per vertex."""
    from PIL import Image

    verts = body["verts"]
    uv = (verts[:, [2, 0]] - verts[:, [2, 0]].min(0)) / np.ptp(verts[:, [2, 0]], 0)
    ramp = np.zeros((64, 64, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 64)[None, :]   # red grows with u
    ramp[..., 1] = np.linspace(255, 0, 64)[:, None]   # green falls with image row (v up)
    mesh = trimesh.Trimesh(verts, body["faces"], process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(ramp)))
    path = tmp_path / f"textured{suffix}"
    mesh.export(path)
    scan = load_scan(path)
    assert scan.texture is not None and scan.uv is not None and scan.colors is not None
    # trimesh samples the nearest texel: within one texel step (255/63 = 4) of the ramp.
    # Vertices are matched by position (a textured OBJ/GLB may reorder or split them at seams).
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(verts).query(scan.verts)
    assert np.abs(scan.colors[:, 0].astype(float) - 255 * uv[nearest, 0]).max() <= 6
    assert np.abs(scan.colors[:, 1].astype(float) - 255 * uv[nearest, 1]).max() <= 6


# --- bodies ------------------------------------------------------------------------------------

def test_two_bodies_keep_larger(tmp_path, body):
    big, small = body["verts"], body["verts"] * 0.9 + [1.5, 0, 0]
    faces = np.concatenate([body["faces"], body["faces"] + len(big)])
    path = write_mesh(tmp_path / "pair.ply", np.concatenate([small, big]) * 1000, faces[::-1])
    scan = load_scan(path)
    assert scan.frame.units == "mm"
    assert np.abs(scan.verts - big).max() < 1e-6  # the larger body, unchanged, in order
    # Same vertex count: "largest" is the surface area (1 : 0.81).
    assert any("2 bodies found; kept the largest (55% of the surface)" in n for n in scan.notes), scan.notes
    assert len(scan.faces) == len(body["faces"])


def test_point_cloud_with_debris_and_second_body(tmp_path, body):
    pts = body["points"]
    second = pts[::3] * 0.8 + [0, 2.0, 0]
    debris = RNG.normal(size=(30, 3)) * 0.01 + [0, -1.5, 0.5]
    path = tmp_path / "crowd.xyz"
    np.savetxt(path, np.concatenate([second, pts, debris]), fmt="%.6f")
    scan = load_scan(path)
    assert len(scan.verts) == len(pts)
    assert any(n.startswith("2 bodies found; kept the largest (75% of points); dropped 1 small fragment")
               for n in scan.notes), scan.notes


def test_three_equal_bodies_is_an_error(tmp_path, body):
    v = body["verts"]
    verts = np.concatenate([v, v + [1.5, 0, 0], v + [3.0, 0, 0]])
    faces = np.concatenate([body["faces"] + i * len(v) for i in range(3)])
    path = write_mesh(tmp_path / "trio.ply", verts, faces)
    with pytest.raises(ScanError, match=r"trio\.ply: no single body: 3 separate parts, "
                                        r"the largest holds 33% of the surface"):
        load_scan(path)


# --- bad input ---------------------------------------------------------------------------------

def test_missing_unknown_empty_garbage(tmp_path):
    with pytest.raises(ScanError, match=r"nope\.ply: file not found"):
        load_scan(tmp_path / "nope.ply")
    (tmp_path / "scan.foo").write_text("1 2 3")
    with pytest.raises(ScanError, match=r"scan\.foo: unknown scan format '\.foo'"):
        load_scan(tmp_path / "scan.foo")
    (tmp_path / "empty.obj").write_bytes(b"")
    with pytest.raises(ScanError, match=r"empty\.obj: the file is empty"):
        load_scan(tmp_path / "empty.obj")
    (tmp_path / "garbage.ply").write_text("hello world\n")
    with pytest.raises(ScanError, match=r"garbage\.ply: cannot read the file"):
        load_scan(tmp_path / "garbage.ply")
    (tmp_path / "comments.obj").write_text("# nothing here\n")
    with pytest.raises(ScanError, match=r"comments\.obj: the file holds no vertices"):
        load_scan(tmp_path / "comments.obj")


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_truncated_ply(tmp_path, body, encoding):
    data = trimesh.exchange.ply.export_ply(trimesh.Trimesh(body["verts"], body["faces"], process=False),
                                           encoding=encoding)
    path = tmp_path / "half.ply"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=r"half\.ply: .*truncated"):
        load_scan(path)


def test_truncated_pcd_and_xyz(tmp_path, body):
    _write_pcd(tmp_path / "cut.pcd", body["points"], binary=True)
    data = (tmp_path / "cut.pcd").read_bytes()
    (tmp_path / "cut.pcd").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=r"cut\.pcd: PCD says 20000 points but the data ends early"):
        load_scan(tmp_path / "cut.pcd")
    np.savetxt(tmp_path / "cut.xyz", body["points"], fmt="%.6f")
    text = (tmp_path / "cut.xyz").read_text()
    (tmp_path / "cut.xyz").write_text(text[: len(text) // 2 + 7])
    with pytest.raises(ScanError, match=r"cut\.xyz: XYZ row \d+ has [12] numbers"):
        load_scan(tmp_path / "cut.xyz")


def test_non_finite_points(tmp_path, body):
    pts = body["points"].copy()
    pts[:50, 1] = np.nan  # 0.25 %: dropped with a note
    pts[50:60, 2] = np.inf
    np.savetxt(tmp_path / "few_nan.xyz", pts, fmt="%.6f")
    scan = load_scan(tmp_path / "few_nan.xyz")
    assert len(scan.verts) == len(pts) - 60
    assert "dropped 60 points with NaN/inf coordinates (0.30%)" in scan.notes
    pts[:400, 0] = np.nan  # 2 %
    np.savetxt(tmp_path / "many_nan.xyz", pts, fmt="%.6f")
    with pytest.raises(ScanError, match=r"many_nan\.xyz: 400 of 20000 points \(2\.0%\) have NaN/inf"):
        load_scan(tmp_path / "many_nan.xyz")


def test_non_finite_mesh_vertices_drop_their_faces(tmp_path, body):
    verts = body["verts"].copy()
    verts[5] = np.nan
    path = tmp_path / "nan.obj"
    path.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in verts)
                    + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in body["faces"]))
    scan = load_scan(path)
    n_faces_at_5 = int(np.any(body["faces"] == 5, axis=1).sum())
    assert len(scan.verts) == len(verts) - 1 and len(scan.faces) == len(body["faces"]) - n_faces_at_5
    assert scan.faces.max() == len(scan.verts) - 1


def test_too_few_points(tmp_path, body):
    np.savetxt(tmp_path / "sparse.xyz", body["points"][:500], fmt="%.5f")
    with pytest.raises(ScanError, match=r"sparse\.xyz: 500 points, a body scan needs at least 2000"):
        load_scan(tmp_path / "sparse.xyz")
    assert len(load_scan(tmp_path / "sparse.xyz", min_points=400).verts) == 500


@pytest.mark.parametrize("scale,name", [(0.03 / 1.8, "tiny"), (30.0 / 1.8, "huge")])
def test_size_that_cannot_be_a_person(tmp_path, body, scale, name):
    """A 3 cm body (3 cm, 0.3 mm or 0.03 mm) and a 30 m one (30 m, 30 cm, 3 cm): no unit fits."""
    np.savetxt(tmp_path / f"{name}.xyz", body["points"] * scale, fmt="%.8f")
    with pytest.raises(ScanError, match=rf"{name}\.xyz: .*none is a person's 0\.5-3\.0 m|"
                                        rf"{name}\.xyz: the whole scan"):
        load_scan(tmp_path / f"{name}.xyz")


def test_cube_is_not_a_person(tmp_path):
    box = trimesh.creation.box(extents=(0.03, 0.03, 0.03))
    np.savetxt(tmp_path / "cube.xyz", trimesh.sample.sample_surface_even(box, 5000, seed=1)[0], fmt="%.7f")
    with pytest.raises(ScanError, match=r"cube\.xyz: the whole scan is 0\.052 units across"):
        load_scan(tmp_path / "cube.xyz")


@pytest.mark.parametrize("shape", ["sphere", "flat_box", "plane"])
def test_person_sized_non_person(tmp_path, shape):
    mesh = {"sphere": trimesh.creation.icosphere(4, radius=0.8),
            "flat_box": trimesh.creation.box(extents=(1.7, 1.2, 0.15)),
            "plane": trimesh.creation.box(extents=(1.7, 0.4, 0.0005))}[shape]
    pts = trimesh.sample.sample_surface_even(mesh, 6000, seed=2)[0]
    np.savetxt(tmp_path / f"{shape}.xyz", pts, fmt="%.6f")
    with pytest.raises(ScanError, match=rf"{shape}\.xyz: does not look like a person: it is "
                                        rf"({'flat' if shape == 'plane' else 'not elongated'})"):
        load_scan(tmp_path / f"{shape}.xyz")


# --- frames and writers -------------------------------------------------------------------------

def test_frame_round_trip_matrix_and_json():
    p = RNG.normal(size=(100, 3)) * 500
    for units in ("m", "cm", "mm"):
        for up in ("+x", "-x", "+y", "-y", "+z", "-z"):
            f = Frame.make(units, up)
            assert np.allclose(f.to_file(f.to_internal(p)), p, rtol=0, atol=1e-9)
            p_m = f.to_internal(p)
            assert np.allclose((f.matrix() @ np.c_[p_m, np.ones(len(p))].T).T[:, :3], p, atol=1e-9)
            n = p / np.linalg.norm(p, axis=1, keepdims=True)
            assert np.allclose(np.linalg.norm(f.to_internal_normals(n), axis=1), 1.0)
            assert np.allclose(f.to_file_normals(f.to_internal_normals(n)), n)
            assert Frame.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    f = Frame.make("cm", np.array([0.2, 0.1, 0.97]))
    assert Frame.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert f.up == "0.2009,0.1005,0.9744"


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_write_mesh_back_in_scan_frame(tmp_path, body, suffix):
    truth = Frame.make("mm", "-y")
    src = write_mesh(tmp_path / "in" / "scan.ply", truth.to_file(body["verts"]), body["faces"])
    scan = load_scan(src)
    out = write_mesh(tmp_path / "work" / f"reg{suffix}", scan.frame.to_file(scan.verts), scan.faces,
                     colors=body["colors"])
    assert files_in(tmp_path / "work") == [f"reg{suffix}"]  # no temp file left behind
    back = trimesh.load(out, process=False)
    assert np.abs(np.asarray(back.vertices) - truth.to_file(body["verts"])).max() < 1e-3  # mm
    assert np.array_equal(np.asarray(back.faces), body["faces"])
    assert np.array_equal(np.asarray(back.visual.vertex_colors)[:, :3], body["colors"])
    mesh = scan.to_trimesh()
    assert np.array_equal(mesh.faces, scan.faces) and np.array_equal(mesh.vertices, scan.verts)
    cloud = write_mesh(tmp_path / "work" / "points.ply", body["points"], None)
    assert np.allclose(load_scan(cloud).verts, body["points"], atol=1e-6)
    (tmp_path / "work" / "points.ply").unlink()
    with pytest.raises(ValueError, match=r"reg\.stl.*use \.ply or \.obj"):
        write_mesh(tmp_path / "work" / "reg.stl", body["verts"], body["faces"])
    with pytest.raises(ValueError, match="face indices outside"):
        write_mesh(tmp_path / "work" / "bad.ply", body["verts"][:10], body["faces"])
    assert files_in(tmp_path / "work") == [f"reg{suffix}"]


@pytest.mark.parametrize("kind,size,n_floor", [("mesh", 3.5, 0), ("cloud", 2.4, 15000), ("cloud", 0.9, 1000)])
def test_floor_removed_and_gives_up(tmp_path, body, kind, size, n_floor):
    """A floor square under the feet (raw photogrammetry keeps it): removed, and its normal is
    the up axis. 3.5 m: with it the scan is too wide for a person in any unit; 2.4 m: with it
    the scan would not look like a person; 0.9 m with 1000 points: 5% of the scan."""
    floor_z = body["verts"][:, 2].min()
    plane = trimesh.creation.box(extents=(size, size, 0.002)).subdivide_to_size(0.05)
    plane.apply_translation([0, 0, floor_z - 0.001 - plane.vertices[:, 2].max()])
    frame = Frame.make("mm", "+y")
    if kind == "mesh":
        verts = np.concatenate([body["verts"], plane.vertices])
        faces = np.concatenate([body["faces"], plane.faces + len(body["verts"])])
        path = write_mesh(tmp_path / "floored.ply", frame.to_file(verts), faces)
        expected = body["verts"]
    else:
        floor_pts = trimesh.sample.sample_surface_even(plane, n_floor, seed=4)[0]
        path = tmp_path / "floored.xyz"
        np.savetxt(path, frame.to_file(np.concatenate([body["points"], floor_pts])), fmt="%.4f")
        expected = body["points"]
    scan = load_scan(path)
    assert scan.frame == frame
    assert any(n.startswith("removed a floor plane") for n in scan.notes), scan.notes
    assert "up axis detected: +y (floor normal 0 deg from it)" in scan.notes
    # No floor point is left; the body loses only soles within the 1.5 cm floor tolerance.
    assert scan.verts[:, 2].min() > floor_z
    near_floor = (expected[:, 2] - floor_z < 0.016).sum()
    assert len(expected) - 1.1 * near_floor <= len(scan.verts) <= len(expected)


def test_scattered_outliers_dropped(tmp_path, body):
    """3% of the points scattered through a 4 m room (scanner noise): dropped as fragments."""
    frame = Frame.make("m", "-y")
    noise = RNG.uniform(-2.0, 2.0, size=(600, 3))
    path = tmp_path / "noisy.xyz"
    np.savetxt(path, frame.to_file(np.concatenate([body["points"], noise])), fmt="%.5f")
    scan = load_scan(path)
    assert scan.frame == frame
    assert len(body["points"]) <= len(scan.verts) <= len(body["points"]) + 10  # a few touch the body
    assert any("small fragments" in n for n in scan.notes)
