"""The rigged template: cache, vertex order, skinning, posing, GHUML maps."""

import math

import numpy as np
import pytest
import torch

from ghum_pipe.template import load_template
from ghum_pipe.template.lowres import load_lowres


def test_sizes_and_cache(template):
    t = template
    assert (t.n_verts, len(t.faces), t.n_joints) == (13718, 27420, 104)
    assert t.source.endswith(".npz")  # loaded from the cache, not rebuilt
    assert load_template() is t  # once per process (a Dask worker loads it once)
    assert t.parents[0] == -1 and np.all(t.parents[1:] < np.arange(1, t.n_joints))
    assert t.skin_indices.shape == (t.n_verts, 4)
    np.testing.assert_allclose(t.skin_weights.sum(1), 1.0, atol=1e-9)
    assert (t.skin_weights >= 0).all()
    # Anny's frame: +Z up, facing -Y (nose in front), left hand at +X, ~1.5-1.9 m tall.
    height = np.ptp(t.rest_verts[:, 2])
    assert 1.5 < height < 1.95
    assert t.rest_verts[t.masks["hand_left"], 0].mean() > 0.3
    nose = t.coco_keypoints(t.rest_verts)[t.coco_names.index("nose")]
    assert nose[1] < t.rest_verts[t.masks["head"], 1].mean()


def test_vertex_order_is_annys(template):
    """Sample 0 of the shape bank is Anny's default person: the template's shape space must
    reproduce Anny's own rest mesh for it, vertex for vertex."""
    import anny

    model = anny.Anny(facial_actions="all")
    with torch.no_grad():
        ref = model(phenotype_kwargs={k: 0.5 for k in model.phenotype_labels})["rest_vertices"][0].numpy()
    betas = torch.as_tensor(template.phenotype_bank_betas[:1], dtype=torch.float64)
    verts, _ = template.shaped(betas, dtype=torch.float64)
    err = np.linalg.norm(verts[0].numpy() - ref, axis=1)
    # Exact order; the 32-component shape space truncates Anny's by < 2 mm at worst.
    assert err.mean() < 2e-4 and err.max() < 2e-3, f"mean {err.mean() * 1000:.3f} max {err.max() * 1000:.3f} mm"


def test_rest_pose_is_identity_and_batched(template):
    B = 3
    pose = torch.zeros(B, template.n_joints, 3)
    shape = torch.zeros(B, 8)
    verts, joints = template.pose(shape, pose)
    assert verts.shape == (B, 13718, 3) and joints.shape == (B, 104, 3)
    np.testing.assert_allclose(verts[1].numpy(), template.rest_verts, atol=1e-5)
    np.testing.assert_allclose(joints[2].numpy(), template.rest_joints, atol=1e-5)


def test_elbow_rotation_moves_the_forearm_only(template):
    t = template
    elbow = t.joint_index("lowerarm01.L")
    wrist = t.joint_index("wrist.L")
    pose = torch.zeros(1, t.n_joints, 3)
    pose[0, elbow] = torch.tensor([0.0, 0.0, math.pi / 2])  # 90 degrees about the vertical axis
    verts, joints = t.pose(None, pose)
    verts, joints = verts[0].numpy(), joints[0].numpy()
    moved = np.linalg.norm(verts - t.rest_verts, axis=1) > 1e-3
    # Every moved vertex belongs to the left arm (x > 0.15 m), the left hand moved entirely.
    assert moved.any() and (t.rest_verts[moved, 0] > 0.15).all()
    assert moved[t.masks["hand_left"]].all() and not moved[t.masks["hand_right"]].any()
    # The forearm keeps its length and turns by exactly 90 degrees about the elbow.
    rest_vec = t.rest_joints[wrist] - t.rest_joints[elbow]
    new_vec = joints[wrist] - joints[elbow]
    np.testing.assert_allclose(np.linalg.norm(new_vec), np.linalg.norm(rest_vec), rtol=1e-5)
    np.testing.assert_allclose(new_vec[2], rest_vec[2], atol=1e-5)
    cos = rest_vec[:2] @ new_vec[:2] / (np.linalg.norm(rest_vec[:2]) * np.linalg.norm(new_vec[:2]))
    assert abs(cos) < 1e-4


