"""End to end on a synthetic scanner scan: synth -> MediaPipe landmarks -> registration, against
the scan's ground-truth template vertices (A-pose, millimetres, holes and scanner noise)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import trimesh


@pytest.mark.slow
def test_synth_scan_registers_within_targets(tmp_path, template, measured):
    from ghum_pipe.io import load_scan
    from ghum_pipe.landmarks.stage import run_landmarks
    from ghum_pipe.register.stage import RegisterConfig, run_registration

    out = tmp_path / "synth"
    # the template's own population: the bounds below were measured on it (bench/register.py)
    subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "synth", str(out), "-n", "1", "--seed", "11",
                    "--units", "mm", "--population", "template"], check=True, capture_output=True)
    path = next((out / "scans").glob("*.ply"))  # (synth also writes subjects.csv there)
    scan_dir = tmp_path / "work" / path.stem
    run_landmarks(path, scan_dir)
    metrics = run_registration(path, scan_dir, RegisterConfig(lowres=True))

    scan = load_scan(path)
    assert scan.frame.units == "mm"
    reg = trimesh.load(scan_dir / "registration.ply", process=False)
    low = trimesh.load(scan_dir / "registration_lowres.ply", process=False)
    assert len(reg.vertices) == 13718 and len(low.vertices) < 5000
    truth = np.load(out / "truth" / f"{path.stem}.npz")["verts"]  # scan frame, mm
    err_mm = np.linalg.norm(reg.vertices - truth, axis=1)[template.masks["surface"]]
    measured("mean mm", err_mm.mean(), "<=", 5.0)
    measured("p95 mm", np.percentile(err_mm, 95), "<=", 15.0)
    measured("scan->reg mean mm", metrics["scan_to_reg_mean_mm"], "<=", 1.0)
    with np.load(scan_dir / "params.npz") as p:
        assert p["offsets"].shape == (13718, 3) and p["pose"].shape == (template.n_joints, 3)
        seen = p["vertex_mask"]
    # the filter F: most of the body saw the scanner, the soles (on the turntable) mostly did not
    surface, feet = template.masks["surface"], template.masks["feet"] & template.masks["surface"]
    assert seen.dtype == bool and not seen[~surface].any()
    assert 0.85 < seen[surface].mean() < 0.995, seen[surface].mean()
    soles = feet & (template.rest_verts[:, 2] < template.rest_verts[feet, 2].min() + 0.01)
    assert seen[soles].mean() < 0.6, seen[soles].mean()
