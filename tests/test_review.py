"""Review flags on known geometry: the truth itself as a "registration" (clean), the same body
with its arm landmarks' left and right swapped, and an arm rotated through the torso."""

import numpy as np
import pytest
import torch

from ghum_pipe.register.landmark_pairs import load_template_landmark_set
from ghum_pipe.review import Review, Rule, apply_rules, review_registration
from ghum_pipe.synth.corruptions import swap_names
from ghum_pipe.template import load_template
from ghum_pipe.template.anatomy import MIRROR


@pytest.fixture(scope="module")
def t():
    return load_template()


@pytest.fixture(scope="module")
def tl(t):
    return load_template_landmark_set(t)


def posed(t, pose):
    with torch.no_grad():
        v, _ = t.pose(torch.as_tensor(t.phenotype_bank_betas[3][None], dtype=torch.float64),
                      torch.as_tensor(pose[None], dtype=torch.float64))
    return v[0].numpy()


def surface_samples(t, verts, n=40000, seed=0):
    """Area-uniform points on the surface mesh: a noise-free scan of ``verts``."""
    f = t.faces[t.masks["surface"][t.faces].all(1)]
    tri = verts[f]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(f), n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return tri[pick, 0] + u[:, None] * (tri[pick, 1] - tri[pick, 0]) + v[:, None] * (tri[pick, 2] - tri[pick, 0])


def review_of(t, tl, verts, names=None, pose=None):
    lm = {"names": list(names or tl.names), "points": tl.points(verts)}
    return review_registration(verts, surface_samples(t, verts), lm, t, tl, pose=pose,
                               offsets_m=np.zeros_like(verts))


def test_clean_registration_is_ok(t, tl):
    pose = np.zeros((t.n_joints, 3))
    r = review_of(t, tl, posed(t, pose), pose=pose)
    assert isinstance(r, Review)
    assert r.verdict == "ok", r.reasons
    s = r.signals
    # the registration is the scanned surface itself: samples lie on its faces (0 mm), and a
    # vertex is at most about the sample spacing from a sample (40k samples on ~1.9 m^2: ~7 mm)
    assert s["s2r_p95_mm"] < 0.01 and s["r2s_p95_mm"] < 10.0
    assert s["lm_pose_rms_mm"] < 1e-6 and s["part_mismatch_pct"] == 0.0
    assert s["arm_in_torso_mm"] == 0.0 and s["leg_in_leg_mm"] == 0.0
    assert s["joint_limit_excess_deg"] == 0.0
    assert s["bone_asymmetry_pct"] < 1.0  # the template's own left/right difference (measured 0.07 %)


def test_a_hand_held_on_the_scan_by_its_offsets_is_flagged(t, tl):
    """A fist fitted with open fingers reaches the scan through the free-form offsets alone: the
    left hand's surface 12 mm off the skinned model (the suite's fists: 11-14 mm, good hands
    <= 9 mm) makes ``look``, naming that hand; the other hand and the body are untouched."""
    from ghum_pipe.review.signals import body_groups, residual_parts

    parts = residual_parts(body_groups(t))
    assert (parts == "hand.L").sum() == (parts == "hand.R").sum() > 1000  # both hands, each its own part
    pose = np.zeros((t.n_joints, 3))
    verts = posed(t, pose)
    offsets = np.zeros_like(verts)
    hand = parts == "hand.L"
    offsets[hand] = 0.012 * body_groups(t).rest_normals[hand]
    lm = {"names": list(tl.names), "points": tl.points(verts)}
    r = review_registration(verts, surface_samples(t, verts), lm, t, tl, pose=pose, offsets_m=offsets)
    assert abs(r.signals["offset_hand_p95_mm"] - 12.0) < 1e-6
    assert r.verdict == "look" and any("(hand.L) 12.0 mm" in x for x in r.reasons), r.reasons
    assert review_of(t, tl, verts, pose=pose).signals["offset_hand_p95_mm"] == 0.0


def test_left_right_swap_is_flagged(t, tl):
    """The registration is right, the arm and hand landmarks say left for right: every one of
    them lies on the other arm (part_mismatch), and they are arm spans away (landmark RMS)."""
    pose = np.zeros((t.n_joints, 3))
    verts = posed(t, pose)
    r = review_of(t, tl, verts, names=swap_names(tl.names, "arms"), pose=pose)
    assert r.verdict == "failed", r.signals
    assert r.signals["part_mismatch_pct"] > 50.0  # arm landmarks are about half of the sided ones
    assert any("wrong limb" in x for x in r.reasons)
    assert r.signals["s2r_p95_mm"] < 0.01  # the surface itself is right: residuals cannot see it


