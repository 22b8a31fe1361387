"""Hand stage benchmark: body registrations with and without it, against the synthetic truth.

    .venv/bin/python bench/register_hands.py W SYNTH [--only ID ...]

W: a work dir in which ``ghum-pipe landmark`` (or ``run``) has run on ``ghum-pipe synth`` body
scans (e.g. ``make model-e2e``'s; never written to), SYNTH: that synth's OUT (``scans/``,
``truth/``). Each body scan is registered in-process twice from the same landmarks.json: with
``RegisterConfig().hands`` off (the peer: the body fit's hands) and on. Prints per scan the
per-vertex error to the truth on the observed surface (mean, p95, and per Anny part: body,
hand.L, hand.R; mm), the mean rotation error of the finger joints against the truth's pose
(degrees; in brackets the truth's mean finger angle), and the CPU seconds of each registration
(one torch thread), then the means of posed (``-t<k>``) and A-pose scans.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np


def errors(template, verts_file: np.ndarray, pose: np.ndarray, truth) -> dict:
    from scipy.spatial.transform import Rotation

    mm = {"m": 1e3, "cm": 10.0, "mm": 1.0}[str(truth["units"])]
    e = np.linalg.norm(verts_file - truth["verts"], axis=1) * mm
    seen = truth["observed"].astype(bool) & template.masks["surface"]
    part = np.asarray(template.vertex_part_labels)
    fingers = np.array([n.startswith("finger") for n in template.joint_names])
    rot = Rotation.from_rotvec(truth["pose"][fingers]).inv() * Rotation.from_rotvec(pose[fingers])
    return {"mean": e[seen].mean(), "p95": np.percentile(e[seen], 95), "body": e[seen & (part == 0)].mean(),
            "hand.L": e[seen & (part == 2)].mean(), "hand.R": e[seen & (part == 3)].mean(),
            "finger_deg": np.degrees(rot.magnitude()).mean(),
            "true_deg": np.degrees(np.linalg.norm(truth["pose"][fingers], axis=1)).mean()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("synth", type=Path)
    ap.add_argument("--only", nargs="*", help="scan ids (default: every body scan in W with a truth)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from ghum_pipe.io.scan_record import load_recorded_scan
    from ghum_pipe.register.stage import RegisterConfig, read_landmarks_json, register_scan
    from ghum_pipe.template import load_template

    t = load_template()
    ids = args.only or sorted(d.name for d in (args.work / "scans").iterdir()
                              if (d / "landmarks.json").exists() and (args.synth / "truth" / f"{d.name}.npz").exists())
    on = RegisterConfig(kind="body")
    off = dataclasses.replace(on, hands=dataclasses.replace(on.hands, enabled=False))
    cols = ("mean", "p95", "body", "hand.L", "hand.R")
    print("| scan | " + " | ".join(f"{c} mm" for c in cols) + " | finger err deg (true) | CPU s |")
    print("|---|" + "---|" * (len(cols) + 2))
    rows = {"posed": [], "A-pose": []}
    for sid in ids:
        scan_dir = args.work / "scans" / sid
        scan, record = load_recorded_scan(next((args.synth / "scans").glob(sid + ".*")), scan_dir, None, None, None)
        if record is not None and record.kind != "body":
            continue
        lm = read_landmarks_json(scan_dir / "landmarks.json", scan.frame)
        truth = np.load(args.synth / "truth" / f"{sid}.npz")
        pair = []
        for cfg in (off, on):
            c0 = time.process_time()
            res = register_scan(scan.verts, scan.faces, scan.normals, lm, t, cfg, kind="body")
            row = errors(t, scan.frame.to_file(res.verts), res.params["pose"], truth)
            row["cpu_s"] = time.process_time() - c0
            pair.append(row)
        rows["posed" if "-t" in sid else "A-pose"].append(pair)
        b, a = pair
        print(f"| {sid} | " + " | ".join(f"{b[c]:.2f} -> {a[c]:.2f}" for c in cols)
              + f" | {b['finger_deg']:.1f} -> {a['finger_deg']:.1f} ({a['true_deg']:.1f}) | {b['cpu_s']:.1f} -> {a['cpu_s']:.1f} |",
              flush=True)
    for name, pairs in rows.items():
        if pairs:
            m = lambda k, i: np.mean([p[i][k] for p in pairs])  # noqa: E731
            print(f"| {name} mean ({len(pairs)}) | " + " | ".join(f"{m(c, 0):.2f} -> {m(c, 1):.2f}" for c in cols)
                  + f" | {m('finger_deg', 0):.1f} -> {m('finger_deg', 1):.1f} | {m('cpu_s', 0):.1f} -> {m('cpu_s', 1):.1f} |")


if __name__ == "__main__":
    main()
