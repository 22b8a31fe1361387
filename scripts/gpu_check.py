"""One-shot check of the CUDA paths on a GPU machine (<= 5 minutes): do they agree with the CPU?

    python scripts/gpu_check.py [--out DIR] [--scans 2]

1. registers ``--scans`` synthetic A-pose scans on the CPU and on CUDA (the same landmarks)
   and compares the registrations vertex by vertex (mean <= 0.5 mm);
2. finds the landmarks of the first scan with the open3d and the PyTorch3D renderer and
   compares them (mean <= 5 mm over the landmarks both found, and >= 95 % found by both: the
   stage's own error to the truth is ~13 mm, so two renderers of one mesh must agree well below it);
3. runs GHUM and GHUML (same random weights) forward on both devices (max <= 0.01 mm: float32
   rounding on metre coordinates is ~1e-4 mm).
Prints one table with the timings of both devices. Exit code: 0 all agree, 1 a disagreement
or a path that could not run (e.g. pytorch3d missing), 3 no CUDA device here (nothing checked).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_DISAGREE = 1
EXIT_NO_CUDA = 3
REGISTER_MEAN_MM = 0.5
LANDMARK_MEAN_MM = 5.0
LANDMARK_SHARED = 0.95
FORWARD_MAX_MM = 0.01


def timed(fn, *args, **kw):
    import torch

    t0 = time.perf_counter()
    out = fn(*args, **kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_register(scans, out):
    import numpy as np

    from ghum_pipe.landmarks.stage import LandmarkConfig, run_landmarks
    from ghum_pipe.register.stage import RegisterConfig, run_registration

    rows = []
    for path in scans:
        lm_dir = out / "landmarks" / path.stem
        run_landmarks(path, lm_dir, LandmarkConfig(contact_sheet=False))
        verts, seconds = {}, {}
        for device in ("cpu", "cuda"):
            d = out / device / path.stem
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(lm_dir / "landmarks.json", d / "landmarks.json")
            _, seconds[device] = timed(run_registration, path, d, RegisterConfig(device=device))
            verts[device] = np.load(d / "params.npz")["verts_internal"]
        dist_mm = np.linalg.norm(verts["cpu"] - verts["cuda"], axis=1) * 1e3
        rows.append((f"register {path.stem}", seconds["cpu"], seconds["cuda"],
                     f"mean {dist_mm.mean():.3f} mm, max {dist_mm.max():.2f} mm", f"mean <= {REGISTER_MEAN_MM} mm",
                     dist_mm.mean() <= REGISTER_MEAN_MM))
    return rows


def check_render(scan, out):
    import numpy as np

    from ghum_pipe.io import load_scan
    from ghum_pipe.landmarks.renderers import pytorch3d_unavailable
    from ghum_pipe.landmarks.stage import LandmarkConfig, run_landmarks
    from ghum_pipe.register.stage import read_landmarks_json

    why = pytorch3d_unavailable()
    if why:
        return [("render open3d vs pytorch3d", float("nan"), float("nan"), f"cannot run: {why}", "runs", False)]
    frame = load_scan(scan).frame
    found, seconds = {}, {}
    for renderer in ("open3d", "pytorch3d"):
        d = out / f"render-{renderer}"
        _, seconds[renderer] = timed(run_landmarks, scan, d, LandmarkConfig(renderer=renderer, contact_sheet=False))
        lm = read_landmarks_json(d / "landmarks.json", frame)
        found[renderer] = dict(zip(lm["names"], np.asarray(lm["points"])))
    a, b = found["open3d"], found["pytorch3d"]
    shared = sorted(set(a) & set(b))
    share = len(shared) / max(len(set(a) | set(b)), 1)
    dist_mm = np.array([np.linalg.norm(a[n] - b[n]) for n in shared]) * 1e3 if shared else np.array([np.inf])
    return [("landmarks open3d | pytorch3d", seconds["open3d"], seconds["pytorch3d"],
             f"mean {dist_mm.mean():.2f} mm over {len(shared)} ({100 * share:.0f} % shared)",
             f"mean <= {LANDMARK_MEAN_MM} mm, >= {100 * LANDMARK_SHARED:.0f} %",
             dist_mm.mean() <= LANDMARK_MEAN_MM and share >= LANDMARK_SHARED)]


def check_forward():
    import torch

    from ghum_pipe.model import GHUM
    from ghum_pipe.model.config import ModelConfig
    from ghum_pipe.model.ghum import template_for

    rows = []
    for name, resolution in (("GHUM", "full"), ("GHUML", "low")):
        torch.manual_seed(0)
        config = ModelConfig(resolution=resolution)
        cpu = GHUM(config, template_for(resolution)).eval()
        cuda = copy.deepcopy(cpu).to("cuda")
        g = torch.Generator().manual_seed(1)
        pose = torch.randn(16, cpu.n_joints, 3, generator=g) * 0.2
        zb = torch.randn(16, config.shape_latent, generator=g)
        zf = torch.randn(16, config.expression_latent, generator=g)
        with torch.no_grad():
            (v_cpu, _), t_cpu = timed(cpu, pose, zb, zf)
            cuda(pose.cuda(), zb.cuda(), zf.cuda())  # warm-up: CUDA kernels load on first use
            (v_cuda, _), t_cuda = timed(cuda, pose.cuda(), zb.cuda(), zf.cuda())
        diff_mm = float((v_cpu - v_cuda.cpu()).abs().max()) * 1e3
        rows.append((f"{name} forward, batch 16", t_cpu, t_cuda, f"max {diff_mm:.4f} mm", f"max <= {FORWARD_MAX_MM} mm",
                     diff_mm <= FORWARD_MAX_MM))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--scans", type=int, default=2)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
              "nothing checked", file=sys.stderr)
        return EXIT_NO_CUDA
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.perf_counter()
    if not (out / "synth" / "scans").exists():
        subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "synth", str(out / "synth"), "-n", str(args.scans),
                        "--seed", "11", "--units", "mm"], check=True)
    scans = sorted((out / "synth" / "scans").iterdir())[: args.scans]
    rows = check_register(scans, out) + check_render(scans[0], out) + check_forward()
    total = time.perf_counter() - t0
    print(f"\n{'check':<32} {'cpu s':>7} {'cuda s':>7}  {'agreement':<40} {'bound':<28} ok")
    for name, t_cpu, t_cuda, agreement, bound, ok in rows:
        print(f"{name:<32} {t_cpu:>7.2f} {t_cuda:>7.2f}  {agreement:<40} {bound:<28} {'yes' if ok else 'NO'}")
    print(f"total {total:.0f} s on {torch.cuda.get_device_name(0)} (budget 300 s)")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if all(r[-1] for r in rows) else EXIT_DISAGREE


if __name__ == "__main__":
    sys.exit(main())
