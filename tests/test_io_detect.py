"""Unit and up-axis detection on the template posed several ways, in every file frame."""

import numpy as np
import pytest
import torch

from ghum_pipe.io import Frame, ScanError, load_scan, write_mesh
from ghum_pipe.io.detect import plausible_units, principal_axes, shape_problem, vertex_weights
from ghum_pipe.io.upright import REFERENCE_POSES, detect_up
from ghum_pipe.io.frame import AXES, rotation_to_z_up

# Held-out poses: none is one of upright.REFERENCE_POSES (the head-side references), and each is
# posed on a different random body shape.
POSES = {
    "A_shaped": {},
    "half_T": {"upperarm01.L": [0, -0.5, 0], "upperarm01.R": [0, 0.5, 0]},
    "one_arm_up": {"upperarm01.L": [0, -2.4, 0]},
    "right_knee_up": {"upperleg01.R": [-0.6, 0, 0], "lowerleg01.R": [1.0, 0, 0]},
    "twist": {"spine03": [0, 0, 0.6], "neck01": [0, 0, 0.5], "upperarm01.L": [0, -0.8, 0]},
    "bend_forward": {"spine03": [0.35, 0, 0], "spine02": [0.2, 0, 0]},
    "crouch": {"upperleg01.L": [-0.7, 0, 0], "lowerleg01.L": [1.2, 0, 0], "upperleg01.R": [-0.7, 0, 0],
               "lowerleg01.R": [1.2, 0, 0], "spine03": [0.3, 0, 0]},
    "stride": {"upperleg01.L": [-0.5, 0, 0], "upperleg01.R": [0.3, 0, 0], "lowerleg01.R": [0.4, 0, 0],
               "upperarm01.L": [0.4, -0.3, 0], "upperarm01.R": [-0.4, 0.3, 0]},
}


@pytest.fixture(scope="module")
def posed(template):
    gen = torch.Generator().manual_seed(0)
    shapes = torch.randn(len(POSES), 10, generator=gen)
    pose = torch.zeros(len(POSES), template.n_joints, 3)
    for i, rots in enumerate(POSES.values()):
        for joint, aa in rots.items():
            pose[i, template.joint_index(joint)] = torch.tensor(aa, dtype=torch.float32)
    verts, _ = template.pose(shape=shapes, pose=pose)
    return dict(zip(POSES, verts.numpy().astype(np.float64)))


def test_rotations_are_proper_and_map_up_to_z():
    for name, axis in AXES.items():
        R = Frame.make("m", name).rotation
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(R @ np.array(axis), [0, 0, 1], atol=1e-12)
    # A +Y-up file: internal (x, y, z) -> file (x, z, -y), the synth/glTF convention.
    assert np.allclose(Frame.make("m", "+y").to_file([[1.0, 2.0, 3.0]]), [[1.0, 3.0, -2.0]])
    tilted = np.array([0.3, 0.2, 0.9])
    assert np.allclose(rotation_to_z_up(tilted) @ (tilted / np.linalg.norm(tilted)), [0, 0, 1])


@pytest.mark.parametrize("pose", list(POSES))
def test_up_axis_detected_for_every_pose_and_axis(template, posed, pose):
    verts_m = posed[pose]
    weights = vertex_weights(verts_m, template.faces)
    assert shape_problem(principal_axes(verts_m, weights)) is None
    for up in AXES:
        frame = Frame.make("mm", up)
        guess = detect_up(frame.to_file(verts_m), weights)
        assert guess.axis == up, (pose, up, guess)
        assert guess.angle_deg < 15.0
        assert guess.margin > 0.01, guess  # not flagged as a guess


def test_held_out_poses_are_not_references():
    assert not set(POSES) & set(REFERENCE_POSES)


def test_tilted_body_keeps_exact_axis(template, posed):
    # 35 deg off every file axis: no snapping, the PCA direction is kept (within a few degrees).
    true_up = np.array([np.sin(np.radians(35)), 0.0, np.cos(np.radians(35))])
    frame = Frame.make("m", true_up)
    guess = detect_up(frame.to_file(posed["A_shaped"]), vertex_weights(posed["A_shaped"], template.faces))
    assert guess.axis is None
    assert np.degrees(np.arccos(guess.up @ true_up)) < 3.0


def test_units_ranges_do_not_overlap():
    assert plausible_units(1.8) == ["m"]
    assert plausible_units(180.0) == ["cm"]
    assert plausible_units(1800.0) == ["mm"]
    assert plausible_units(0.03) == [] and plausible_units(30.0) == []


@pytest.mark.parametrize("units,up,pose", [("mm", "+y", "A_shaped"), ("m", "-y", "half_T"),
                                           ("cm", "+x", "right_knee_up"), ("mm", "-z", "one_arm_up"),
                                           ("m", "+z", "crouch")])
def test_load_scan_detects_units_and_up(tmp_path, template, posed, units, up, pose):
    truth = Frame.make(units, up)
    path = write_mesh(tmp_path / f"{pose}.ply", truth.to_file(posed[pose]), template.faces)
    scan = load_scan(path)
    assert (scan.frame.units, scan.frame.up) == (units, up)
    assert scan.frame == truth
    # float32 PLY: the round trip is exact to well under a micron.
    assert np.abs(scan.verts - posed[pose]).max() < 1e-6
    assert np.allclose(scan.frame.to_file(scan.verts), truth.to_file(posed[pose]), rtol=0, atol=1e-3)


def test_forced_units_and_up(tmp_path, template):
    truth = Frame.make("mm", "+y")
    path = write_mesh(tmp_path / "body.obj", truth.to_file(template.rest_verts), template.faces)
    scan = load_scan(path, units="mm", up="y")
    assert scan.frame == truth and not any("detected" in n for n in scan.notes)
    with pytest.raises(ScanError, match=r"body\.obj: the body is 1\.\d+e\+03 m long read as m.*--units"):
        load_scan(path, units="m")
    with pytest.raises(ScanError, match=r"body\.obj.*up axis 'w'"):
        load_scan(path, up="w")


@pytest.mark.parametrize("up", ["+y", "-z"])
def test_no_floor_found_on_a_body(posed, up):
    """Flat-ish parts (back, soles, a bent leg's thigh) never pass for a floor."""
    from ghum_pipe.io.floor import find_floor

    for pose, verts_m in posed.items():
        assert find_floor(Frame.make("m", up).to_file(verts_m)) is None, pose


def test_every_pose_is_a_person_as_mesh_and_as_cloud(template, posed):
    """Clouds weight points alike (no areas), which lowers the elongation: a T-posed or posed
    cloud must still pass the sanity check, while boxes and spheres do not (test_io.py)."""
    tpose = dict(POSES["half_T"])
    tpose.update({"upperarm01.L": [0, -0.85, 0], "upperarm01.R": [0, 0.85, 0]})
    pose = torch.zeros(1, template.n_joints, 3)
    for joint, aa in tpose.items():
        pose[0, template.joint_index(joint)] = torch.tensor(aa)
    bodies = dict(posed, T=template.pose(None, pose)[0][0].numpy().astype(np.float64))
    for name, verts in bodies.items():
        for faces in (template.faces, None):
            pa = principal_axes(verts, vertex_weights(verts, faces))
            assert shape_problem(pa) is None, (name, "mesh" if faces is not None else "cloud", pa.std)
