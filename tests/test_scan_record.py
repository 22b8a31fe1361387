"""A scan is read once: later stages take the frame, kind and subject that ingest recorded in
scan.json (io/scan_record.py) and detect only when there is no matching record."""

from __future__ import annotations

import json
import logging

import numpy as np
import trimesh

from ghum_pipe.io.frame import Frame
from ghum_pipe.io.scan_record import load_recorded_scan, read_scan_record
from ghum_pipe.pipelines.ingest import IngestConfig, run_ingest


def test_stages_take_the_recorded_frame(tmp_path, template, caplog):
    mesh = template.to_trimesh()
    v = np.asarray(mesh.vertices) * 1000.0
    v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1)  # +Z up, m -> +Y up, mm
    scan_path = tmp_path / "anna_walk.ply"
    trimesh.Trimesh(v, mesh.faces, process=False).export(scan_path)
    (tmp_path / "subjects.csv").write_text("scan_id,subject\nanna_walk,anna\n")
    folder = tmp_path / "W" / "scans" / "anna_walk"

    run_ingest(scan_path, folder, IngestConfig())
    record = read_scan_record(folder)
    assert (record.frame.units, record.frame.up, record.kind, record.subject) == ("mm", "+y", "body", "anna")
    scan, got = load_recorded_scan(scan_path, folder)
    assert scan.frame == record.frame and got == record
    assert abs(scan.verts[:, 2].max() - scan.verts[:, 2].min() - np.ptp(template.rest_verts[:, 2])) < 1e-3

    # plant another (wrong) frame in the record: the stages take it as it is, without detecting
    doc = json.loads((folder / "scan.json").read_text())
    planted = Frame.make("mm", "+z")
    (folder / "scan.json").write_text(json.dumps(dict(doc, frame=planted.to_dict())))
    caplog.set_level(logging.INFO, logger="ghum_pipe.io.scan_record")
    scan, _ = load_recorded_scan(scan_path, folder)
    assert scan.frame == planted and not caplog.records
    assert np.allclose(scan.verts, planted.to_internal(v), atol=1e-9)

    # options that disagree with the record (another up axis), or no record: detected here, and said
    scan, got = load_recorded_scan(scan_path, folder, up="+y")
    assert scan.frame == Frame.make("mm", "+y") and got.subject == "anna"
    (folder / "scan.json").unlink()
    scan, got = load_recorded_scan(scan_path, folder)
    assert (scan.frame.units, scan.frame.up, got.kind, got.subject) == ("mm", "+y", "body", "anna")
    assert sum("detecting its frame here" in r.getMessage() for r in caplog.records) == 2
