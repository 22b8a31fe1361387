"""render -> MediaPipe -> triangulate on a posed template scan, within the stage's targets, and the
landmarks.json contract (names, confidence, units, up axis). Real files, real MediaPipe.

The scan: the template in a natural pose (arms lowered, one elbow and knee bent, head turned),
vertices jittered by 1 mm, written as a PLY in metres +Z up, the same in millimetres, and the
same with +Y up. The truth is the template landmark definition applied to the posed vertices
(see ghum_pipe.landmarks.evaluate: like with like, which allows for joint depth).
"""

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from ghum_pipe.errors import LandmarkError
from ghum_pipe.io.frame import Frame
from ghum_pipe.landmarks.evaluate import landmark_errors
from ghum_pipe.landmarks.stage import LandmarkConfig, run_landmarks
from ghum_pipe.landmarks.template_landmarks import load_template_landmarks

pytestmark = pytest.mark.slow


def _posed_verts(template) -> np.ndarray:
    pose = torch.zeros(1, template.n_joints, 3)
    for name, aa in (("upperarm01.L", (0.0, 0.5, 0.3)), ("upperarm01.R", (0.0, -0.3, -0.2)),
                     ("lowerarm01.L", (-0.9, 0.0, 0.0)), ("upperleg01.R", (-0.5, 0.0, 0.0)),
                     ("lowerleg01.R", (0.8, 0.0, 0.0)), ("head", (0.0, 0.0, 0.35))):
        if name in template.joint_names:
            pose[0, template.joint_index(name)] = torch.tensor(aa)
    verts, _ = template.pose(pose=pose)
    v = verts[0].double().numpy()
    return v + np.random.default_rng(0).normal(0, 0.001, v.shape)


@pytest.fixture(scope="module")
def scans(template, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_scans")
    verts = _posed_verts(template)
    surface_faces = template.faces[template.masks["surface"][template.faces].all(1)]
    paths = {}
    # Same geometry inside the package frame for all three files: y-up file = R^T p.
    R_y = Frame.make("m", "+y").rotation  # file axes -> internal
    for key, v in (("m", verts), ("mm", verts * 1000.0), ("yup", verts @ R_y)):
        paths[key] = out / f"posed_{key}.ply"
        trimesh.Trimesh(v, surface_faces, process=False).export(paths[key])
    return paths, verts


@pytest.fixture(scope="module")
def results(scans, tmp_path_factory):
    paths, _ = scans
    work = tmp_path_factory.mktemp("lm_work")
    out = {}
    for key, path in paths.items():
        units, up = {"m": ("m", "z"), "mm": ("mm", "z"), "yup": ("m", "y")}[key]
        metrics = run_landmarks(path, work / key, LandmarkConfig(units=units, up=up))
        doc = json.loads((work / key / "landmarks.json").read_text())
        out[key] = (metrics, doc, work / key)
    return out


def test_posed_scan_within_targets(template, scans, results, measured):
    _, verts = scans
    metrics, doc, scan_dir = results["m"]
    tl = load_template_landmarks(template)
    e = landmark_errors(doc, verts, "m", tl)
    assert e.swaps == 0
    measured("body mean mm", e.body_mean, "<=", 25.0)
    measured("body within 50 mm", e.body_within_50, ">=", 0.95)
    measured("face mean mm", e.face_mean, "<=", 6.0)
    measured("hands mean mm", e.hands_mean, "<=", 12.0)
    assert metrics["person_views"] >= 10 and metrics["n_face"] > 400 and metrics["n_hands"] >= 36
    assert (scan_dir / "views" / "contact_sheet.png").stat().st_size > 10_000


def test_landmarks_json_contract(results):
    _, doc, _ = results["m"]
    names = doc["names"]
    assert names[:3] == ["nose", "left_eye_inner", "left_eye"]
    assert len(set(names)) == len(names)
    assert all(n.startswith(("face_", "left_hand_", "right_hand_")) or n.islower() for n in names)
    assert any(n.startswith("face_") for n in names) and any(n.startswith("left_hand_") for n in names)
    pts = np.asarray(doc["points"])
    conf = np.asarray(doc["confidence"])
    assert pts.shape == (len(names), 3) and np.isfinite(pts).all()  # no nulls: missing ones left out
    assert ((conf >= 0) & (conf <= 1)).all()
    assert doc["units"] == "m" and doc["up"] == "+z"
    assert set(doc["kind"]) == {"surface", "interior"}
    assert len(doc["views_used"]) == len(doc["reproj_error_px"]) == len(names)


def test_units_and_up_axis_follow_the_file(results):
    _, doc_m, _ = results["m"]
    _, doc_mm, _ = results["mm"]
    _, doc_y, _ = results["yup"]
    assert doc_mm["units"] == "mm" and doc_y["up"] == "+y"
    common = [n for n in doc_m["names"] if n in doc_mm["names"] and n in doc_y["names"]]
    assert len(common) > 0.95 * len(doc_m["names"])
    get = lambda doc: np.asarray([doc["points"][doc["names"].index(n)] for n in common])  # noqa: E731
    p_m, p_mm, p_y = get(doc_m), get(doc_mm), get(doc_y)
    # The same geometry reaches the renderer in all three cases, up to float32 rounding in the
    # PLY files, which moves a few pixels and so the detections by a fraction of a pixel: the
    # points agree to ~1 mm once taken back to metres / +Z up (a wrong unit would be off by x1000,
    # a wrong axis by ~1 m).
    d_mm = np.linalg.norm(p_mm / 1000.0 - p_m, axis=1)
    R_y = Frame.make("m", "+y").rotation
    d_y = np.linalg.norm(p_y @ R_y.T - p_m, axis=1)
    for d in (d_mm, d_y):
        assert np.median(d) < 1.5e-3 and np.quantile(d, 0.95) < 8e-3, (np.median(d), d.max())
    # And the file's own frame really is different: +Y up means large y values for the head.
    nose = common.index("nose")
    assert p_y[nose, 1] > 0.5 and abs(p_m[nose, 2] - p_y[nose, 1]) < 1e-3


def test_no_person_is_a_clear_error(tmp_path):
    # A person-sized column passes ingest's shape check but holds no person.
    column = trimesh.creation.capsule(height=1.45, radius=0.16, count=(48, 48))
    path = tmp_path / "column.ply"
    column.export(path)
    with pytest.raises(LandmarkError, match=r"column.ply: no person detected in \d+/12 views"):
        run_landmarks(path, tmp_path / "work", LandmarkConfig(units="m", up="z"))
    assert not (tmp_path / "work" / "landmarks.json").exists()
    # what the detector saw is kept: every view, each with the red frame of "no detection"
    sheet = np.asarray(Image.open(tmp_path / "work" / "views" / "contact_sheet.png"))
    from ghum_pipe.landmarks.contact_sheet import COLUMNS, LEGEND_PX, TILE_PX

    assert sheet.shape[0] == 2 * TILE_PX + LEGEND_PX  # 12 views in 2 rows of 6, and the legend
    tiles = [sheet[r * TILE_PX:(r + 1) * TILE_PX, c * TILE_PX:(c + 1) * TILE_PX] for r in range(2) for c in range(COLUMNS)]
    red = lambda tile: ((tile[..., 0] > 200) & (tile[..., 1] < 60) & (tile[..., 2] < 60)).sum()  # noqa: E731
    assert all(red(tile) > 300 for tile in tiles)