def test_root_rotation_is_global_and_rotmats_match_axis_angle(template):
    t = template
    aa = torch.zeros(1, t.n_joints, 3)
    aa[0, 0] = torch.tensor([0.0, 0.0, 0.7])
    from ghum_pipe.template.lbs import as_rotmats

    v1, _ = t.pose(None, aa)
    v2, _ = t.pose(None, as_rotmats(aa))
    np.testing.assert_allclose(v1.numpy(), v2.numpy(), atol=1e-6)
    c, s = math.cos(0.7), math.sin(0.7)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    root = t.rest_joints[0]
    expected = (t.rest_verts - root) @ R.T + root
    np.testing.assert_allclose(v1[0].numpy(), expected, atol=1e-5)


def test_pose_is_differentiable(template):
    shape = torch.zeros(1, 4, requires_grad=True)
    pose = torch.zeros(1, template.n_joints, 3, requires_grad=True)
    expr = torch.zeros(1, template.n_expression, requires_grad=True)
    verts, joints = template.pose(shape, pose, expr)
    (verts.square().sum() + joints.sum()).backward()
    assert shape.grad.abs().sum() > 0 and pose.grad.abs().sum() > 0 and expr.grad.abs().sum() > 0


def test_expression_moves_the_face_only(template):
    t = template
    expr = torch.zeros(1, t.n_expression)
    expr[0, t.expression_names.index("jawOpen")] = 1.0
    verts, _ = t.pose(None, None, expr)
    d = np.linalg.norm(verts[0].numpy() - t.rest_verts, axis=1)
    assert d.max() > 0.02  # the jaw opens by centimetres
    # Outside the head only the upper neck under the jaw follows, by millimetres.
    outside = ~t.masks["head"]
    assert d[outside].max() < 0.002 and (t.rest_verts[outside][d[outside] > 1e-4, 2] > 0.6).all()


def test_ghuml_round_trip_and_rig():
    lr = load_lowres()
    full = load_template()
    low = lr.template
    assert 2500 <= low.n_verts <= 3500
    rt = lr.upsample(lr.downsample(full.rest_verts))
    err = np.linalg.norm(rt - full.rest_verts, axis=1)
    assert err.mean() < 0.003, f"round trip {err.mean() * 1000:.2f} mm"
    np.testing.assert_allclose(low.skin_weights.sum(1), 1.0, atol=1e-9)
    assert low.masks["face"].sum() > 200 and low.masks["hand_left"].sum() > 100
    # The low rig poses like the full one: a posed GHUML mesh upsampled is within a few mm.
    pose = torch.zeros(1, full.n_joints, 3)
    pose[0, full.joint_index("lowerarm01.R"), 2] = -1.0
    pose[0, full.joint_index("upperleg01.L"), 0] = -0.6
    vf, _ = full.pose(None, pose)
    vl, _ = low.pose(None, pose)
    up = lr.upsample(vl[0].numpy())
    assert np.linalg.norm(up - vf[0].numpy(), axis=1).mean() < 0.005


@pytest.mark.slow
def test_cache_build_from_anny_is_deterministic_and_leaves_autograd_alone(tmp_path, monkeypatch, template):
    """A fresh cache dir (a new machine, a new cluster node) rebuilds the same template."""
    from ghum_pipe.template import template as template_module

    monkeypatch.setenv("GHUM_PIPE_CACHE", str(tmp_path))
    rebuilt = template_module.load_template.__wrapped__(4)
    assert torch.is_grad_enabled()
    assert rebuilt.source.startswith(str(tmp_path)) and not list(tmp_path.glob(".*tmp*"))
    np.testing.assert_allclose(rebuilt.rest_verts, template.rest_verts, atol=1e-9)
    np.testing.assert_array_equal(rebuilt.faces, template.faces)
    np.testing.assert_allclose(rebuilt.skin_weights, template.skin_weights, atol=1e-12)
    assert rebuilt.hash == template.hash


def test_build_lock_excludes_other_processes(tmp_path):
    import subprocess
    import sys

    from ghum_pipe.template.template import build_lock

    path = tmp_path / "cache" / "x.npz"
    probe = ("import sys; from filelock import FileLock, Timeout\n"
             "try:\n    FileLock(sys.argv[1], timeout=0).acquire()\nexcept Timeout:\n    sys.exit(3)\n")
    lock_file = str(path.with_suffix(".lock"))
    with build_lock(path):
        assert subprocess.run([sys.executable, "-c", probe, lock_file]).returncode == 3  # held
    assert subprocess.run([sys.executable, "-c", probe, lock_file]).returncode == 0  # released
