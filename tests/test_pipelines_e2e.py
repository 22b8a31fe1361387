"""``ghum-pipe run`` end to end with the real stages (ingest -> landmark (MediaPipe) -> register ->
report) on a body scan, then the resumability of the dependent stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghum_pipe.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def stage_records(work: Path, scan_id: str) -> dict:
    return json.loads((work / "manifest.json").read_text())["scans"][scan_id]["stages"]


@pytest.mark.slow
def test_run_registers_a_body_scan_and_resumes_by_dependency(tmp_path, template):
    # a scan of a known body: the template with a shape and an arm pose, in mm, +Y up
    torch.manual_seed(0)
    shape = torch.zeros(1, template.shape_basis.shape[0])
    shape[0, :3] = torch.tensor([1.0, -0.5, 0.5])
    pose = torch.zeros(1, len(template.joint_names), 3)
    verts, _ = template.pose(shape, pose)
    v = verts[0].double().numpy() * 1000.0
    v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1)  # +Z up -> +Y up
    scans = tmp_path / "scans"
    scans.mkdir()
    trimesh.Trimesh(v, template.faces, process=False).export(scans / "body.ply")
    (scans / "subjects.csv").write_text("scan_id,subject\nbody,anna\n")
    work = tmp_path / "W"

    res = cli("run", scans, "--work", work, "--workers", "1", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: 1 scan(s); ingest: 1 done" in res.stdout and "register: 1 done" in res.stdout
    folder = work / "scans" / "body"
    for name in ("scan.json", "landmarks.json", "views/contact_sheet.png", "registration.ply", "params.npz",
                 "metrics.json", "residuals.png", "logs/register.log"):
        assert (folder / name).is_file(), name
    reg = trimesh.load(folder / "registration.ply", process=False)
    assert reg.vertices.shape == (13718, 3)
    # back in the scan's frame: mm and +Y up, over the scan
    assert np.abs(reg.vertices.mean(0) - v.mean(0)).max() < 20.0  # mm
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["scan_to_reg_mean_mm"] < 5.0
    # one read: landmark and register used the frame ingest recorded; the subject reached params.npz
    scan_json = json.loads((folder / "scan.json").read_text())
    assert (scan_json["units"], scan_json["up"], scan_json["subject"]) == ("mm", "+y", "anna")
    assert json.loads((folder / "landmarks.json").read_text())["frame"] == scan_json["frame"]
    assert metrics["frame"] == scan_json["frame"]
    with np.load(folder / "params.npz") as z:
        assert str(z["subject"]) == "anna"
    assert (work / "report" / "index.html").is_file() and (work / "report" / "scans" / "body" / "overlay.png").is_file()
    first = {s: r["finished"] for s, r in stage_records(work, "body").items()}

    # nothing to do on a rerun
    res = cli("run", scans, "--work", work, "--workers", "1", "-v", "--no-report")
    assert res.returncode == 0 and "register: 0 done, 1 up to date" in res.stdout, res.stdout + res.stderr
    assert {s: r["finished"] for s, r in stage_records(work, "body").items()} == first

    # another subject (W/subjects.csv wins) relabels scan.json and params.npz, re-runs nothing
    (work / "subjects.csv").write_text("scan_id,subject\nbody,bea\n")
    res = cli("register", "--work", work, "--workers", "1", "-q")
    assert res.returncode == 0 and "register: 0 done, 1 up to date" in res.stdout, res.stdout + res.stderr
    assert {s: r["finished"] for s, r in stage_records(work, "body").items()} == first
    with np.load(folder / "params.npz") as z:
        assert str(z["subject"]) == "bea" and z["verts_internal"].shape == (13718, 3)
    assert json.loads((folder / "scan.json").read_text())["subject"] == "bea"

    # a changed registration config redoes registration only
    res = cli("register", "--work", work, "--workers", "1", "-q", "--lowres")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "OK: 1 scan(s); register: 1 done, 0 up to date, 0 failed"
    now = {s: r["finished"] for s, r in stage_records(work, "body").items()}
    assert now["landmark"] == first["landmark"] and now["register"] > first["register"]
    assert (folder / "registration_lowres.ply").is_file()
