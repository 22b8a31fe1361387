"""Registration settings tried against the truth: the body scans of landmarked work dirs, each
registered again with one variant of ``RegisterConfig``, scored against ``ghum-pipe synth``'s truth.

    ghum-pipe synth D23 --count 8 --seed 23                         # people outside the template
    ghum-pipe synth D21 --count 6 --seed 21 --population template   # inside it
    ghum-pipe synth D22 --count 6 --seed 22 --population template --posed
    ghum-pipe landmark D23/scans --work W23    (likewise W21, W22)
    .venv/bin/python bench/register_variants.py W23 W21 W22 --variants base lm02 shape05 icpshape0

The landmarks are read from each W (real MediaPipe), so every variant sees the same ones. Per
variant and per synth seed it prints the mean per-vertex error to the truth (surface vertices,
mm), the mean of the scans' p95, how many scans have p95 > 10 mm, the worst p95, the mean
vertical error (registration - truth, mm: a body slid down its own surface reads negative)
and seconds per scan (2 processes, 1 torch thread each). The variants (``VARIANTS``):
- ``base``: today's settings;
- ``lm02`` / ``lm05``: the skeleton fit's landmarks weigh 0.2 / 0.5 in its ICP phase (0.05);
- ``shape05``: the shape prior 10x (0.005 -> 0.05);
- ``icpshape0`` / ``icpshape8``: the shape coefficients frozen after the landmark phase /
  all but the first 8 (an experiment: a gradient hook, not a setting of the package).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def _schedule(cfg, **kw):
    sk = cfg.skeleton
    return dataclasses.replace(cfg, skeleton=dataclasses.replace(sk, schedule=dataclasses.replace(sk.schedule, **kw)))


def _priors(cfg, **kw):
    sk = cfg.skeleton
    return dataclasses.replace(cfg, skeleton=dataclasses.replace(sk, priors=dataclasses.replace(sk.priors, **kw)))


def _freeze_shape_after_landmarks(keep: int):
    """Patch the skeleton fit (this process only) so that in its ICP phase only the first
    ``keep`` shape coefficients move (the shape is the last of the fit's variables)."""
    import torch

    from ghum_pipe.register import skeleton as sk

    orig = sk.landmark_icp_fit

    def fit(template, forward, priors, variables, lm, target, pool, schedule, n_shape, rng, device, dt, seed=0,
            after_landmarks=None):
        shape = variables[-1].tensor

        def after(verts):
            if after_landmarks is not None:
                after_landmarks(verts)
            mask = torch.zeros_like(shape)
            mask[:, :keep] = 1
            shape.register_hook(lambda g: g * mask)
        return orig(template, forward, priors, variables, lm, target, pool, schedule, n_shape, rng, device, dt, seed,
                    after)
    sk.landmark_icp_fit = fit


def _frozen(keep):
    def variant(cfg):
        _freeze_shape_after_landmarks(keep)
        return cfg
    return variant


VARIANTS = {
    "base": lambda cfg: cfg,
    "lm02": lambda cfg: _schedule(cfg, icp_landmark_scale=0.2),
    "lm05": lambda cfg: _schedule(cfg, icp_landmark_scale=0.5),
    "shape05": lambda cfg: _priors(cfg, shape=0.05),
    "icpshape0": _frozen(0),
    "icpshape8": _frozen(8),
}


def register_one(job: tuple[str, str, str]) -> dict:
    name, scan_path, scan_dir = job
    import torch

    torch.set_num_threads(1)
    from ghum_pipe.io.scan_record import load_recorded_scan
    from ghum_pipe.register.evaluate import surface_error_mm
    from ghum_pipe.register.stage import RegisterConfig, read_landmarks_json, register_scan
    from ghum_pipe.template import load_template

    t = load_template()
    scan, record = load_recorded_scan(scan_path, scan_dir, None, None, None)
    lm = read_landmarks_json(Path(scan_dir) / "landmarks.json", scan.frame)
    cfg = VARIANTS[name](RegisterConfig())
    sid = Path(scan_path).stem
    t0 = time.perf_counter()
    try:
        res = register_scan(scan.verts, scan.faces, scan.normals, lm, t, cfg, path=scan_path, kind=record.kind)
    except Exception as e:  # noqa: BLE001 - a refusal is a row
        return dict(id=sid, error=str(e).splitlines()[0])
    sec = time.perf_counter() - t0
    truth = scan.frame.to_internal(np.load(Path(scan_path).parent.parent / "truth" / f"{sid}.npz")["verts"])
    err, p95 = surface_error_mm(t, res.verts, truth)
    dz = (res.verts - truth)[t.masks["surface"], 2] * 1e3
    return dict(id=sid, err=err, p95=p95, dz=float(dz.mean()), sec=sec)


def jobs_of(works: list[Path], name: str) -> list[tuple[str, str, str]]:
    """Body scans of each W with landmarks and a synth truth beside the scan."""
    out = []
    for w in works:
        for d in sorted((w / "scans").iterdir()):
            rec = d / "scan.json"
            if not (d / "landmarks.json").exists() or not rec.exists():
                continue
            path = Path(json.loads(rec.read_text())["path"])
            if "-head" in d.name or "-hand" in d.name or not (path.parent.parent / "truth" / f"{path.stem}.npz").exists():
                continue
            out.append((name, str(path), str(d)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+")
    ap.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    table = []
    for name in args.variants:
        # a fresh pool per variant: the icpshape variants patch the fit in the workers' processes
        with Pool(args.processes, maxtasksperchild=1) as pool:
            rows = pool.map(register_one, jobs_of(args.works, name), chunksize=1)
        for r in rows:
            if "error" in r:
                print(f"{name} {r['id']}: refused: {r['error']}")
        ok = [r for r in rows if "err" in r]
        for seed in sorted({r["id"].split("-")[0] for r in ok}):
            g = [r for r in ok if r["id"].startswith(seed + "-")]
            table.append((name, seed, len(g), np.mean([r["err"] for r in g]), np.mean([r["p95"] for r in g]),
                          sum(r["p95"] > 10 for r in g), max(r["p95"] for r in g), np.mean([r["dz"] for r in g]),
                          np.mean([r["sec"] for r in g])))
    print("| variant | scans | n | mean mm | mean p95 mm | p95 > 10 mm | worst p95 mm | dz mm | s/scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seed, n, err, p95, bad, worst, dz, sec in table:
        print(f"| {name} | {seed} | {n} | {err:.2f} | {p95:.2f} | {bad} | {worst:.1f} | {dz:+.1f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
