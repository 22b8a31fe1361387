"""Synthetic scanner: the truth is exact, the scans look like scans, the frames are consistent.

Budget ~60-90 s on 2 cores: three body scans (A-pose in m, posed in mm/+Y up, and the CLI
re-run of the first), one hand close-up, one head close-up as a point cloud and one mannequin.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch
from pykdtree.kdtree import KDTree

from ghum_pipe.synth import frames
from ghum_pipe.synth.generate import SynthConfig, body_scan, closeup_scans, make_subject, pose_rest, pose_template
from ghum_pipe.synth.poses import PoseConfig, PoseSampler

SEED = 5


def _distance_to_mesh(verts, faces, points) -> np.ndarray:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(verts, np.float32)), o3d.core.Tensor(np.asarray(faces, np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(np.asarray(points, np.float32))).numpy()


@pytest.fixture(scope="module")
def apose(template):
    return body_scan(template, SEED, 0, SynthConfig())


@pytest.fixture(scope="module")
def posed(template):
    # index 1 with mixed units/up: millimetres, +Y up
    return body_scan(template, SEED, 1, SynthConfig(posed=True, expressions=True, units="mixed", up="mixed"))


def test_gt_vertices_lie_on_the_scan_surface(apose, posed):
    for scan in (apose, posed):
        scale = frames.METRES_PER_UNIT[str(scan.truth["units"])]
        obs = scan.truth["observed"]
        assert obs.sum() > 10000  # most of the 12,474 surface vertices are seen
        d_m = _distance_to_mesh(scan.verts, scan.faces, scan.truth["verts"][obs]) * scale
        assert d_m.mean() < 0.002, f"{scan.scan_id}: mean GT-to-scan {d_m.mean() * 1000:.2f} mm"
        assert np.median(d_m) < 0.0012
        # the scanner is not a copy of the template: another tessellation, noisy
        assert abs(len(scan.verts) - 13718) > 10000
        assert d_m.mean() > 0.0002


def test_scan_has_holes_where_a_booth_cannot_see(template, apose):
    feet = template.masks["feet"]
    z = template.rest_verts[:, 2]
    soles = feet & (z < z[feet].min() + 0.01)
    d, _ = KDTree(apose.verts).query(apose.truth["verts"][soles], k=1)
    assert (d > 0.01).mean() > 0.25, "soles should be mostly unscanned"
    # while the front of the thighs is fully covered
    assert not apose.truth["observed"][soles].all()


def test_frames_units_and_up_axis(template, posed, apose):
    assert str(posed.truth["units"]) == "mm" and str(posed.truth["up"]) == "y"
    assert str(apose.truth["units"]) == "m" and str(apose.truth["up"]) == "z"
    for scan in (apose, posed):
        tr = scan.truth
        F = frames.file_transform(str(tr["units"]), str(tr["up"]))
        np.testing.assert_allclose(frames.apply(F, tr["verts_m"]), tr["verts"], atol=1e-9)
        np.testing.assert_allclose(frames.apply(F, tr["joints_m"]), tr["joints"], atol=1e-9)
        # the truth is reproducible from its own parameters: transform @ pose_rest(rest shape, pose, expr)
        v, j = pose_rest(template, tr["rest_verts"], tr["rest_joints"], tr["pose"], tr["expression"])
        np.testing.assert_allclose(frames.apply(tr["transform"], v), tr["verts"], atol=1e-6)
        np.testing.assert_allclose(frames.apply(tr["transform"], j), tr["joints"], atol=1e-6)
    # mm and +Y up: the body is ~1.7e3 units tall along +Y, head above the feet
    ext = np.ptp(posed.verts, axis=0)
    assert np.argmax(ext) == 1 and 1000 < ext[1] < 2200
    head, feet = template.masks["head"], template.masks["feet"]
    assert posed.truth["verts"][head, 1].mean() > posed.truth["verts"][feet, 1].mean() + 1000
    # internal truth: metres, +Z up, moved by at most a metre (plus the body's own extent)
    vm = posed.truth["verts_m"]
    assert vm[head, 2].mean() > vm[feet, 2].mean() + 1.0
    assert np.linalg.norm(vm.mean(0)) < 1.5
    assert posed.truth["pose"].any() and posed.truth["expression"].any()


def test_same_seed_same_bytes_and_different_seed_differs(template, apose, tmp_path):
    from click.testing import CliRunner

    from ghum_pipe.cli.synth_command import synth
    from ghum_pipe.synth.writers import write_scan

    direct = write_scan(tmp_path / "direct", apose, "ply")
    res = CliRunner().invoke(synth, [str(tmp_path / "cli"), "--count", "1", "--seed", str(SEED)])
    assert res.exit_code == 0, res.output
    cli = tmp_path / "cli" / "scans" / direct.name
    assert cli.read_bytes() == direct.read_bytes()
    for suffix in (".npz", ".json"):
        name = direct.stem + suffix
        assert (tmp_path / "cli" / "truth" / name).read_bytes() == (tmp_path / "direct" / "truth" / name).read_bytes()
    assert not list((tmp_path / "cli" / "scans").glob("*.npz")), "truth must never sit beside the scans"
    a, b = make_subject(template, SEED, 0), make_subject(template, SEED + 1, 0)
    assert not np.allclose(a.betas, b.betas) and a.subject_id != b.subject_id
    # scan i depends only on (seed, i), not on what came before it
    np.testing.assert_array_equal(make_subject(template, SEED, 3).betas, make_subject(template, SEED, 3).betas)


def test_population_lies_outside_the_template_basis_and_is_seeded(template):
    """Default population 'anny': rest shapes the template's 32 coefficients cannot reproduce
    (RMS residual of the best projection >= 1 mm over the surface: Anny's hidden phenotypes and
    the soft tissue measured 1.9 mm on 40 people, bench/model_e2e.py); 'template': the truth
    is in the basis (residual ~0) and t.pose(betas) reproduces it exactly, as before."""
    from ghum_pipe.synth.population import template_residual_mm

    surface = template.masks["surface"]
    anny = [make_subject(template, SEED, i) for i in range(6)]
    old = [make_subject(template, SEED, i, SynthConfig(population="template")) for i in range(6)]
    assert template_residual_mm(template, np.stack([s.rest_verts for s in anny]), surface) >= 1.0
    assert template_residual_mm(template, np.stack([s.rest_verts for s in old]), surface) < 0.01
    # person-specific soft tissue is on top of Anny's mesh: switching it off changes the shape
    bare = make_subject(template, SEED, 0, SynthConfig(variation=0.0))
    d = np.linalg.norm(anny[0].rest_verts - bare.rest_verts, axis=1)
    assert d.max() > 0.003 and d[~(template.vertex_part_labels == 0)].max() == 0  # trunk and limbs only
    np.testing.assert_array_equal(make_subject(template, SEED, 2).rest_verts, anny[2].rest_verts)
    pose = np.zeros((template.n_joints, 3))
    pose[template.joint_index("lowerarm01.L")] = [0.0, 0.0, 1.0]
    expr = np.zeros(template.n_expression)
    expr[3] = 0.7
    a = pose_template(template, old[1].betas, pose, expr)
    b = pose_rest(template, old[1].rest_verts, old[1].rest_joints, pose, expr)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-9)


def test_planted_people_carry_the_corrective_skinning_and_joint_shifts(template, tmp_path):
    """SynthConfig(planted=True): the people are posed as ``synth --registrations`` plants them
    (corrective before skinning, perturbed weights, shifted joint centres), and the truth files
    read back through ``model.truth.planted_truth``, so a model trained from their scans has
    known targets. Exact, not measured: the planted corrective is the registrations' definition."""
    from ghum_pipe.model.truth import corrective_offsets, planted_truth
    from ghum_pipe.synth.generate import planted, write_batch_planted_truth
    from ghum_pipe.synth.registrations import joint_shift
    from ghum_pipe.template.lbs import batch_rodrigues

    t = template
    truth = planted(t, SEED)
    plain, shifted = make_subject(t, SEED, 0), make_subject(t, SEED, 0, SynthConfig(planted=True))
    np.testing.assert_array_equal(plain.rest_verts, shifted.rest_verts)
    np.testing.assert_allclose(shifted.rest_joints - plain.rest_joints,
                               joint_shift(truth["shifts"], t.n_joints, plain.rest_verts), atol=1e-12)
    el = t.joint_index("lowerarm01.L")
    pose = np.zeros((t.n_joints, 3))
    pose[el] = [0.0, 0.0, 1.2]
    zero = np.zeros(t.n_expression)
    # the corrective alone: template skinning weights and an unbent rest give the same mesh
    a, _ = pose_rest(t, plain.rest_verts, plain.rest_joints, pose, zero,
                     dict(truth, skin_weights=t.skin_weights))
    b, _ = pose_rest(t, plain.rest_verts, plain.rest_joints, pose, zero)
    dx = corrective_offsets(truth["corrective"]["fields"], truth["corrective"]["joints"],
                            batch_rodrigues(torch.as_tensor(pose)).numpy())
    # the biceps bulge (25 mm at full strength, sin^2(0.6) = 0.32 of it here) is posed with the arm
    assert np.abs(np.linalg.norm(a - b, axis=1).max() - np.linalg.norm(dx, axis=1).max()) < 1e-3
    assert np.linalg.norm(dx, axis=1).max() > 0.005
    write_batch_planted_truth(tmp_path, t, SEED)
    read = planted_truth(tmp_path)
    np.testing.assert_allclose(read["skinning"]["skin_weights"], truth["skin_weights"])
    np.testing.assert_array_equal(read["planted_joints"], truth["shifts"]["joints"])