def test_arm_through_the_torso_is_flagged(t, tl):
    """The left arm swung 70 deg past hanging down (A-pose arms are ~45 deg out), so the forearm
    and hand pass through the torso; the scan is the same body (residuals cannot see it)."""
    idx = list(t.joint_names).index("upperarm01.L")
    pose = np.zeros((t.n_joints, 3))
    pose[idx] = np.array([0.0, 1.0, 0.0]) * np.radians(115)
    verts = posed(t, pose)
    r = review_of(t, tl, verts, pose=pose)
    assert r.verdict == "failed", r.signals
    assert r.signals["arm_in_torso_mm"] > 30.0
    # and the mirror image on the right arm
    pose = np.zeros((t.n_joints, 3))
    pose[list(t.joint_names).index("upperarm01.R")] = MIRROR * np.array([0.0, 1.0, 0.0]) * np.radians(115)
    r = review_of(t, tl, posed(t, pose), pose=pose)
    assert r.signals["arm_in_torso_mm"] > 30.0


def test_rules_levels_and_reasons():
    rules = (Rule("a_mm", 5.0, 20.0, "a", "mm"), Rule("cov_pct", 80.0, 50.0, "coverage", "%", below=True))
    assert apply_rules({"a_mm": 1.0, "cov_pct": 90.0}, {}, rules).verdict == "ok"
    r = apply_rules({"a_mm": 6.0, "cov_pct": 90.0}, {}, rules)
    assert r.verdict == "look" and r.reasons == ("a 6.0 mm > 5",)
    r = apply_rules({"a_mm": 6.0, "cov_pct": 40.0}, {}, rules)
    assert r.verdict == "failed" and r.reasons[0].startswith("coverage 40.0 % < 50")
    assert apply_rules({"a_mm": float("nan")}, {}, rules).verdict == "ok"  # a missing signal is skipped


def test_review_table_orders_worst_first(tmp_path):
    """review_table reads metrics.json['review'] and the manifest's failed registrations."""
    import json

    from ghum_pipe.pipelines.manifest import Manifest
    from ghum_pipe.review import review_table

    for sid, verdict, reasons in (("a", "ok", []), ("b", "look", ["x 7.0 mm > 6"]), ("c", "ok", [])):
        d = tmp_path / "scans" / sid
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"review": {"verdict": verdict, "reasons": reasons, "signals": {"x": 1.0}}}))
    m = Manifest.load(tmp_path)
    m.scans["d"] = {"path": "d.ply", "stages": {}}
    m.set_stage("d", "register", {"status": "failed", "error": "d.ply: partial body"})
    m.scans["c"] = {"path": "c.ply", "stages": {}}
    m.set_stage("c", "register", {"status": "failed", "error": "c.ply: diverged"})  # newer than its metrics.json
    m.save()
    rows = review_table(tmp_path)
    assert [(r["scan_id"], r["verdict"]) for r in rows] == [("c", "failed"), ("d", "failed"), ("b", "look"), ("a", "ok")]
    assert rows[1]["reasons"] == ["register failed: d.ply: partial body"]
    assert rows[3]["signals"] == {"x": 1.0}


def test_heat_map_faces_the_body_and_shows_a_planted_bump(t, tmp_path):
    """The residual map's "front" is the body's own: a body turned 70 degrees about +Z is still
    seen face on, and a 6 mm bump planted on the chest shows in the front view, not the back."""
    from PIL import Image

    from ghum_pipe.register.backend import MeshDistance
    from ghum_pipe.review.heatmap import body_front, render_residual_views, vertex_residuals_mm, write_residual_map

    a = np.deg2rad(70.0)
    R = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    verts = posed(t, np.zeros((t.n_joints, 3))) @ R.T
    front = body_front(verts, t.coco_regressor, t.coco_names)
    assert np.degrees(np.arccos(front @ (R @ [0.0, -1.0, 0.0]))) < 3.0  # the template faces -Y

    scan = surface_samples(t, verts)
    centre = (t.coco_regressor @ verts)[[t.coco_names.index(n) for n in ("left_shoulder", "right_shoulder")]].mean(0)
    rel = scan - centre
    side = np.cross([0.0, 0.0, 1.0], front)
    chest = (np.abs(rel @ side) < 0.08) & (rel[:, 2] > -0.2) & (rel[:, 2] < -0.05) & (rel @ front > 0.0)
    scan[chest] += 0.006 * front  # pushed out of the chest
    surface = t.masks["surface"]
    faces = t.faces[surface[t.faces].all(1)]
    dist = MeshDistance(verts, faces).closest(scan)["dist"]
    values = vertex_residuals_mm(verts, scan, dist, surface)
    assert np.nanmax(values) > 5.0 and np.nanmedian(values) < 0.5
    img_front, img_back = render_residual_views(verts, faces, values, 6.0, front)
    # the colour map's top is yellow (high red and green, less blue); the grey background is not
    hot = lambda img: int(((img[..., 0] > 180) & (img[..., 1] > 140) & (img[..., 0].astype(int) - img[..., 2] > 60)).sum())  # noqa: E731
    assert hot(img_front) > 50 and hot(img_back) == 0  # measured 850 and 0

    out = write_residual_map(tmp_path / "residuals.png", verts, faces, scan, dist, front, vertices=surface)
    assert Image.open(tmp_path / "residuals.png").size[0] > 300
    assert out["vmax_mm"] >= 1.0 and out["vmax_mm"] == np.ceil(np.percentile(dist * 1e3, 95) * 2) / 2 or out["vmax_mm"] == 1.0
