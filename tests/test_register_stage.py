"""Registration stage on known geometry: recovery of a deformed template, frame invariance,
bad input. (End-to-end on a synthetic scanner scan with MediaPipe landmarks: test_register_e2e.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from ghum_pipe.errors import RegistrationError
from ghum_pipe.io import Frame, write_mesh
from ghum_pipe.register.stage import RegisterConfig, register_scan, run_registration
from test_register_synthetic import make_subject, scan_faces, subject_landmarks


@pytest.fixture(scope="module")
def tl(template):
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set

    return load_template_landmark_set(template)


@pytest.fixture(scope="module")
def posed_subject(template, tl):
    s = make_subject(template, "posed", seed=5, offset_mm=5.0)
    names, pts, conf = subject_landmarks(tl, s["verts"], noise_m=0.0)
    return s, {"names": names, "points": pts, "confidence": conf}


def _surface_errors(template, verts, truth):
    e = np.linalg.norm(verts - truth, axis=1)[template.masks["surface"]]
    return e.mean() * 1e3, np.percentile(e, 95) * 1e3


@pytest.mark.slow
def test_recovers_posed_template_with_smooth_offsets(template, tl, posed_subject, measured):
    s, lm = posed_subject
    faces = scan_faces(template, s["verts"], holes=False)
    res = register_scan(s["verts"], faces, None, lm, template, RegisterConfig(), template_landmarks=tl)
    mean_mm, p95_mm = _surface_errors(template, res.verts, s["verts"])
    # the spec: < 2 mm. Measured 1.86 mm mean / 4.7 mm p95: what is left is tangential (torso and
    # shoulder twist the skeleton fit leaves, which closest points cannot see)
    measured("mean mm", mean_mm, "<", 2.0)
    measured("p95 mm", p95_mm, "<", 6.0)
    assert res.metrics["scan_to_reg_mean_mm"] < 0.5
    # the parameters re-pose to the registration
    import torch

    p = res.params
    with torch.no_grad():
        v, _ = template.pose(torch.tensor(p["shape"][None]), torch.tensor(p["pose"][None]),
                             torch.tensor(p["expression"][None]), torch.tensor(p["offsets"][None]))
    np.testing.assert_allclose(p["scale"] * v[0].numpy() + p["translation"], res.verts, atol=1e-6)


@pytest.mark.slow
def test_two_different_people_correspond(template, tl, measured):
    """Issue 6: the same template vertex lands on the same body part of two different people
    (2.17 m A-pose and 2.28 m posed, both heavier than the template; holes, 1 cm landmark noise)."""
    from ghum_pipe.register.evaluate import part_agreement

    for pose, seed in (("apose", 1), ("posed", 8)):
        s = make_subject(template, pose, seed=seed, offset_mm=5.0)
        names, pts, conf = subject_landmarks(tl, s["verts"], noise_m=0.01, seed=seed)
        faces = scan_faces(template, s["verts"], holes=True, seed=seed)
        res = register_scan(s["verts"], faces, None, {"names": names, "points": pts, "confidence": conf},
                            template, RegisterConfig(), template_landmarks=tl)
        mean_mm, _ = _surface_errors(template, res.verts, s["verts"])
        parts = part_agreement(template, res.verts, s["verts"])
        # measured: apose 1.43 mm / 98.9 %, posed 2.02 mm / 98.4 % (disagreement = part borders)
        measured(f"{pose} mean mm", mean_mm, "<", 3.0)
        measured(f"{pose} part agreement", parts, ">", 0.975)
        assert part_agreement(template, template.rest_verts, s["verts"]) < 0.6  # the check can fail


def _write_ply_float64(path, verts, faces):
    """A binary PLY with double coordinates (write_mesh writes float32, as most tools do)."""
    faces = np.asarray(faces)
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\nproperty double x\n"
            f"property double y\nproperty double z\nelement face {len(faces)}\n"
            "property list uchar int vertex_indices\nend_header\n").encode()
    rows = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rows["n"], rows["i"] = 3, faces
    path.write_bytes(head + np.ascontiguousarray(verts, dtype="<f8").tobytes() + rows.tobytes())


def _write_case(tmp, template, s, lm, units, up, float64=False):
    """The subject's surface (with holes) and its landmarks written in a file frame."""
    frame = Frame.make(units, up)
    faces = scan_faces(template, s["verts"], holes=True)
    used = np.unique(faces)
    remap = -np.ones(len(s["verts"]), dtype=np.int64)
    remap[used] = np.arange(len(used))
    path = tmp / f"scan_{units}_{up.strip('+-')}{'_f64' if float64 else ''}.ply"
    (_write_ply_float64 if float64 else write_mesh)(path, frame.to_file(s["verts"][used]), remap[faces])
    scan_dir = tmp / path.stem
    scan_dir.mkdir()
    doc = {"names": lm["names"], "points": frame.to_file(lm["points"]).tolist(),
           "confidence": list(map(float, lm["confidence"]))}
    (scan_dir / "landmarks.json").write_text(json.dumps(doc))
    return path, scan_dir, frame