def test_pose_conventions(template):
    """Left-arm abduction about -Y raises the left wrist; finger curl folds fingers to the palm."""
    sampler = PoseSampler(template.joint_names, template.rest_joints)
    p1 = sampler.sample(np.random.default_rng(1))
    np.testing.assert_array_equal(p1, sampler.sample(np.random.default_rng(1)))
    assert not np.allclose(p1, sampler.sample(np.random.default_rng(2)))
    assert np.abs(p1[0]).max() == 0  # the global orientation is the rigid transform's job
    zero = np.zeros(template.n_expression)
    raise_ = np.zeros((template.n_joints, 3))
    raise_[template.joint_index("upperarm01.L")] = [0, -0.8, 0]
    _, j0 = pose_template(template, np.zeros(32), np.zeros_like(raise_), zero)
    _, j1 = pose_template(template, np.zeros(32), raise_, zero)
    w = template.joint_index("wrist.L")
    assert j1[w, 2] > j0[w, 2] + 0.15
    full_curl = PoseSampler(template.joint_names, template.rest_joints, PoseConfig(finger_curl=(1.0, 1.0)))
    curl = np.zeros((template.n_joints, 3))
    full_curl._curl_fingers(curl, "L", np.ones(3), np.random.default_rng(0))
    _, j2 = pose_template(template, np.zeros(32), curl, zero)
    # the palm of the left hand faces the thigh (-X) in Anny's A-pose
    assert full_curl.palm_normal[0] < -0.5
    for k in range(1, 6):
        tip, base = template.joint_index(f"finger{k}-3.L"), template.joint_index(f"finger{k}-1.L")
        assert (j2[tip] - j0[tip]) @ full_curl.palm_normal > 0.015  # towards the palm
        if k > 1:  # and the finger folds: its tip comes closer to its knuckle
            assert np.linalg.norm(j2[tip] - j2[base]) < np.linalg.norm(j0[tip] - j0[base]) - 0.008


