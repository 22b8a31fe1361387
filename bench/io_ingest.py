"""Scan ingest on synthetic scans with ground truth: units/up detection accuracy and speed.

Scans come from ``ghum-pipe synth`` (made once under --out, reused): posed bodies as meshes
and point clouds in m / mm and +Z / +Y up, A-pose, and the primitive mannequin of another
topology (``--other-model``: not the template, so the head-side references have never seen
it). Each scan is read with ``load_scan`` exactly as users run it and compared with
``OUT/truth/<id>.json`` (units, up axis).

Peers, in the same run on the same files:
- speed: the plain file read (``trimesh.load`` for meshes/PLY, numpy for XYZ/PCD through our
  readers), so the ratio shows what detection and checks cost on top of reading;
- head-side accuracy: two simpler cues on the same long axis, (a) more surface in the last 5 %
  of the length at the feet (flat feet vs a skull cap) and (b) negative skewness of the area
  along the axis (thin legs below a bulky torso).

    .venv/bin/python bench/io_ingest.py                  # 2 scans per kind, ~5 min
    .venv/bin/python bench/io_ingest.py --count 4 --out /tmp/io_bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = {  # name: (synth options, seed)
    "posed mesh m/mm +z/+y": (["--posed", "--units", "mixed", "--up", "mixed"], 101),
    "A-pose mesh mm +y": (["--units", "mm", "--up", "y"], 102),
    "posed cloud xyz": (["--posed", "--format", "xyz", "--units", "mixed", "--up", "mixed"], 103),
    "posed cloud pcd": (["--posed", "--format", "pcd", "--units", "mixed", "--up", "mixed"], 104),
    "posed mesh glb": (["--posed", "--format", "glb", "--up", "y"], 105),
    "mannequin (other topology)": (["--other-model", "--units", "mm", "--up", "y"], 106),
}


def make_scans(out: Path, count: int) -> dict[str, Path]:
    dirs = {}
    for i, (kind, (opts, seed)) in enumerate(KINDS.items()):
        d = out / f"kind{i}"
        if not (d / "scans").exists() or len([p for p in (d / "scans").iterdir() if p.suffix != ".csv"]) < count:
            print(f"ghum-pipe synth {d} --count {count} {' '.join(opts)} ...", flush=True)
            subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "synth", str(d), "--count", str(count),
                            "--seed", str(seed), *opts], check=True, stdout=subprocess.DEVNULL)
        dirs[kind] = d
    return dirs


def truth_of(d: Path, scan: Path) -> tuple[str, str]:
    t = json.loads((d / "truth" / f"{scan.stem}.json").read_text())
    return t["units"], "+" + t["up"].lstrip("+")


def peer_read(path: Path) -> float:
    """Seconds for the bare file read."""
    from ghum_pipe.io.formats import read_geometry

    t0 = time.perf_counter()
    if path.suffix in (".ply", ".obj", ".glb", ".stl", ".off"):
        import trimesh

        trimesh.load(str(path), process=False)
    else:
        read_geometry(path)
    return time.perf_counter() - t0


def simple_cues(scan, truth_up: str) -> tuple[bool, bool]:
    """(end-slab cue right, skewness cue right) on the raw file's long axis."""
    from ghum_pipe.io.detect import principal_axes, vertex_weights
    from ghum_pipe.io.formats import read_geometry
    from ghum_pipe.io.frame import AXES

    raw = read_geometry(scan.path)
    v = raw.verts[np.all(np.isfinite(raw.verts), 1)]
    faces = raw.faces if len(v) == len(raw.verts) else None
    w = vertex_weights(v, faces)
    w = w / w.sum()
    axis = principal_axes(v, w).axes[:, 0]
    true_up = np.array(AXES[truth_up])
    axis = axis * np.sign(axis @ true_up)  # read along the true up; a cue is right if it says so
    s = v @ axis
    lo, hi = s.min(), s.max()
    slab = 0.05 * (hi - lo)
    slab_right = w[s <= lo + slab].sum() > w[s >= hi - slab].sum()
    mu = w @ s
    skew = w @ ((s - mu) / np.sqrt(w @ (s - mu) ** 2)) ** 3
    return bool(slab_right), bool(skew < 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ghum_pipe_io_bench"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from ghum_pipe.errors import ScanError
    from ghum_pipe.io import load_scan
    from ghum_pipe.io.upright import reference_profiles

    dirs = make_scans(args.out, args.count)
    t0 = time.perf_counter()
    reference_profiles()
    print(f"one-off per process: loading the shipped upright reference profiles {time.perf_counter() - t0:.3f} s\n")
    rows = []
    for kind, d in dirs.items():
        for path in sorted(p for p in (d / "scans").iterdir() if p.suffix != ".csv"):  # (synth's subjects.csv)
            units, up = truth_of(d, path)
            peer_read(path)  # warm the page cache for both timings
            t_peer = peer_read(path)
            t0 = time.perf_counter()
            try:
                scan = load_scan(path)
            except ScanError as e:
                rows.append((kind, path.name, 0, "ERROR", str(e)[-60:], "", "", "", 0.0, t_peer))
                continue
            t_ours = time.perf_counter() - t0
            slab_ok, skew_ok = simple_cues(scan, up)
            margin = next((n for n in scan.notes if n.startswith("up axis")), "")
            rows.append((kind, path.name, len(scan.verts), f"{scan.frame.units}/{units}",
                         f"{scan.frame.up}/{up}", scan.frame.units == units and scan.frame.up == up,
                         slab_ok, skew_ok, t_ours, t_peer))
    print(f"{'kind':28s} {'scan':18s} {'points':>8s} {'units got/true':>14s} {'up got/true':>12s} "
          f"{'ours':>5s} {'slab':>5s} {'skew':>5s} {'load s':>7s} {'read s':>7s} {'ratio':>6s}")
    for kind, name, n, u, a, ok, slab, skew, t, tp in rows:
        ratio = f"{t / tp:6.1f}" if t and tp else "   -"
        print(f"{kind:28s} {name:18s} {n:8d} {u:>14s} {a:>12s} {str(ok):>5s} {str(slab):>5s} {str(skew):>5s} "
              f"{t:7.2f} {tp:7.2f} {ratio}")
    good = [r for r in rows if r[3] != "ERROR"]
    n = len(rows)
    print(f"\nunits+up right: ours {sum(r[5] for r in good)}/{n}; head side by end-slab cue "
          f"{sum(r[6] for r in good)}/{n}, by skewness {sum(r[7] for r in good)}/{n}")
    if good:
        t = np.array([r[8] for r in good])
        tp = np.array([r[9] for r in good])
        pts = np.array([r[2] for r in good])
        print(f"load_scan: median {np.median(t):.2f} s ({np.median(t / pts * 1e6):.1f} us/point); bare read "
              f"median {np.median(tp):.2f} s; ratio median {np.median(t / tp):.1f}x")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
