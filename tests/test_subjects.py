"""Subjects through the pipeline: one resolver (W/subjects.csv > subjects.csv next to the scans >
--subject-pattern > what the pipeline recorded), recorded by ingest (scan.json) and register
(params.npz), relabelled without re-running, shown by status, used by training, and a train on a
work dir of one-scan subjects refused in one line. Real files and the real CLI (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from ghum_pipe.errors import ScanError
from ghum_pipe.io.subjects import read_subjects_csv, resolve_subjects, subject_from_pattern, work_subjects

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghum_pipe.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def test_resolver_order_and_errors(tmp_path):
    scans, work = tmp_path / "scans", tmp_path / "W"
    scans.mkdir()
    work.mkdir()
    paths = {i: scans / f"{i}.ply" for i in ("anna_walk", "anna_sit", "bob_walk", "cleo")}
    (scans / "subjects.csv").write_text("scan_id,subject\nanna_sit,anna2\nbob_walk,bob\n")
    (work / "subjects.csv").write_text("anna_sit,anna\n")  # no header: fine; W wins over the scans' folder
    got = resolve_subjects(paths, work, pattern=r"^(.+?)_")
    assert got == {"anna_walk": "anna", "anna_sit": "anna", "bob_walk": "bob", "cleo": None}
    assert resolve_subjects(paths, work) == {"anna_walk": None, "anna_sit": "anna", "bob_walk": "bob", "cleo": None}
    assert subject_from_pattern("P07-s2-head", r"^(P\d+)-") == "P07"
    with pytest.raises(ScanError, match="has no group"):
        resolve_subjects(paths, work, pattern="^anna")
    with pytest.raises(ScanError, match="not a regular expression"):
        resolve_subjects(paths, work, pattern="(")
    (work / "subjects.csv").write_text("scan_id,subject\nanna_sit\n")
    with pytest.raises(ScanError, match=r"subjects.csv: line 2 is not 'scan_id,subject'"):
        read_subjects_csv(work / "subjects.csv")


def test_recorded_subjects_are_the_fallback(tmp_path):
    """Training reads what register recorded (params.npz) when no table or pattern names a scan."""
    for scan_id, subject in (("a1", "p1"), ("a2", "p1"), ("b1", None)):
        folder = tmp_path / "scans" / scan_id
        folder.mkdir(parents=True)
        extra = {} if subject is None else {"subject": np.array(subject)}
        np.savez(folder / "params.npz", pose=np.zeros((3, 3)), **extra)
    assert work_subjects(tmp_path, ["a1", "a2", "b1"]) == {"a1": "p1", "a2": "p1", "b1": None}
    assert work_subjects(tmp_path, ["a1", "a2", "b1"], r"^(\w)") == {"a1": "a", "a2": "a", "b1": "b"}


def _body_scans(folder: Path, template, ids) -> None:
    folder.mkdir()
    mesh = template.to_trimesh()
    for k, scan_id in enumerate(ids):
        trimesh.Trimesh(mesh.vertices * (1.0 + 0.02 * k), mesh.faces, process=False).export(folder / f"{scan_id}.ply")


def test_ingest_records_subjects_and_relabels_without_rerunning(tmp_path, template):
    scans, work = tmp_path / "scans", tmp_path / "W"
    _body_scans(scans, template, ("anna_a", "anna_b", "bob_a"))
    res = cli("ingest", scans, "-w", work, "--workers", "1", "-q", "--subject-pattern", r"^(.+?)_")
    assert res.returncode == 0, res.stdout + res.stderr
    record = {i: json.loads((work / "scans" / i / "scan.json").read_text()) for i in ("anna_a", "anna_b", "bob_a")}
    assert {i: r["subject"] for i, r in record.items()} == {"anna_a": "anna", "anna_b": "anna", "bob_a": "bob"}
    assert all(r["frame"]["units"] == "m" for r in record.values())
    res = cli("status", "-w", work, "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["ok"] and doc["n_subjects"] == 2
    assert doc["scans"]["bob_a"]["subject"] == "bob"
    assert not (work / ".lock").exists() and not (work / ".dask-scratch").exists()  # nothing left behind

    # a table in W renames one scan's subject: scan.json is relabelled, nothing re-runs; the pattern
    # given before is not needed again (recorded subjects are kept)
    (work / "subjects.csv").write_text("scan_id,subject\nbob_a,anna\n")
    finished = json.loads((work / "manifest.json").read_text())["scans"]["bob_a"]["stages"]["ingest"]["finished"]
    res = cli("ingest", scans, "-w", work, "--workers", "1", "-q")
    assert res.returncode == 0 and "ingest: 0 done, 3 up to date" in res.stdout, res.stdout + res.stderr
    assert json.loads((work / "scans" / "bob_a" / "scan.json").read_text())["subject"] == "anna"
    assert json.loads((work / "scans" / "anna_a" / "scan.json").read_text())["subject"] == "anna"
    manifest = json.loads((work / "manifest.json").read_text())["scans"]
    assert manifest["bob_a"]["stages"]["ingest"]["finished"] == finished
    assert {i: manifest[i]["subject"] for i in manifest} == {"anna_a": "anna", "anna_b": "anna", "bob_a": "anna"}
    res = cli("status", "-w", work, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["n_subjects"] == 1, res.stdout


def test_train_refuses_one_scan_subjects_in_one_line(tmp_path):
    """Checked before any Dask or torch work: an empty work dir, then one subject per scan."""
    work = tmp_path / "W"
    work.mkdir()
    res = cli("train", "-w", work, "--out", tmp_path / "M", "--inline")
    assert res.returncode == 2 and "no registrations" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("train", "-w", tmp_path / "nope", "--out", tmp_path / "M")
    assert res.returncode == 2 and "nope: no such work dir" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    for scan_id in ("anna_1", "anna_2", "bob_1"):
        (work / "scans" / scan_id).mkdir(parents=True)
        (work / "scans" / scan_id / "registration.ply").write_text("not a mesh\n")
    res = cli("train", "-w", work, "--out", tmp_path / "M", "--inline")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "every one of the 3 scans would be its own subject" in line
    assert "subjects.csv" in line and "--subject-pattern" in line and "--one-subject-per-scan" in line
    # grouped by a pattern (or allowed by the flag) the check passes; the fake registration is
    # then the error, still one line
    for extra in (("--subject-pattern", r"^(.+?)_"), ("--one-subject-per-scan",)):
        res = cli("train", "-w", work, "--out", tmp_path / "M", "--inline", "-q", *extra)
        assert res.returncode == 2, res.stderr
        assert "cannot read the registration" in res.stderr and "Traceback" not in res.stderr
        assert "its own subject" not in res.stderr


def test_training_data_groups_by_the_resolver(tmp_path):
    """model.data.load_registrations uses the same resolver: with the subjects file gone and the
    recorded subjects stripped, each scan is its own subject; a pattern groups them again."""
    from ghum_pipe.model.data import load_registrations
    from ghum_pipe.synth.registrations import make_registrations

    work = tmp_path / "W"
    make_registrations(work, 2, seed=3, poses_per_subject=2, closeups=False)
    truth = dict(row.split(",") for row in (work / "subjects.csv").read_text().splitlines()[1:])
    assert len(truth) == 4 and len(set(truth.values())) == 2
    data = load_registrations(work, "full")
    assert {i: data.subjects[k] for i, k in zip(data.scan_ids, data.subject_index)} == truth
    (work / "subjects.csv").unlink()
    for folder in (work / "scans").iterdir():
        with np.load(folder / "params.npz") as z:
            arrays = {k: z[k] for k in z.files if k != "subject"}
        np.savez(folder / "params.npz", **arrays)
    load_registrations.cache_clear()
    assert len(load_registrations(work, "full").subjects) == 4
    data = load_registrations(work, "full", r"^(.+)_[a-z]+\d+$")
    assert {i: data.subjects[k] for i, k in zip(data.scan_ids, data.subject_index)} == truth