def test_closeups_are_cropped_to_their_region(template, tmp_path):
    hand = closeup_scans(template, SEED, 0, SynthConfig(), kinds=("hand_left",))[0]
    region = template.masks["hand_left"]
    assert str(hand.truth["kind"]) == "hand_left" and hand.scan_id.endswith("-hand_left")
    np.testing.assert_array_equal(hand.truth["region_mask"], region)
    assert not (hand.truth["observed"] & ~region).any()
    v = hand.truth["verts"]
    region_faces = template.faces[region[template.faces].all(1)]
    assert _distance_to_mesh(v, region_faces, hand.verts).max() < 0.006
    d = _distance_to_mesh(hand.verts, hand.faces, v[hand.truth["observed"]])
    assert d.mean() < 0.001  # finer scanner: 0.5 mm noise
    # the head as a point cloud: points only on the head, written and read back as PCD
    head = closeup_scans(template, SEED, 0, SynthConfig(point_cloud=True, expressions=True), kinds=("head",))[0]
    assert head.faces is None and head.normals is not None
    hv = head.truth["verts"]
    head_faces = template.faces[template.masks["head"][template.faces].all(1)]
    assert np.percentile(_distance_to_mesh(hv, head_faces, head.verts), 99) < 0.002
    from ghum_pipe.synth.writers import write_scan

    # (ghum_pipe.io.load_scan only takes person-sized scans, so read the PCD back with open3d)
    back = o3d.io.read_point_cloud(str(write_scan(tmp_path, head, "pcd")))
    np.testing.assert_allclose(np.asarray(back.points), head.verts, atol=1e-6)
    np.testing.assert_array_equal((np.asarray(back.colors) * 255).round(), head.colors)


def test_body_point_cloud_reads_back_through_ingest(template, tmp_path):
    from ghum_pipe.io import load_scan
    from ghum_pipe.synth.writers import write_scan

    cloud = body_scan(template, SEED, 1, SynthConfig(point_cloud=True, units="mixed", up="mixed"))
    assert cloud.faces is None and len(cloud.verts) > 100000
    for fmt in ("ply", "xyz"):
        scan = load_scan(write_scan(tmp_path / fmt, cloud, fmt))
        assert scan.is_point_cloud and len(scan.verts) == len(cloud.verts)
        assert (scan.frame.units, scan.frame.up.lstrip("+")) == ("mm", "y")
        # what ingest reads is the truth's internal frame: GT vertices sit on the points
        d, _ = KDTree(scan.verts).query(cloud.truth["verts_m"][cloud.truth["observed"]], k=1)
        assert np.median(d) < 0.003


