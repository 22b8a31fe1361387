"""The HTML report at scale: review queue first, readable labels with units, a default column set
(the rest behind a toggle), CSV/JSON export of the same table, links to each scan's files, no
histogram of fewer than 10 values, lazy images, and scan-only views for a scan that never got a
registration. Real files; the work dir's records are written through the Manifest API."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import trimesh

from ghum_pipe.pipelines.ingest import IngestConfig, run_ingest
from ghum_pipe.pipelines.manifest import Manifest
from ghum_pipe.pipelines.report import write_report

N = 40


def _work(tmp_path: Path) -> tuple[Path, dict]:
    """N scans; scan i: mean error 1 + i/10 mm; every 10th has a p95; 3 and 5 flagged by review;
    17 failed landmarking."""
    work, scans = tmp_path / "W", tmp_path / "scans"
    scans.mkdir()
    paths = {}
    for i in range(N):
        paths[f"s{i:03d}"] = scans / f"s{i:03d}.ply"
        paths[f"s{i:03d}"].write_text(f"ply {i}\n")
    m = Manifest.load(work)
    m.add_scans(paths)
    planted = {}
    for i, sid in enumerate(sorted(paths)):
        m.scans[sid]["subject"] = f"p{i // 4}"
        folder = work / "scans" / sid
        (folder / "logs").mkdir(parents=True)
        (folder / "logs" / "ingest.log").write_text("ok\n")
        (folder / "scan.json").write_text(json.dumps({"kind": "body", "notes": []}))
        m.set_stage(sid, "ingest", {"status": "done", "seconds": 0.5, "metrics": {"height_m": 1.7}})
        if i == 17:
            m.set_stage(sid, "landmark", {"status": "failed", "error": f"{paths[sid]}: no person in any view"})
            continue
        m.set_stage(sid, "landmark", {"status": "done", "seconds": 6.0, "metrics": {"n_landmarks": 500}})
        metrics = {"scan_to_reg_mean_mm": 1.0 + i / 10, "seconds_total": 9.0}
        if i % 10 == 0:
            metrics["scan_to_reg_p95_mm"] = 3.0 + i / 10
        if i in (3, 5):
            metrics["review"] = {"verdict": "failed" if i == 5 else "look", "reasons": [f"reason {i}"]}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "registration.ply").write_text("ply\n")
        m.set_stage(sid, "register", {"status": "done", "seconds": 9.5, "metrics": None})
        planted[sid] = metrics
    m.save()
    return work, planted


def test_report_reads_at_scale(tmp_path):
    work, planted = _work(tmp_path)
    index = write_report(work, overlays=False)
    page = index.read_text()

    # the queue: review failed, review look, then the scan that failed a stage, then by id
    order = re.findall(r"<td class='id' data-v='([^']+)'>", page)
    assert order[:4] == ["s005", "s003", "s017", "s000"] and len(order) == N
    # labels with units; default columns plain, the rest marked for the toggle
    assert "<th title='register.scan_to_reg_mean_mm'>scan→reg mean (mm)</th>" in page
    assert "<th title='ingest.height_m'>height (m)</th>" in page
    assert "<th class=x title='register.seconds_total'>fit time (s)</th>" in page
    assert "<table class='sortable compact' id='scans'>" in page and "id='allcols'" in page and "id='filter'" in page
    assert "title='reason 3'" in page and ">look<" in page

    # exports: the same rows, machine names, planted values
    rows = list(csv.DictReader((work / "report" / "scans.csv").open()))
    assert [r["id"] for r in rows] == order
    by_id = {r["id"]: r for r in rows}
    assert float(by_id["s012"]["register.scan_to_reg_mean_mm"]) == planted["s012"]["scan_to_reg_mean_mm"]
    assert by_id["s017"]["status.landmark"] == "failed" and by_id["s017"]["register.scan_to_reg_mean_mm"] == ""
    assert by_id["s005"]["review"] == "failed" and by_id["s013"]["subject"] == "p3"
    doc = json.loads((work / "report" / "scans.json").read_text())
    assert len(doc["scans"]) == N and doc["columns"]["register.scan_to_reg_mean_mm"] == {
        "label": "scan→reg mean", "unit": "mm"}

    # histograms only where >= 10 values: the mean (39 scans), not the p95 (4 scans)
    plots = sorted(p.name for p in (work / "report" / "plots").glob("*.png"))
    assert "register.scan_to_reg_mean_mm.png" in plots and "timing.png" in plots
    assert not any("p95" in p for p in plots)

    # every link and image resolves; every image loads lazily
    refs = re.findall(r"(?:src|href)='([^'#]+)'", page)
    assert "../scans/s000/registration.ply" in refs and "../scans/s017/logs/ingest.log" in refs
    for ref in refs:
        assert (index.parent / ref).is_file(), ref
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs and all("loading='lazy'" in tag for tag in imgs)


def test_a_scan_without_registration_keeps_its_views(tmp_path, template):
    """Ingest read it, landmarking failed: the report still shows the scan as it was read."""
    scans, work = tmp_path / "scans", tmp_path / "W"
    scans.mkdir()
    trimesh.Trimesh(template.rest_verts * 1000.0, template.faces, process=False).export(scans / "a.ply")
    m = Manifest.load(work)
    m.add_scans({"a": scans / "a.ply"})
    run_ingest(scans / "a.ply", work / "scans" / "a", IngestConfig())
    m.set_stage("a", "ingest", {"status": "done", "seconds": 1.0})
    m.set_stage("a", "landmark", {"status": "failed", "error": "no person in any view"})
    m.save()
    page = write_report(work).read_text()
    overlay = work / "report" / "scans" / "a" / "overlay.png"
    assert overlay.is_file() and "the scan as ingest read it (no registration)" in page


def test_a_large_report_renders_in_a_browser(tmp_path):
    """A 300-scan report (synthetic records, bench/report.py's generator) screenshotted by headless
    Chromium (Debian's package; the Makefile installs it): the page renders, the table is drawn
    (not a blank page) and every link resolves. Its load time is measured by bench/report.py."""
    import importlib.util
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        import pytest

        pytest.skip("no chromium: apt-get install chromium (make sysdeps does)")
    spec = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[1] / "bench" / "report.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work = bench.synthetic_work(tmp_path, 300)
    index = write_report(work, overlays=False)
    page = index.read_text()
    assert len(re.findall(r"<td class='id'", page)) == 300
    assert page.count("<tr style='display:none'>") == 100 and "show all 300 rows" in page  # 200 shown
    for ref in set(re.findall(r"(?:src|href)='([^'#]+)'", page)):
        assert (index.parent / ref).is_file(), ref
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,800", index.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (800, 1200)
    # a rendered table: many dark text pixels and the header's tint, not a blank or error page
    dark = (img < 100).mean()
    assert 0.01 < dark < 0.5, dark