def _register_case(tmp, template, s, lm, units, up, float64):
    """Register one written case through the per-scan entry; the registration back in internal metres."""
    path, scan_dir, frame = _write_case(tmp, template, s, lm, units, up, float64)
    metrics = run_registration(path, scan_dir, RegisterConfig())
    for name in ("registration.ply", "params.npz", "metrics.json", "residuals.png"):
        assert (scan_dir / name).exists()
    reg = trimesh.load(scan_dir / "registration.ply", process=False)
    assert len(reg.vertices) == template.n_verts == 13718
    np.testing.assert_array_equal(reg.faces, template.faces)
    assert metrics["frame"]["units"] == units
    # in the file's own frame and units: close to the subject written in that frame
    file_err = np.linalg.norm(reg.vertices - frame.to_file(s["verts"]), axis=1)[template.masks["surface"]]
    assert np.median(file_err) * frame.metres_per_unit < 0.005
    return frame.to_internal(reg.vertices)


@pytest.fixture(scope="module")
def registered_m_z(tmp_path_factory, template, posed_subject):
    """The subject as a float64 file in metres, +Z up, registered: the reference of the frame tests."""
    s, lm = posed_subject
    return _register_case(tmp_path_factory.mktemp("m_z"), template, s, lm, "m", "+z", float64=True)


def _apart_mm(a, b) -> tuple[float, float, float]:
    d = np.linalg.norm(a - b, axis=1) * 1e3
    return float(d.mean()), float(np.percentile(d, 99)), float(d.max())


@pytest.mark.slow
def test_same_registration_in_any_units_and_up_axis(tmp_path, template, posed_subject, registered_m_z, measured):
    """The same scan in m/+Z, mm/+Y and cm/-Y registers the same: within 0.1 mm p99 (the spec).

    The files hold float64 coordinates, so the three frames carry the same geometry; after
    ``canonical_metres`` the registration sees the same numbers and makes the same choices, so
    the registrations are expected to be identical on any machine (before it they were 0.5 mm
    apart at p99 and 5 mm at the maximum: the optimiser amplifies last-bit differences)."""
    s, lm = posed_subject
    for units, up in (("mm", "+y"), ("cm", "-y")):
        mean, p99, worst = _apart_mm(registered_m_z, _register_case(tmp_path, template, s, lm, units, up, True))
        print(f"m/+z vs {units}/{up}, float64 files: mean {mean:.4f} mm, p99 {p99:.4f} mm, max {worst:.4f} mm")
        measured(f"{units}{up} p99 mm", p99, "<", 0.1)
        measured(f"{units}{up} max mm", worst, "<", 0.1)


@pytest.mark.slow
def test_float32_file_in_other_units_registers_close(tmp_path, template, posed_subject, registered_m_z, measured):
    """A float32 file (what most tools write) in mm holds other numbers than one in m: up to
    0.06 micron apart. The optimiser amplifies that (the spec's 0.1 mm p99 is NOT met for such
    files): measured mean 0.05-0.12 mm, p99 0.20-1.2 mm, max 1.7-7 mm over kernels (Zen, Haswell)
    and the m/mm/cm pairs (docs/register.md). The bounds are 2x the worst measured: they catch a
    real frame error (a wrong axis or unit moves everything by centimetres), not the rounding."""
    s, lm = posed_subject
    mean, p99, worst = _apart_mm(registered_m_z, _register_case(tmp_path, template, s, lm, "mm", "+y", False))
    print(f"m/+z float64 vs mm/+y float32: mean {mean:.3f} mm, p99 {p99:.3f} mm, max {worst:.3f} mm")
    measured("float32 mm+y mean mm", mean, "<", 0.25)
    measured("float32 mm+y p99 mm", p99, "<", 2.5)
    measured("float32 mm+y max mm", worst, "<", 15.0)


def test_too_few_landmarks_is_a_registration_error_and_nothing_is_written(tmp_path, template, posed_subject):
    s, lm = posed_subject
    keep = [i for i, n in enumerate(lm["names"]) if n in ("nose", "left_shoulder", "right_shoulder", "left_hip")]
    few = {k: [lm[k][i] for i in keep] for k in ("names", "points", "confidence")}
    path, scan_dir, _ = _write_case(tmp_path, template, s, few, "m", "+z")
    with pytest.raises(RegistrationError, match="body landmarks") as e:
        run_registration(path, scan_dir, RegisterConfig())
    assert str(path) in str(e.value)
    assert sorted(p.name for p in scan_dir.iterdir()) == ["landmarks.json"]


def test_swapped_landmarks_are_inconsistent(template, posed_subject):
    s, lm = posed_subject
    pts = np.array(lm["points"])
    names = list(lm["names"])
    i, j = names.index("left_shoulder"), names.index("right_hip")
    pts[[i, j]] = pts[[j, i]]
    with pytest.raises(RegistrationError, match="inconsistent landmarks"):
        register_scan(s["verts"], template.faces, None, {"names": names, "points": pts, "confidence": lm["confidence"]},
                      template, RegisterConfig(), path="x.ply")


def test_missing_landmarks_json(tmp_path, template, posed_subject):
    s, lm = posed_subject
    path, scan_dir, _ = _write_case(tmp_path, template, s, lm, "m", "+z")
    (scan_dir / "landmarks.json").unlink()
    with pytest.raises(RegistrationError, match="no landmarks.json"):
        run_registration(path, scan_dir, RegisterConfig())


def test_partial_body_is_refused(template, tl, posed_subject):
    s, lm = posed_subject
    upper = s["verts"][:, 2] > np.percentile(s["verts"][:, 2], 55)  # the upper half only
    faces = template.faces[upper[template.faces].all(1)]
    with pytest.raises(RegistrationError, match="partial body"):
        register_scan(s["verts"], faces, None, lm, template, RegisterConfig(), template_landmarks=tl, path="half.ply")
