"""avatar.glb opened in a real client: Blender's own glTF importer (bpy, in a subprocess).

Needs the `blender` extra (bpy==5.0.1, ~370 MB): `make blender-check` installs it and runs this
file with GHUM_PIPE_REQUIRE_BLENDER=1 (then a missing bpy fails instead of skipping)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ghum_pipe.export.scan import export_registration
from ghum_pipe.template.lbs import as_rotmats, batch_rigid_transform

from test_export import MAX_MM, make_registration, posed_internal

HAVE_BPY = importlib.util.find_spec("bpy") is not None
if not HAVE_BPY and os.environ.get("GHUM_PIPE_REQUIRE_BLENDER"):
    raise RuntimeError("bpy is not installed: pip install '.[blender]' (make blender-check does)")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_BPY, reason="bpy not installed (make blender-check)")]

N_POSES = 20


def random_poses(template, n: int, seed: int) -> np.ndarray:
    """(n, J, 3) axis-angle: 0.35 rad per axis on every joint, root included."""
    return np.random.default_rng(seed).normal(0, 0.35, (n, template.n_joints, 3))


@pytest.fixture(scope="module")
def blender(tmp_path_factory, template):
    d = tmp_path_factory.mktemp("blender") / "scans" / "b0"
    reg = make_registration(d, template, seed=5)
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "texture.png")
    export_registration(d, None, template, texture=d / "texture.png")
    poses = random_poses(template, N_POSES, seed=7)
    # rest-to-posed joint transforms in Blender's (= ghum-pipe's internal, +Z up) frame
    s, T = float(reg["scale"]), reg["translation"]
    f = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    _, joints = template.shaped(f(reg["shape"][None]), f(reg["expression"][None]), dtype=torch.float64)
    joints = s * joints + f(T)
    rel = batch_rigid_transform(as_rotmats(f(poses)), joints.expand(N_POSES, -1, -1),
                                torch.as_tensor(template.parents))[1].numpy()
    np.savez(d / "poses.npz", rel=rel, joint_names=np.array(template.joint_names))
    out = d / "blender_out.npz"
    r = subprocess.run([sys.executable, "-m", "ghum_pipe.export.blender_check", str(d / "avatar.glb"),
                        str(d / "poses.npz"), str(out)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    vmap = np.asarray(json.loads((d / "registration.json").read_text())["vertex_map"])
    return dict(reg, poses=poses, vmap=vmap, **{k: v for k, v in np.load(out).items()})


def test_blender_opens_it_posed_like_the_scan(blender):
    err_mm = np.abs(blender["scan_pose"] - blender["verts"][blender["vmap"]]).max() * 1e3
    print(f"scan pose: max {err_mm:.5f} mm")
    assert err_mm < MAX_MM  # measured 0.001 mm


def test_blender_armature_poses_match_ghum_pipe_lbs(blender, template):
    worst = 0.0
    for k, pose in enumerate(blender["poses"]):
        ref = posed_internal(template, blender, pose=pose)[blender["vmap"]]
        worst = max(worst, np.abs(blender["posed"][k] - ref).max() * 1e3)
    print(f"{N_POSES} random poses: max {worst:.5f} mm")
    assert worst < MAX_MM


def test_blender_shape_keys_are_the_facial_actions(blender, template):
    assert list(blender["morph_names"]) == list(template.expression_names)
    zero = np.zeros_like(blender["pose"])
    worst = 0.0
    for e in range(template.n_expression):
        w = np.zeros(template.n_expression)
        w[e] = 1.0
        ref = posed_internal(template, blender, pose=zero, expression=w)[blender["vmap"]]
        worst = max(worst, np.abs(blender["morph"][e] - ref).max() * 1e3)
    print(f"52 facial actions at weight 1: max {worst:.5f} mm")
    assert worst < MAX_MM


def test_blender_material_has_the_texture(blender, template):
    assert tuple(blender["texture_size"]) == (64, 64)
    # UVs arrive in Blender's convention (origin bottom-left), i.e. the template's own UVs:
    # the image is not upside down
    from ghum_pipe.export.rig import split_uv_seams

    _, _, uvs = split_uv_seams(template.faces, template.face_uvs)
    assert np.abs(blender["loop_uv"] - uvs[blender["loop_vert"]]).max() < 1e-6
    assert list(blender["bone_names"]) and set(blender["bone_names"]) == set(template.joint_names)
