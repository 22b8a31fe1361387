"""Close-up benchmark: head and hand close-up scans registered over their template region.

    .venv/bin/python bench/closeup.py OUT [-n 2] [--no-peer] [--threads 2]

Makes (or reuses) ``ghum-pipe synth OUT/synth -n N --closeups --expressions --units mixed --up
mixed`` (subject 0 in m, +Z up; subject 1 in mm, +Y up; ...), runs the real landmark stage and
``run_registration`` on every close-up (the body scans are left out), then per scan:
- region error: per-vertex distance of the registration to the truth over the region's surface
  vertices (``t.masks[kind] & surface``), mean / p95, mm;
- scan->registration mean distance (mm), seconds (landmarks, register);
- peer: trimesh's ``registration.nricp_amberg`` on the same region (grown by 2 rings) of the
  template, from the same similarity (Umeyama with scale on the region's landmarks: face points,
  or the palm) with the same landmarks (each template landmark's heaviest vertex); ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def synth(out: Path, n: int) -> list[Path]:
    cmd = [sys.executable, "-m", "ghum_pipe.cli", "synth", str(out), "-n", str(n), "--seed", "21", "--closeups",
           "--expressions", "--units", "mixed", "--up", "mixed", "--population", "template"]  # the README's numbers
    if not (out / "scans").exists() or len(list((out / "scans").iterdir())) < 4 * n:
        subprocess.run(cmd, check=True)
    return sorted(p for p in (out / "scans").iterdir() if p.stem.endswith(("-head", "-hand_left", "-hand_right")))


def run_peer(template, scan, lm, tl, kind):
    """trimesh nricp_amberg on the template region from the same kind of similarity init."""
    import trimesh
    from trimesh.registration import nricp_amberg

    from ghum_pipe.register.landmark_pairs import match_landmarks
    from ghum_pipe.register.region import grow, initial_similarity, region_landmarks

    pairs = region_landmarks(match_landmarks(lm["names"], lm["points"], lm["confidence"], tl, 0.3), kind)
    sim, _ = initial_similarity(template, pairs, kind, None)
    sub = grow(template, template.masks[kind], 2) & template.masks["surface"]
    ids = np.flatnonzero(sub)
    local = np.full(template.n_verts, -1)
    local[ids] = np.arange(len(ids))
    faces = local[template.faces[sub[template.faces].all(1)]]
    src = trimesh.Trimesh(sim.apply(template.rest_verts[ids]), faces, process=False)
    heaviest = pairs.vertex_ids[np.arange(len(pairs)), np.argmax(pairs.weights, axis=1)]
    inside = local[heaviest] >= 0
    if kind == "head":  # nricp slows with 478 landmarks: every 4th face point
        inside &= np.arange(len(pairs)) % 4 == 0
    pts = scan.verts[np.random.default_rng(0).choice(len(scan.verts), min(60000, len(scan.verts)), replace=False)]
    # use_faces=False: trimesh's closest point on a mesh needs rtree (not installed); the
    # close-ups have sub-mm vertex spacing, so matching scan vertices loses little
    target = trimesh.Trimesh(pts, np.zeros((0, 3), int), process=False)
    t0 = time.perf_counter()
    v = nricp_amberg(src, target, source_landmarks=local[heaviest[inside]], target_positions=pairs.targets[inside],
                     use_faces=False)
    out = sim.apply(template.rest_verts).copy()
    out[ids] = np.asarray(v)
    return out, time.perf_counter() - t0


def region_error_mm(template, kind, verts_m, truth_m):
    region = template.masks[kind] & template.masks["surface"]
    e = np.linalg.norm(verts_m - truth_m, axis=1)[region] * 1e3
    return float(e.mean()), float(np.percentile(e, 95))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", type=int, default=2, help="subjects (3 close-ups each)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import trimesh

    torch.set_num_threads(args.threads)
    from ghum_pipe.io import load_scan
    from ghum_pipe.io.kinds import kind_from_id
    from ghum_pipe.landmarks.stage import run_landmarks
    from ghum_pipe.register.backend import MeshDistance
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set
    from ghum_pipe.register.stage import RegisterConfig, read_landmarks_json, run_registration
    from ghum_pipe.template import load_template

    template = load_template()
    tl = load_template_landmark_set(template)
    rows = []
    for path in synth(args.out / "synth", args.n):
        kind = kind_from_id(path.stem)
        scan_dir = args.out / "work" / path.stem
        row = dict(kind=kind, id=path.stem)
        try:
            t0 = time.perf_counter()
            run_landmarks(path, scan_dir)
            row["t_lm"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = run_registration(path, scan_dir, RegisterConfig())
            row["t_reg"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append(dict(row, error=str(e)))
            print(rows[-1], flush=True)
            continue
        scan = load_scan(path, kind=kind)
        reg_m = scan.frame.to_internal(trimesh.load(scan_dir / "registration.ply", process=False).vertices)
        truth = scan.frame.to_internal(np.load(path.parent.parent / "truth" / f"{path.stem}.npz")["verts"])
        row["err"], row["p95"] = region_error_mm(template, kind, reg_m, truth)
        row["s2r"] = m["scan_to_reg_mean_mm"]
        row["units"] = scan.frame.units + " " + scan.frame.up
        if not args.no_peer:
            lm = read_landmarks_json(scan_dir / "landmarks.json", scan.frame)
            pv, row["t_peer"] = run_peer(template, scan, lm, tl, kind)
            row["err_peer"], row["p95_peer"] = region_error_mm(template, kind, pv, truth)
            n = min(60000, len(scan.verts))
            pts = scan.verts[np.random.default_rng(0).choice(len(scan.verts), n, replace=False)]
            row["s2r_peer"] = float(MeshDistance(pv, template.faces).closest(pts)["dist"].mean() * 1e3)
        rows.append(row)
        print(row, flush=True)
    print_table(rows)


def print_table(rows):
    f = lambda r, k, fmt="{:.2f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
    ratio = lambda r, a, b: f"{r[a] / r[b]:.2f}" if a in r and b in r and r[b] > 0 else "-"  # noqa: E731
    head = ("kind", "scan", "frame", "err mm", "p95 mm", "s2r mm", "lm s", "reg s",
            "| nricp err", "p95", "s2r", "s", "| err ratio", "time ratio")
    print("\n" + " ".join(f"{h:>12}" for h in head))
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:>12} {r['id']:>12}  FAILED: {r['error']}")
            continue
        cells = (r["kind"], r["id"][-16:], r.get("units", "-"), f(r, "err"), f(r, "p95"), f(r, "s2r"),
                 f(r, "t_lm", "{:.1f}"), f(r, "t_reg", "{:.1f}"), f(r, "err_peer"), f(r, "p95_peer"),
                 f(r, "s2r_peer"), f(r, "t_peer", "{:.1f}"), ratio(r, "err", "err_peer"), ratio(r, "t_reg", "t_peer"))
        print(" ".join(f"{c:>12}" for c in cells))
    print("err: region surface vertices vs truth; ratios: ghum-pipe / nricp_amberg (< 1 = ghum-pipe better; "
          "time ratio compares register alone with nricp alone)")


if __name__ == "__main__":
    main()
