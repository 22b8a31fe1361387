"""Landmark accuracy and speed on synthetic scans with ground truth, against the stage's targets.

Scans come from ``ghum-pipe synth`` (made once, reused): A-pose, posed, posed in millimetres,
posed with +Y up, and the primitive mannequin of another topology (``--other-model``, metres,
+Y up). Each scan goes through the landmark stage exactly as users run it
(``run_landmarks``: load, render, detect, triangulate, write), and its landmarks.json is scored
against ``OUT/truth/<id>.npz``:

- body: the COCO-17 names. Truth "like with like": the template landmark definition of each
  name (found by this same stage on the rest-pose template and stored as barycentric / shell
  weights, see ghum_pipe.landmarks.evaluate) applied to the true template vertices. That allows
  for joint depth: MediaPipe's hip or shoulder lies at its own depth inside the body, the same on
  the template as on the scan, so the comparison does not charge that convention as error.
  Reported: mean, % within 50 mm, left/right swaps.
- face: FaceMesh eye corners, nose tip and mouth corners; hands: wrist and five fingertips.
- per-stage times (load, render, detect, triangulate, write) and the total per scan. The
  first scan of the process also creates the MediaPipe graphs; the table marks it.

Peer, measured in the same run on the same detections: plain multi-view DLT of the body-ring
Pose detections (all views with visibility >= 0.5, no swap fix, no RANSAC, no visibility test,
no close-ups), scored the same way; the ratio column is peer / ours.

For the mannequin the truth holds only its primitives' joint centres (not a template), so its
body error is against those centres and includes MediaPipe's joint-depth convention; it shows
that the stage works on a body it has never seen, not the like-with-like accuracy.

    .venv/bin/python bench/landmarks.py                     # 2 scans per kind, ~3 min
    .venv/bin/python bench/landmarks.py --count 4 --out /tmp/lm_bench
    .venv/bin/python bench/landmarks.py --clouds             # + posed raw point clouds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _var in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):  # MediaPipe's C++ warnings, as the CLI does
    os.environ.setdefault(_var, "2")

import numpy as np  # noqa: E402

from ghum_pipe.landmarks.evaluate import COCO17, MM_PER_UNIT, count_swaps, landmark_errors  # noqa: E402
from ghum_pipe.landmarks.stage import LandmarkConfig, run_landmarks  # noqa: E402

KINDS = {  # name: (synth options, seed)
    "apose": ([], 11),
    "posed": (["--posed"], 12),
    "posed_mm": (["--posed", "--units", "mm"], 13),
    "posed_yup": (["--posed", "--up", "y"], 14),
    "other": (["--other-model"], 15),
}
CLOUD_KIND = {"posed_cloud": (["--posed", "--point-cloud"], 16)}  # with --clouds
TARGETS = "targets: body mean <= 25 mm, >= 95 % within 50 mm, 0 swaps; face <= 6 mm; hands <= 12 mm; <= 8 s/scan"


def make_scans(out: Path, count: int, kinds: dict = KINDS) -> list[tuple[str, Path, Path]]:
    """(kind, scan file, truth npz) for ``count`` scans of each kind, made once with the CLI."""
    rows = []
    for kind, (opts, seed) in kinds.items():
        d = out / kind
        if len(list((d / "scans").glob("*.ply"))) < count:
            print(f"ghum-pipe synth {d} --count {count} {' '.join(opts)} ...", flush=True)
            subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "synth", str(d), "--count", str(count),
                            "--seed", str(seed), *opts], check=True, cwd=REPO)
        for scan in sorted((d / "scans").glob("*.ply"))[:count]:
            rows.append((kind, scan, d / "truth" / f"{scan.stem}.npz"))
    return rows


def naive_body(found_raw, names=COCO17):
    """The peer: plain DLT of the raw ring detections, internal metres. Returns {name: (3,)}."""
    from ghum_pipe.landmarks.detect import POSE_NAMES
    from ghum_pipe.landmarks.triangulate import dlt

    P, uv, score = found_raw
    idx = [POSE_NAMES.index(n) for n in names]
    X = dlt(P, uv[idx], np.nan_to_num(score[idx]) >= 0.5)
    return dict(zip(names, X))


def score_scan(kind, doc, truth, tl, peer_internal, frame):
    """Errors (LandmarkErrors) of ours and of the peer for one scan."""
    units = str(truth["units"])
    peer_doc = {"names": list(peer_internal), "points": frame.to_file(np.array(list(peer_internal.values())))}
    if kind == "other":  # truth: primitive joint centres by COCO name
        jn = [str(n) for n in truth["joint_names"]]
        joints = dict(zip(jn, truth["joints"]))

        def errs(d):
            f = dict(zip(d["names"], np.asarray(d["points"])))
            return {n: float(np.linalg.norm(f[n] - joints[n]) * MM_PER_UNIT[units]) if n in f else float("nan")
                    for n in COCO17 if n in joints}

        found = dict(zip(doc["names"], np.asarray(doc["points"])))
        coco = {n: found[n] for n in COCO17 if n in found}
        return errs(doc), errs(peer_doc), None, count_swaps(coco, joints)
    ours = landmark_errors(doc, truth["verts"], units, tl)
    peer = landmark_errors(peer_doc, truth["verts"], units, tl)
    return ours.body_mm, peer.body_mm, ours, ours.swaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ghum_bench_landmarks")
    ap.add_argument("--count", type=int, default=2, help="scans per kind")
    ap.add_argument("--clouds", action="store_true", help="also posed raw point clouds (meshed by the stage)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from ghum_pipe.landmarks import find as find_mod
    from ghum_pipe.landmarks.template_landmarks import load_template_landmarks
    from ghum_pipe.template import load_template

    rows = make_scans(args.out, args.count, {**KINDS, **(CLOUD_KIND if args.clouds else {})})
    t0 = time.perf_counter()
    tl = load_template_landmarks(load_template())
    print(f"template landmarks: {len(tl)} ({time.perf_counter() - t0:.1f} s; cached after the first build)\n")

    # Keep the raw detections of each run for the peer (find_landmarks returns them).
    captured = {}
    original = find_mod.find_landmarks

    def capture(*a, **k):
        found = original(*a, **k)
        captured["found"] = found
        return found

    find_mod.find_landmarks = capture  # stage.run_landmarks imports it from the module at call time
    header = (f"{'scan':<22}{'kind':<10}{'body mm':>8}{'<=50mm':>7}{'swaps':>6}{'face mm':>8}{'hands mm':>9}"
              f"{'peer body':>10}{'ratio':>6} | {'load':>5}{'render':>7}{'detect':>7}{'triang':>7}{'write':>6}"
              f"{'total s':>8}")
    print(TARGETS)
    print(header)
    print("-" * len(header))
    per_kind: dict[str, list] = {}
    for i, (kind, scan, truth_path) in enumerate(rows):
        work = args.out / "work" / scan.stem
        t0 = time.perf_counter()
        try:
            m = run_landmarks(scan, work, LandmarkConfig())
        except Exception as e:  # noqa: BLE001 - report and go on, as the batch runner does
            print(f"{scan.stem:<22}{kind:<10} FAILED: {e}")
            per_kind.setdefault(kind, []).append(None)
            continue
        total = time.perf_counter() - t0
        doc = json.loads((work / "landmarks.json").read_text())
        truth = np.load(truth_path)
        peer = naive_body(captured["found"].raw_body)
        body, peer_body, full, swaps = score_scan(kind, doc, truth, tl, peer, _frame_from_doc(doc))
        b = np.array([v for v in body.values() if np.isfinite(v)])
        pb = np.array([v for v in peer_body.values() if np.isfinite(v)])
        within = float(np.mean([np.isfinite(v) and v <= 50 for v in body.values()]))
        face = full.face_mean if full else float("nan")
        hands = full.hands_mean if full else float("nan")
        rec = dict(body=b.mean(), within=within, swaps=swaps, face=face, hands=hands, peer=pb.mean(),
                   total=total, **{k: m[f"time_{k}_s"] for k in ("load", "render", "detect", "triangulate", "write")})
        per_kind.setdefault(kind, []).append(rec)
        first = " *" if i == 0 else ""
        print(f"{scan.stem:<22}{kind:<10}{rec['body']:>8.1f}{100 * within:>6.0f}%{swaps:>6d}{face:>8.1f}{hands:>9.1f}"
              f"{rec['peer']:>10.1f}{rec['peer'] / rec['body']:>6.1f} | {rec['load']:>5.2f}{rec['render']:>7.2f}"
              f"{rec['detect']:>7.2f}{rec['triangulate']:>7.2f}{rec['write']:>6.2f}{total:>8.2f}{first}")
    find_mod.find_landmarks = original
    print("-" * len(header))
    print("* first scan of the process: includes creating the MediaPipe graphs\n")
    print(f"{'totals':<14}{'scans':>6}{'body mm':>8}{'<=50mm':>7}{'swaps':>6}{'face mm':>8}{'hands mm':>9}"
          f"{'peer body':>10}{'ratio':>6}{'s/scan':>7}{'s/scan (not 1st)':>17}")
    first_rec = next((r for v in per_kind.values() for r in v if r is not None), None)
    groups = dict(per_kind)
    groups["all Anny"] = [r for k, v in per_kind.items() if k != "other" for r in v]
    for name, recs in groups.items():
        ok = [r for r in recs if r is not None]
        if not ok:
            print(f"{name:<14}{len(recs):>6}  all failed")
            continue
        def mean(key, ok=ok):
            v = np.array([r[key] for r in ok], dtype=float)
            return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")

        later = [r["total"] for r in ok if r is not first_rec]
        print(f"{name:<14}{len(recs):>6}{mean('body'):>8.1f}{100 * mean('within'):>6.0f}%"
              f"{sum(r['swaps'] for r in ok):>6d}{mean('face'):>8.1f}{mean('hands'):>9.1f}{mean('peer'):>10.1f}"
              f"{mean('peer') / mean('body'):>6.1f}{mean('total'):>7.2f}{np.mean(later) if later else float('nan'):>17.2f}"
              + ("" if len(ok) == len(recs) else f"  ({len(recs) - len(ok)} failed)"))
    load = os.getloadavg()
    print(f"\nload average during the run: {load[0]:.1f} (2 cores; other processes slow every stage)")


def _frame_from_doc(doc):
    from ghum_pipe.io.frame import Frame

    f = doc["frame"]
    return Frame(units=f["units"], up=f["up"], metres_per_unit=f["metres_per_unit"], rotation=np.asarray(f["rotation"]))


if __name__ == "__main__":
    main()
