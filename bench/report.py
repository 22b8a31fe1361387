"""The HTML report at scale: write the report of a work dir of N scans (synthetic records and
metrics, no images: the page's own cost) and open it in headless Chromium (Debian's package),
against the peer: Chromium opening a blank page (its own start-up), measured in the same run.
Target (#scale): a 1,000-scan report opens in < 2 s. Prints one row per N.

    .venv/bin/python bench/report.py                   # N = 100, 1000
    .venv/bin/python bench/report.py --counts 1000 5000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ghum_pipe.pipelines.manifest import Manifest  # noqa: E402
from ghum_pipe.pipelines.report import write_report  # noqa: E402


def synthetic_work(root: Path, n: int, seed: int = 0) -> Path:
    """A work dir of ``n`` scans with done records, plausible metrics, a few review flags and
    failures (no images): what the report reads, at ``n`` scans."""
    import numpy as np

    rng = np.random.default_rng(seed)
    work, scans = root / f"W{n}", root / f"scans{n}"
    scans.mkdir(parents=True)
    paths = {f"scan{i:05d}": scans / f"scan{i:05d}.ply" for i in range(n)}
    for p in paths.values():
        p.write_text("ply\n")
    m = Manifest.load(work)
    m.add_scans(paths)
    for i, sid in enumerate(sorted(paths)):
        folder = work / "scans" / sid
        (folder / "logs").mkdir(parents=True)
        m.scans[sid]["subject"] = f"p{i // 5:04d}"
        (folder / "scan.json").write_text(json.dumps({"kind": "body", "notes": ["units detected: mm"]}))
        m.set_stage(sid, "ingest", {"status": "done", "seconds": float(rng.uniform(0.3, 0.9)),
                                    "metrics": {"height_m": float(rng.normal(1.72, 0.09)), "n_points": 200000}})
        if rng.random() < 0.02:
            m.set_stage(sid, "landmark", {"status": "failed", "error": "no person in enough views"})
            continue
        m.set_stage(sid, "landmark", {"status": "done", "seconds": float(rng.uniform(5, 8)),
                                      "metrics": {"n_landmarks": 540, "median_reproj_error_px": float(rng.uniform(1, 3))}})
        mean = float(rng.lognormal(0.3, 0.4))
        metrics = {"scan_to_reg_mean_mm": mean, "scan_to_reg_p95_mm": 3 * mean, "reg_to_scan_mean_mm": 1.1 * mean,
                   "reg_to_scan_p95_mm": 3.5 * mean, "landmark_rms_mm": {"pose": 12.0, "hand": 7.0, "face": 3.0},
                   "observed_fraction": 0.93, "seconds_total": 9.5, "similarity_scale": 1.0}
        if mean > 2.5:
            metrics["review"] = {"verdict": "look", "reasons": [f"scan->reg mean {mean:.1f} mm"]}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        m.set_stage(sid, "register", {"status": "done", "seconds": 9.6, "metrics": None})
    m.save()
    return work


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_seconds(browser: str, url: str, shot: Path) -> float:
    """Wall time of headless Chromium loading ``url`` and writing a screenshot (start-up included)."""
    t0 = time.perf_counter()
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1400,900", url],
                   check=True, capture_output=True, timeout=120)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--runs", type=int, default=3, help="browser loads per page (median)")
    args = ap.parse_args()
    browser = chromium()
    print(f"load average {os.getloadavg()[0]:.1f}; browser: {browser or 'none (apt-get install chromium)'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blank = tmp / "blank.html"
        blank.write_text("<!doctype html><html><body></body></html>")
        peer = statistics.median(open_seconds(browser, blank.as_uri(), tmp / "b.png") for _ in range(args.runs)) \
            if browser else float("nan")
        print(f"{'scans':>6s} {'write s':>8s} {'html MB':>8s} {'open s':>8s} {'blank s':>8s} {'page s':>8s}")
        for n in args.counts:
            work = synthetic_work(tmp, n)
            t0 = time.perf_counter()
            index = write_report(work, overlays=False)
            write_s = time.perf_counter() - t0
            size = index.stat().st_size / 1e6
            opened = statistics.median(open_seconds(browser, index.as_uri(), tmp / f"r{n}.png")
                                       for _ in range(args.runs)) if browser else float("nan")
            print(f"{n:6d} {write_s:8.2f} {size:8.2f} {opened:8.2f} {peer:8.2f} {opened - peer:8.2f}")


if __name__ == "__main__":
    main()
