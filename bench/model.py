"""Benchmark GHUM vs GHUML (and the template's own LBS as the peer): forward speed at batch 1
and 64 on CPU (and CUDA when present), and, with a trained model, the held-out evaluation
(fit errors vs PCA and template baselines, PSD/skinning/joint checks, VAE vs PCA curve).

    .venv/bin/python bench/model.py                       # trains a small demo model first
    .venv/bin/python bench/model.py --model M --work W    # an existing model and work dir
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch


def forward_ms(fn, repeats: int = 7) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def speed_table(models: dict, device: str) -> list[tuple]:
    from ghum_pipe.template import load_template

    t = load_template()
    rows = []
    for batch in (1, 64):
        ms = {}
        for name, m in models.items():
            m = m.to(device)
            pose = torch.randn(batch, m.n_joints, 3, device=device) * 0.2
            zb = torch.randn(batch, m.config.shape_latent, device=device)
            zf = torch.randn(batch, m.config.expression_latent, device=device)
            ms[name] = forward_ms(lambda: m(pose, zb, zf))
        pose = torch.randn(batch, t.n_joints, 3, device=device) * 0.2
        ms["template LBS (peer)"] = forward_ms(lambda: t.pose(torch.randn(batch, 32, device=device), pose))
        for name, v in ms.items():
            rows.append((device, batch, name, v, ms.get("ghum", float("nan")) / v))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from ghum_pipe.model.evaluate import EvalConfig, load_models, summarise
    from ghum_pipe.model.report import run_evaluation

    tmp = None
    if args.model is None:
        from ghum_pipe.model.config import TrainConfig, ghum_config, ghuml_config
        from ghum_pipe.pipelines.model_schedule import train_models
        from ghum_pipe.synth.registrations import make_registrations

        tmp = Path(tempfile.mkdtemp(prefix="ghum-bench-"))
        args.work, args.model = tmp / "regs", tmp / "model"
        make_registrations(args.work, args.subjects, seed=0)
        t0 = time.time()
        train_models(args.work, args.model, {"ghum": TrainConfig(model=ghum_config(), rounds=2, pose_iters=5),
                                             "ghuml": TrainConfig(model=ghuml_config(), rounds=2, pose_iters=5)})
        print(f"trained GHUM + GHUML on {args.subjects} synthetic subjects in {time.time() - t0:.0f} s (in-process)")
    models = load_models(args.model)
    print("\nforward pass (median ms; ratio = GHUM time / this time)")
    print(f"{'device':6} {'batch':>5}  {'model':22} {'ms':>9} {'ratio':>7}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dev, batch, name, ms, ratio in speed_table(models, device):
            print(f"{dev:6} {batch:5d}  {name:22} {ms:9.2f} {ratio:7.2f}")
    t0 = time.time()
    results = run_evaluation(args.model, args.work, None, EvalConfig(max_scans=12, fit_iters=120))
    print(f"\nheld-out evaluation ({results['n_scans']} scans, {time.time() - t0:.0f} s); PNGs in {args.model / 'eval'}")
    print(summarise(results))


if __name__ == "__main__":
    main()
