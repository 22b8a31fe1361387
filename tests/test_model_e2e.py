"""Scans to model, end to end: synthetic scans of people outside the template's shape space ->
``ghum-pipe run`` (landmark -> register, real MediaPipe and Dask) -> ``ghum-pipe train``
(GHUM, one round) -> ``ghum-pipe evaluate --truth`` on the held-out subject's scan.

Four scans of three subjects (one scanned twice: A-pose and a random pose). Budget ~4 min of
CPU on 2 cores (registering one scan costs ~15-25 s); on a shared machine the wall time can be
several times that, hence the generous subprocess timeouts (no timing is asserted).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
SEED = 7


def cli(*args, timeout=3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghum_pipe.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def _scan(job) -> None:
    from ghum_pipe.synth.generate import SynthConfig, body_scan
    from ghum_pipe.synth.writers import write_scan
    from ghum_pipe.template import load_template

    out, i, k = job
    write_scan(out, body_scan(load_template(), SEED, i, SynthConfig(), take=k), "ply")


@pytest.mark.slow
def test_scans_to_model_is_no_worse_than_the_template(tmp_path, template):
    from ghum_pipe.model.data import load_registrations

    out = tmp_path / "synth"
    jobs = [(out, i, k) for i, n in {0: 2, 1: 1, 2: 1}.items() for k in range(n)]  # (A-pose, then posed)
    for job in jobs:  # in this process: a fork of the test process (threads, Dask) can deadlock
        _scan(job)
    work = tmp_path / "W"
    res = cli("run", out / "scans", "--work", work, "--workers", "2", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    ids = sorted(p.stem for p in (out / "scans").glob("*.ply"))
    # subjects: what synth wrote beside its scans (truth 'subject'), handed to training by W/subjects.csv
    with open(work / "subjects.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan_id", "subject"])
        for sid in ids:
            with np.load(out / "truth" / f"{sid}.npz") as z:
                w.writerow([sid, str(z["subject"])])
    data = load_registrations(work)
    assert len(data) == 4 and len(data.subjects) == 3, (data.scan_ids, data.subjects)
    assert sorted(np.bincount(data.subject_index).tolist()) == [1, 1, 2]  # grouped, not one subject per scan
    # the filter F is the register stage's vertex_mask: scan data within 1 cm (holes under the feet)
    for k, sid in enumerate(data.scan_ids):
        with np.load(work / "scans" / sid / "params.npz") as z:
            vm = z["vertex_mask"].astype(bool)
        np.testing.assert_array_equal(data.mask[k] > 0.5, vm)
        assert 0.5 < vm.mean() < 1.0

    model = tmp_path / "M"
    res = cli("train", "--work", work, "--out", model, "--fullres-only", "--rounds", "1", "--holdout", "0.34",
              "--inline", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((model / "ghum" / "config.json").read_text())["training"]
    assert len(meta["train_subjects"]) == 2 and len(meta["heldout_subjects"]) == 1, meta
    res = cli("evaluate", "--model", model, "--work", work, "--truth", out / "truth", "--no-curve", "--fit-iters", "60",
              "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads((model / "eval" / "results.json").read_text())
    rows = {r["model"]: r for r in results["fit"]}
    ghum, tpl = rows["GHUM"], rows["template (Anny 32 shape + pose)"]
    print(json.dumps({k: {m: r.get(m) for m in ("mean_mm", "no_psd_mm", "truth_mm", "truth_no_psd_mm")}
                      for k, r in rows.items()}, indent=1))
    # the spec (#15 targets): with few subjects the trained model is no worse than the template's
    # own space (32 coefficients + pose) on held-out people, measured against their true mesh.
    # The template row is fitted by the models' own staged L-BFGS (baselines.template_model), one
    # scan at a time like every row. Measured before that change (2 training subjects, a weak Adam
    # fit of the template): GHUM 1.89 mm, template 8.05, the template's 32 coefficients inside
    # GHUM's fitter 1.88. Not re-run since: bench/model_e2e.py's scan route (3 training subjects)
    # measured GHUM 4.95 mm vs the fair template 4.70 on 10 held-out scans (docs/model.md), so this
    # first assertion is the spec's and may fail at this size. GHUM's 64-d space contains the
    # template's 32 directions, so only the L-BFGS path differs in the second: margin 0.05 mm
    # (5x the measured 0.01 mm difference).
    assert ghum["truth_mm"] <= tpl["truth_mm"], (ghum, tpl)
    assert ghum["truth_mm"] <= rows["template space-32 (ghum skinning, joints, PSD)"]["truth_mm"] + 0.05
    assert ghum["truth_mm"] < 10.0  # a fit, not a failure: registrations are ~2-4 mm from the truth
