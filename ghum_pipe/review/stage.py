"""Shell of the review: review a registration, record the verdict.

``review_result`` is what ``register.stage.run_registration`` calls on the registration it has
in memory, before it writes ``metrics.json`` once with ``metrics['review'] = {"verdict",
"reasons": [...], "signals": {...}}``; a review that raises gives a ``look`` verdict naming the
error instead of failing a registration whose outputs are fine. ``review_scan`` re-reviews an
already registered scan from its files (the corruption bench, older work dirs);
``review_table`` collects the verdicts of a work dir for the report's review queue.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ghum_pipe.review.verdict import VERDICTS, Review, ReviewConfig, review_registration

log = logging.getLogger(__name__)


def review_result(verts_m, scan_points_m, landmarks: dict, template, pose=None, offsets_m=None, kind: str = "body",
                  config: ReviewConfig = ReviewConfig(), source: str = "scan") -> Review:
    """:func:`review_registration` with the template's landmark set, that never raises: an
    error inside the review becomes a ``look`` verdict whose reason names it (the registration
    itself is unaffected; a person should look, since the review could not)."""
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set

    try:
        return review_registration(verts_m, scan_points_m, landmarks, template, load_template_landmark_set(template),
                                   pose=pose, offsets_m=offsets_m, kind=kind, config=config)
    except Exception as e:  # the review is advisory: it must not lose a registration
        log.warning("%s: the review could not run (%s: %s)", source, type(e).__name__, e, exc_info=log.isEnabledFor(10))
        return Review("look", (f"the review could not run ({type(e).__name__}: {e})",), {})


def review_scan(scan_dir, scan_path, config: ReviewConfig = ReviewConfig(), template=None, scan=None) -> Review:
    """Review the registration in ``scan_dir`` (registration's ``params.npz``, ``metrics.json``,
    ``landmarks.json``) against the scan at ``scan_path``, and add the result to
    ``scan_dir/metrics.json`` under ``review``. Returns the :class:`Review`.

    ``scan``: the already loaded :class:`ghum_pipe.io.Scan` (the register stage passes its own,
    so the file is not read twice); ``template``: likewise."""
    from ghum_pipe.io import load_scan
    from ghum_pipe.io.atomic import write_json
    from ghum_pipe.io.frame import Frame
    from ghum_pipe.register.landmark_pairs import read_landmarks_json
    from ghum_pipe.template import load_template

    scan_dir = Path(scan_dir)
    metrics = json.loads((scan_dir / "metrics.json").read_text())
    frame = Frame.from_dict(metrics["frame"])
    kind = metrics.get("kind", "body")
    # the frame the register stage used (axis names only: a free direction is re-detected the same way)
    up = frame.up if frame.up[:1] in "+-" else None
    if scan is None:
        scan = load_scan(scan_path, units=frame.units, up=up, kind=kind)
    with np.load(scan_dir / "params.npz") as p:
        verts = p["verts_internal"]
        pose = p["pose"] if "pose" in p else None
        offsets = p["offsets"] if "offsets" in p else None
    lm = read_landmarks_json(scan_dir / "landmarks.json", frame)
    template = template or load_template()
    review = review_result(verts, scan.verts, lm, template, pose=pose, offsets_m=offsets, kind=kind, config=config,
                           source=str(scan_path))
    metrics["review"] = review.to_dict()
    write_json(scan_dir / "metrics.json", metrics)
    return review


def review_table(work) -> list[dict]:
    """One row per scan of the work dir ``work``, worst first: ``{"scan_id", "verdict",
    "reasons": [...], "signals": {...}}``. A scan whose registration failed (or was blocked by a
    failed landmark stage) is ``failed`` with the manifest's error as its reason; one not
    registered yet is left out."""
    from ghum_pipe.pipelines.manifest import Manifest

    work = Path(work)
    rows = []
    records = {}
    m = Manifest.load(work)
    records = {sid: m.stage(sid, "register") for sid in m.ids()}
    ids = set(records) | {p.parent.name for p in (work / "scans").glob("*/metrics.json")}
    for sid in sorted(ids):
        rec = records.get(sid) or {}
        mpath = work / "scans" / sid / "metrics.json"
        if rec.get("status") in ("failed", "blocked"):
            rows.append(dict(scan_id=sid, verdict="failed", reasons=[f"register {rec['status']}: {rec.get('error') or ''}"],
                             signals={}))
            continue
        if not mpath.exists():
            continue
        review = json.loads(mpath.read_text()).get("review")
        if review is None:
            rows.append(dict(scan_id=sid, verdict="look", reasons=["not reviewed (registered before review existed)"],
                             signals={}))
            continue
        rows.append(dict(scan_id=sid, verdict=review["verdict"], reasons=list(review["reasons"]),
                         signals=dict(review["signals"])))
    rows.sort(key=lambda r: (-VERDICTS.index(r["verdict"]), -len(r["reasons"]), r["scan_id"]))
    return rows
