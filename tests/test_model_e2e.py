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


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, template):
    """The whole route once: scans -> run -> train -> evaluate; returns the evaluate rows by model."""
    from ghum_pipe.model.data import load_registrations

    tmp_path = tmp_path_factory.mktemp("e2e")
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
    # 150 L-BFGS iterations: at 60 the fits had not converged (on one held-out scan the template
    # ended 1.85 mm from the truth at 60, 1.69 at 150), so a 0.02-0.04 mm difference between
    # the rows measured the optimiser's path more than the models
    res = cli("evaluate", "--model", model, "--work", work, "--truth", out / "truth", "--no-curve",
              "--fit-iters", "150", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads((model / "eval" / "results.json").read_text())
    rows = {r["model"]: r for r in results["fit"]}
    print(json.dumps({k: {m: r.get(m) for m in ("mean_mm", "no_psd_mm", "truth_mm", "truth_no_psd_mm")}
                      for k, r in rows.items()}, indent=1))
    return rows


@pytest.mark.slow
def test_scans_to_model_groups_subjects_and_fits(evaluated):
    """Subjects grouped and F from vertex_mask (asserted while the route runs, in the fixture);
    the trained GHUM fits held-out people: within the template's 32 directions (which its 64-d
    space contains) as well as the template's own space with GHUM's skinning, joints and PSD
    (only the L-BFGS path differs: margin 0.05 mm, 5x the measured 0.01 mm), and a fit, not a
    failure (registrations are ~2-4 mm from the truth)."""
    ghum = evaluated["GHUM"]
    assert ghum["truth_mm"] <= evaluated["template space-32 (ghum skinning, joints, PSD)"]["truth_mm"] + 0.05
    assert ghum["truth_mm"] < 10.0


@pytest.mark.slow
def test_scans_to_model_is_no_worse_than_the_template(evaluated, measured):
    """The spec: with few subjects the trained model is no worse than the template's own space
    (32 coefficients + pose) on held-out people, against their true mesh. Measured on one run's
    registrations (docs/model.md): GHUM trained on 2 people 1.663 mm, the template 1.695 mm
    (150 iterations; GHUM trained without the template's priors 1.664). At 60 iterations,
    unconverged, the priors made the difference: 1.853 against 1.889 without, template 1.852."""
    measured("GHUM - template, held-out truth mm",
             evaluated["GHUM"]["truth_mm"] - evaluated["template (Anny 32 shape + pose)"]["truth_mm"], "<=", 0.0)
