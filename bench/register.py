"""Registration benchmark: ghum-pipe vs trimesh's nricp_amberg on synthetic scans with truth.

    .venv/bin/python bench/register.py OUT [--apose 2 --posed 3 --cloud 2 --other 1] [--no-peer]

Makes (or reuses) ``ghum-pipe synth`` scans in OUT (A-pose: mm; posed: mixed units / up axes;
cloud: posed raw scanner point clouds (.pcd, m, +Z up); all with the scanner's holes and noise;
``--other``: the other-body-model mannequin, no vertex truth), runs the real landmark stage,
then per scan:
- ghum-pipe: ``run_registration`` (writes OUT/work/<id>/registration.ply etc.);
- peer: ``trimesh.registration.nricp_amberg`` from the same similarity init (Umeyama on the same
  shoulder/hip landmarks) with the same landmarks (each template landmark's heaviest vertex).
Prints one table: per-vertex error to the truth vertices (mean / p95, mm), correspondence
("parts": the share of surface vertices whose nearest truth vertex belongs to the same body
part, the part being the joint that skins a vertex most: ~60 parts; different people in
different poses, so this says the same template vertex lands on the same body part),
scan->registration mean (mm), seconds (landmarks, register), and the peer's numbers with
ratios; then a summary per kind. Timings are wall seconds of one process with
``--threads`` torch threads (default 2), the peer in the same process right after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def synth(out: Path, n: int, seed: int, *flags: str) -> list[Path]:
    if n <= 0:
        return []
    # the template's own population: the README's numbers; people outside it: bench/model_e2e.py
    cmd = [sys.executable, "-m", "ghum_pipe.cli", "synth", str(out), "-n", str(n), "--seed", str(seed), *flags]
    if "--other-model" not in flags:
        cmd += ["--population", "template"]
    scans = lambda: sorted(p for p in (out / "scans").glob("*") if p.suffix != ".csv")  # noqa: E731 (synth's subjects.csv)
    if not (out / "scans").exists() or len(scans()) < n:
        subprocess.run(cmd, check=True)
    return scans()[:n]


def scan_to_mesh_mm(points_m, verts_m, faces):
    from ghum_pipe.register.backend import MeshDistance

    return float(MeshDistance(verts_m, faces).closest(points_m)["dist"].mean() * 1e3)


def run_peer(template, scan, lm, tl):
    """trimesh nricp_amberg from the same similarity init and landmarks (internal metres)."""
    import trimesh
    from trimesh.registration import nricp_amberg

    from ghum_pipe.register.landmark_pairs import match_landmarks
    from ghum_pipe.register.similarity import umeyama
    from ghum_pipe.register.region import TORSO_LANDMARKS

    pairs = match_landmarks(lm["names"], lm["points"], lm["confidence"], tl, 0.3)
    rest_lm = pairs.template_points(template.rest_verts)
    torso = np.isin(pairs.names, TORSO_LANDMARKS)
    sim = umeyama(rest_lm[torso], pairs.targets[torso], pairs.confidence[torso])
    src = trimesh.Trimesh(sim.apply(template.rest_verts), template.faces, process=False)
    heaviest = pairs.vertex_ids[np.arange(len(pairs)), np.argmax(pairs.weights, axis=1)]
    body = np.array([k != "face" for k in pairs.kinds])  # nricp slows with 500 landmarks; keep body+hands
    # use_faces=False: trimesh's closest point on a mesh needs rtree, which ghum-pipe does not
    # install; nricp then matches to the nearest scan vertex (scans here have ~1-2 mm spacing)
    target = trimesh.Trimesh(scan.verts, scan.faces if scan.faces is not None else np.zeros((0, 3), int), process=False)
    t0 = time.perf_counter()
    verts = nricp_amberg(src, target, source_landmarks=heaviest[body], target_positions=pairs.targets[body],
                         use_faces=False)
    return np.asarray(verts), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--apose", type=int, default=2)
    ap.add_argument("--posed", type=int, default=3)
    ap.add_argument("--cloud", type=int, default=2)
    ap.add_argument("--other", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ghum_pipe.io import load_scan
    from ghum_pipe.landmarks.stage import run_landmarks
    from ghum_pipe.register.evaluate import part_agreement, surface_error_mm
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set
    from ghum_pipe.register.stage import RegisterConfig, read_landmarks_json, run_registration
    from ghum_pipe.template import load_template
    import trimesh

    template = load_template()
    tl = load_template_landmark_set(template)
    cases = [("A-pose", p) for p in synth(args.out / "apose", args.apose, 11, "--units", "mm")]
    cases += [("posed", p) for p in synth(args.out / "posed", args.posed, 12, "--posed", "--units", "mixed", "--up", "mixed")]
    cases += [("cloud", p) for p in synth(args.out / "cloud", args.cloud, 14, "--posed", "--format", "pcd")]
    cases += [("other", p) for p in synth(args.out / "other", args.other, 13, "--other-model")]
    rows = []
    for kind, path in cases:
        scan_dir = args.out / "work" / f"{path.parent.parent.name}-{path.stem}"
        t0 = time.perf_counter()
        run_landmarks(path, scan_dir)
        t_lm = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            m = run_registration(path, scan_dir, RegisterConfig())
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append(dict(kind=kind, id=path.stem, error=str(e)))
            continue
        t_reg = time.perf_counter() - t0
        scan = load_scan(path)
        reg_m = scan.frame.to_internal(trimesh.load(scan_dir / "registration.ply", process=False).vertices)
        truth_path = path.parent.parent / "truth" / f"{path.stem}.npz"
        truth = None
        if kind != "other" and truth_path.exists():
            truth = scan.frame.to_internal(np.load(truth_path)["verts"])
        row = dict(kind=kind, id=path.stem, t_lm=t_lm, t_reg=t_reg, s2r=m["scan_to_reg_mean_mm"])
        if truth is not None:
            row["err"], row["p95"] = surface_error_mm(template, reg_m, truth)
            row["parts"] = 100 * part_agreement(template, reg_m, truth)
        if not args.no_peer:
            lm = read_landmarks_json(scan_dir / "landmarks.json", scan.frame)
            pv, t_peer = run_peer(template, scan, lm, tl)
            surf_faces = template.faces[template.masks["surface"][template.faces].all(1)]
            pts = scan.verts if len(scan.verts) <= 60000 else scan.verts[np.random.default_rng(0).choice(len(scan.verts), 60000, replace=False)]
            row.update(t_peer=t_peer, s2r_peer=scan_to_mesh_mm(pts, pv, surf_faces))
            if truth is not None:
                row["err_peer"], row["p95_peer"] = surface_error_mm(template, pv, truth)
                row["parts_peer"] = 100 * part_agreement(template, pv, truth)
        rows.append(row)
        print(row, flush=True)
    print_table(rows)


def print_table(rows):
    f = lambda r, k, fmt="{:.2f}": fmt.format(r[k]) if k in r else "-"  # noqa: E731
    ratio = lambda r, a, b: f"{r[a] / r[b]:.2f}" if a in r and b in r and r[b] > 0 else "-"  # noqa: E731
    head = ("kind", "scan", "err mm", "p95 mm", "parts %", "s2r mm", "lm s", "reg s", "lm+reg s",
            "| nricp err", "p95", "parts %", "s2r", "s", "| err ratio", "time ratio")
    print("\n" + " ".join(f"{h:>10}" for h in head))
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:>10} {r['id']:>10}  FAILED: {r['error']}")
            continue
        r["t_total"] = r["t_lm"] + r["t_reg"]
        cells = (r["kind"], r["id"], f(r, "err"), f(r, "p95"), f(r, "parts", "{:.1f}"), f(r, "s2r"),
                 f(r, "t_lm", "{:.1f}"), f(r, "t_reg", "{:.1f}"), f(r, "t_total", "{:.1f}"), f(r, "err_peer"),
                 f(r, "p95_peer"), f(r, "parts_peer", "{:.1f}"), f(r, "s2r_peer"), f(r, "t_peer", "{:.1f}"),
                 ratio(r, "err", "err_peer"), ratio(r, "t_reg", "t_peer"))
        print(" ".join(f"{c:>10}" for c in cells))
    print("\nsummary (means over the scans of a kind; ratios of the means)")
    print(" ".join(f"{h:>10}" for h in head[:1] + ("scans", "failed") + head[2:]))
    ok = [r for r in rows if "error" not in r]
    for kind in dict.fromkeys([r["kind"] for r in rows] + ["all"]):
        sel = [r for r in ok if kind in (r["kind"], "all")]
        failed = sum(1 for r in rows if "error" in r and kind in (r["kind"], "all"))
        if not sel:
            continue
        keys = ("err", "p95", "parts", "s2r", "t_lm", "t_reg", "t_total", "err_peer", "p95_peer", "parts_peer",
                "s2r_peer", "t_peer")
        m = {k: float(np.mean([r[k] for r in sel if k in r])) for k in keys if any(k in r for r in sel)}
        cells = (kind, str(len(sel)), str(failed), f(m, "err"), f(m, "p95"), f(m, "parts", "{:.1f}"), f(m, "s2r"),
                 f(m, "t_lm", "{:.1f}"), f(m, "t_reg", "{:.1f}"), f(m, "t_total", "{:.1f}"), f(m, "err_peer"),
                 f(m, "p95_peer"), f(m, "parts_peer", "{:.1f}"), f(m, "s2r_peer"), f(m, "t_peer", "{:.1f}"),
                 ratio(m, "err", "err_peer"), ratio(m, "t_reg", "t_peer"))
        print(" ".join(f"{c:>10}" for c in cells))
    print("ratios: ghum-pipe / nricp_amberg (< 1 = ghum-pipe better); targets: err <= 5 mm A-pose, <= 8 mm posed, "
          "p95 <= 15 mm, s2r <= 1.0 mm (other model <= 3 mm), lm+reg <= 60 s")


if __name__ == "__main__":
    main()
