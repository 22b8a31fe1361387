"""A small corruption set through the real register stage: the clean scan is ``ok`` and its
truth agrees; a whole-body left/right landmark swap and a cut-off limb are flagged
(bench/review.py runs the full suite)."""

import json

import numpy as np
import pytest

from ghum_pipe.register.evaluate import surface_error_mm
from ghum_pipe.register.landmark_pairs import load_template_landmark_set
from ghum_pipe.register.stage import RegisterConfig, run_registration
from ghum_pipe.review import review_table
from ghum_pipe.synth.corruptions import make_case, write_case
from ghum_pipe.template import load_template

CASES = (("clean_apose", 0), ("lr_swap_all", 0), ("limb_cut", 0))


@pytest.mark.slow
def test_corruption_set_is_flagged(tmp_path):
    t = load_template()
    tl = load_template_landmark_set(t)
    verdicts, p95 = {}, {}
    for kind, i in CASES:
        d = tmp_path / "scans" / f"{kind}-{i}"
        scan_path = write_case(make_case(t, tl, kind, i), d)
        m = run_registration(scan_path, d, RegisterConfig(units="m", up="+z", kind="body"))
        assert json.loads((d / "metrics.json").read_text())["review"] == m["review"]  # written by the stage
        verdicts[kind] = m["review"]["verdict"]
        reg = np.load(d / "params.npz")["verts_internal"]
        p95[kind] = surface_error_mm(t, reg, np.load(d / "truth.npz")["verts_m"])[1]
    # the review agrees with the truth (bad = true p95 > 10 mm; measured 6.5 / 1361 / 16.3 mm)
    assert verdicts["clean_apose"] == "ok" and p95["clean_apose"] < 10.0
    assert verdicts["lr_swap_all"] != "ok" and p95["lr_swap_all"] > 10.0
    assert verdicts["limb_cut"] != "ok" and p95["limb_cut"] > 10.0
    rows = review_table(tmp_path)
    assert rows[-1]["scan_id"] == "clean_apose-0" and rows[-1]["verdict"] == "ok"