@pytest.mark.slow
def test_mannequin_is_one_closed_body_of_human_size(tmp_path):
    import trimesh

    from ghum_pipe.synth.mannequin import mannequin_scan

    scan = mannequin_scan(SEED, 0)  # metres, +Y up
    mesh = trimesh.Trimesh(scan.verts, scan.faces, process=False)
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.is_watertight
    ext = np.ptp(scan.verts, axis=0)
    assert np.argmax(ext) == 1 and 1.55 < ext[1] < 1.95
    assert 0.04 < mesh.volume < 0.12  # m^3: a slim adult is ~0.06
    names = [str(n) for n in scan.truth["joint_names"]]
    for n in ("nose", "left_shoulder", "right_elbow", "left_wrist", "right_hip", "left_knee", "right_ankle", "head"):
        assert n in names
    assert str(scan.truth["kind"]) == "other" and "verts" not in scan.truth
    # every limb joint lies inside the body (negative signed distance)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(scan.verts.astype(np.float32)), o3d.core.Tensor(scan.faces.astype(np.uint32)))
    inner = [i for i, n in enumerate(names) if not n.endswith(("eye", "ear")) and n != "nose"]
    sd = scene.compute_signed_distance(o3d.core.Tensor(scan.truth["joints"][inner].astype(np.float32))).numpy()
    assert (sd < 0).all(), dict(zip([names[i] for i in inner], sd))
    # handedness: facing -Y with the left on +X, (left - right) x (forward) points down (-Z);
    # a turn about the vertical keeps that
    J = dict(zip(names, scan.truth["joints_m"]))
    across = J["left_shoulder"] - J["right_shoulder"]
    front = J["nose"] - J["head"]
    assert np.cross(across, front)[2] < 0


def test_mixed_frames_and_rigid_placement():
    combos = [frames.resolve_frame("mixed", "mixed", i) for i in range(4)]
    assert set(combos) == {("m", "z"), ("mm", "y"), ("m", "y"), ("mm", "z")}
    assert frames.resolve_frame("mixed", "mixed", 0) != frames.resolve_frame("mixed", "mixed", 1)
    with pytest.raises(ValueError):
        frames.resolve_frame("inch", "z", 0)
    # +Y up: the template's up (+Z) becomes +Y, its front (-Y) becomes +Z; mm scale 1000
    F = frames.file_transform("mm", "y")
    np.testing.assert_allclose(frames.apply(F, np.array([[0, 0, 1.0], [0, -1.0, 0]])), [[0, 1000, 0], [0, 0, 1000]])
    for i in range(50):
        T = frames.random_rigid(np.random.default_rng(i), max_tilt_deg=5.0, max_translation_m=1.0)
        R = T[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) > 0
        assert np.degrees(np.arccos(np.clip(R[2, 2], -1, 1))) <= 5.0 + 1e-9  # tilt of the up axis
        assert np.linalg.norm(T[:3, 3]) <= 1.0 + 1e-12


def test_random_poses_keep_hands_off_the_body(template):
    """Posed scans must stay scannable: over 20 random poses no forearm or hand vertex comes
    within 5 mm of the torso/head surface (contacts would glue limbs to the body in a scan)."""
    t = template
    sampler = PoseSampler(t.joint_names, t.rest_joints)
    core_joints = [i for i, n in enumerate(t.joint_names)
                   if n.startswith(("spine", "neck", "head", "root", "pelvis", "clavicle", "upperleg01"))]
    arm_joints = [i for i, n in enumerate(t.joint_names) if n.startswith(("lowerarm", "wrist", "finger", "metacarpal"))]
    dominant = t.skin_indices[np.arange(t.n_verts), np.argmax(t.skin_weights, 1)]
    core = np.isin(dominant, core_joints) & t.masks["surface"]
    arm = np.isin(dominant, arm_joints)
    core_faces = t.faces[core[t.faces].all(1)]
    lifted = 0
    for i in range(20):
        pose = sampler.sample(np.random.default_rng([SEED, i, 1]))
        v, j = pose_template(t, np.zeros(32), pose, np.zeros(t.n_expression))
        d = _distance_to_mesh(v, core_faces, v[arm])
        assert d.min() > 0.005, f"pose {i}: a hand/forearm touches the body ({d.min() * 1000:.1f} mm)"
        w = [t.joint_index("wrist.L"), t.joint_index("wrist.R")]
        lifted += int((j[w, 2] > t.rest_joints[w, 2] + 0.2).any())
    assert lifted >= 3  # and they are really posed: some arms are raised well above the A-pose
