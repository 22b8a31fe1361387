"""The end of training (VAE fits + save) by subject batch against the previous one-task finish:
peak RSS and wall time in one process, 1 thread, on synthetic subject-batch states.

For S subjects (5 scans each, every scan face-seen), subject batches of 7 subjects (35 scans)
get synthetic training states at ``--resolution`` (rest shapes: the template's mean + its 32
shape directions + 64 random directions decaying from 3 mm to 0.03 mm + 0.2 mm noise; face
offsets: the 52 blendshapes + 0.2 mm noise). Each measurement is a fresh process that builds
the model, then runs one finish:

- ``batched``: ``model_schedule.submit_vae_fit`` for both VAEs + the save, without a client
  (every task in this process, one batch in memory at a time: what ``train --inline`` runs);
- ``one task`` (the peer: the previous ``_finish_task``): every batch's rest shapes and
  expressions gathered into one tensor, ``torch.linalg.svd`` of [x; sqrt(w) P] per VAE, the
  coefficients, Adam, the error, and ``training_shapes`` saved from the whole tensor.

Both train the VAEs for ``--vae-steps`` Adam steps (default 20, not the 600 of training: Adam
on the gathered coefficients is the same in both and its cost is the same). Prints peak RSS
(ru_maxrss), RSS before the finish, and the finish's wall time.

    .venv/bin/python bench/vae_finish.py --subjects 400 2000

``--adam`` measures Adam on the gathered coefficients alone (``train.train_vae``, the one
serial task of the end of training whose cost grows with the rows), full batch against
minibatches of ``TrainConfig.vae_batch`` rows, in this process on 1 thread:

- CPU seconds per 600 steps of GHUM's shape VAE (128 coefficients, hidden 256, latent 64) on
  random coefficients at 1,000 to 60,000 rows (``--adam-steps`` steps timed, scaled to 600);
- the error each reaches in 600 steps on rows drawn from a curved 2-d manifold (a linear map
  of z and its quadratic terms, 100 vertices; the test's data), against the PCA start.

    .venv/bin/python bench/vae_finish.py --adam
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCANS_PER_SUBJECT = 5
SUBJECTS_PER_BATCH = 7


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def make_states(base: Path, n_subjects: int, resolution: str, seed: int = 0):
    """Synthetic subject-batch states under ``base`` and their Plan (written once)."""
    import numpy as np
    import torch

    from ghum_pipe.model.config import TrainConfig, ghum_config, ghuml_config
    from ghum_pipe.model.ghum import template_for
    from ghum_pipe.model.store import write_shard_state
    from ghum_pipe.model.train import model_from_state
    from ghum_pipe.pipelines.model_schedule import Plan, Shard

    mc = ghum_config() if resolution == "full" else ghuml_config()
    cfg = TrainConfig(model=mc)
    model = model_from_state(mc, None)
    t = template_for(resolution, mc.top_k)
    V, face = model.n_verts, model.face_index.numpy()
    shards = []
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((64, V * 3)).astype(np.float32) / np.sqrt(V * 3)
    extra_scale = np.logspace(np.log10(3e-3), np.log10(3e-5), 64).astype(np.float32) * np.sqrt(V)
    basis = t.shape_basis.reshape(t.shape_basis.shape[0], -1)
    ebasis = t.expression_basis[:, face].reshape(t.expression_basis.shape[0], -1)
    done = (base / "done.json").is_file()
    for k, lo in enumerate(range(0, n_subjects, SUBJECTS_PER_BATCH)):
        subj = [f"s{i:06d}" for i in range(lo, min(n_subjects, lo + SUBJECTS_PER_BATCH))]
        ids = tuple(f"{s}_t{j}" for s in subj for j in range(SCANS_PER_SUBJECT))
        path = base / f"batch_{k:05d}"
        shards.append(Shard(k, ids, tuple(i.split("_")[0] for i in ids), str(path)))
        if done:
            continue
        S, n = len(subj), len(ids)
        rest = (model.mean_rest.numpy().reshape(1, -1) + rng.standard_normal((S, 32)) @ basis
                + (rng.standard_normal((S, 64)) * extra_scale) @ extra
                + 2e-4 * rng.standard_normal((S, V * 3))).astype(np.float32).reshape(S, V, 3)
        expr = (rng.uniform(0, 0.5, (n, ebasis.shape[0])) @ ebasis
                + 2e-4 * rng.standard_normal((n, ebasis.shape[1]))).astype(np.float32).reshape(n, len(face), 3)
        write_shard_state(path, 512, rest=rest, expression=expr, face_seen=np.ones(n, dtype=bool))
    if not done:
        (base / "done.json").write_text("{}")
    plan = Plan("", resolution, V, tuple(shards), 512, len(shards),
                tuple((lo, min(V, lo + 512)) for lo in range(0, V, 512)))
    return plan, cfg, torch


def one_task_finish(plan, cfg, model, out: Path) -> dict:
    """The previous finish: everything gathered, exact SVDs, whole-tensor save."""
    import torch
    from safetensors.torch import save_file

    from ghum_pipe.model.store import read_shard_state
    from ghum_pipe.model.train import (keep_better_vae, train_vae, vae_coefficients_and_error, vae_error_sums,
                                       vae_prior, vae_seed)

    rest, expr = [], []
    for shard in plan.shards:
        a = read_shard_state(shard.path, ("rest", "expression", "face_seen"))
        rest.append(torch.as_tensor(a["rest"]))
        expr.append(torch.as_tensor(a["expression"][a["face_seen"]]))
    rest, expr = torch.cat(rest), torch.cat(expr)
    out_mm = {}
    for which, x in (("shape", (rest - model.mean_rest).reshape(rest.shape[0], -1)),
                     ("expression", expr.reshape(expr.shape[0], -1))):
        vae = getattr(model, f"{which}_vae")
        prior, w = vae_prior(model, which)
        rows = torch.cat([x, prior * w**0.5])
        _, s, vt = torch.linalg.svd(rows, full_matrices=False)  # float32, as before
        vae.set_pca(vt, s, x.shape[0], w)
        start = {k: v.detach().clone() for k, v in vae.state_dict().items()}
        c, *start_sums = vae_coefficients_and_error(vae, x)
        train_vae(vae, c, cfg.vae_steps, cfg.kl_weight, vae_seed(cfg, which))
        out_mm[which] = keep_better_vae(vae, start, [start_sums], [vae_error_sums(vae, x)])
    model.save(out, extra={})
    save_file({"rest": rest.contiguous()}, str(out / "training_shapes.safetensors"))
    return out_mm


def batched_finish(plan, cfg, model, out: Path) -> dict:
    from ghum_pipe.pipelines import model_schedule as ms

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    submit = ms.inline_submit  # no client: every task here, in order
    shape = ms.submit_vae_fit(submit, ms._Done, plan, cfg, "shape", sd, [])
    expression = ms.submit_vae_fit(submit, ms._Done, plan, cfg, "expression", sd, [])
    s = ms._finish_task(plan, ("s",), (), cfg, sd, str(out), "", time.time(), [], shape.result(), expression.result())
    return dict(shape=s["shape_vae_train_mm"], expression=s["expression_vae_train_mm"])


def measure(args) -> None:
    import dataclasses

    import torch

    torch.set_num_threads(1)
    base = args.base / f"{args.resolution}_{args.subjects[0]}"
    plan, cfg, _ = make_states(base, args.subjects[0], args.resolution)
    cfg = dataclasses.replace(cfg, vae_steps=args.vae_steps)
    from ghum_pipe.model.train import model_from_state

    model = model_from_state(cfg.model, None)
    before = _rss_gb()
    t0 = time.time()
    out = base / f"model_{args.mode}"
    out.mkdir(exist_ok=True)
    mm = (one_task_finish if args.mode == "one" else batched_finish)(plan, cfg, model, out)
    wall = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    n_scans = sum(len(s.scan_ids) for s in plan.shards)
    print(json.dumps(dict(mode=args.mode, subjects=args.subjects[0], rows_expression=n_scans,
                          before_gb=round(before, 2), peak_gb=round(peak, 2), wall_s=round(wall, 1),
                          mm={k: round(v, 3) for k, v in mm.items()})))


def adam(args) -> None:
    import torch

    from ghum_pipe.model.config import TrainConfig, ghum_config
    from ghum_pipe.model.networks import VAE
    from ghum_pipe.model.train import error_mm, train_vae, vae_coefficients_and_error, vae_error_sums

    torch.set_num_threads(1)
    mc, B = ghum_config(), TrainConfig().vae_batch
    print(f"Adam on the coefficients, GHUM's shape VAE (latent {mc.shape_latent}, hidden {mc.hidden}), 1 thread, "
          f"CPU s per 600 steps ({args.adam_steps} timed)\n")
    print(f"| rows | full batch s | minibatches of {B} rows s | full / minibatch |\n|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    train_vae(VAE(3, mc.shape_latent, mc.hidden), torch.randn(256, 128), 5, 1e-3, 0)  # warm-up, not timed
    for n in args.adam_rows:
        c = torch.randn(n, 128, generator=g)
        t = []
        for rows in (n, B):
            vae = VAE(3, mc.shape_latent, mc.hidden)
            t0 = time.process_time()
            train_vae(vae, c, args.adam_steps, 1e-3, 0, rows)
            t.append((time.process_time() - t0) * 600 / args.adam_steps)
        print(f"| {n} | {t[0]:.1f} | {t[1]:.1f} | x{t[0] / t[1]:.2f} |", flush=True)
    print("\nError in 600 steps on a curved 2-d manifold (100 vertices, latent 2, hidden 64), mean vertex mm\n")
    print("| rows | Adam rows per step | PCA start mm | trained mm | trained / full batch | CPU s |\n|---|---|---|---|---|---|")
    for n, batches in ((2_000, (2_000, 1_024)), (16_000, (16_000, B))):
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
        quad = torch.stack([z[:, 0] ** 2 - 1, z[:, 1] ** 2 - 1, z[:, 0] * z[:, 1]], 1)
        g2 = torch.Generator().manual_seed(1)
        x = z @ (torch.randn(2, 300, generator=g2) * 0.01) + quad @ (torch.randn(3, 300, generator=g2) * 0.005)
        full = None
        for rows in batches:
            vae = VAE(300, 2, hidden=64, max_basis=16)
            vae.init_pca(x)
            start = error_mm([vae_error_sums(vae, x)])
            t0 = time.process_time()
            train_vae(vae, vae_coefficients_and_error(vae, x)[0], 600, 1e-3, 0, rows)
            sec = time.process_time() - t0
            end = error_mm([vae_error_sums(vae, x)])
            full = end if full is None else full
            print(f"| {n} | {rows} | {start:.2f} | {end:.2f} | x{end / full:.2f} | {sec:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adam", action="store_true", help="Measure Adam on the coefficients alone (see above).")
    ap.add_argument("--adam-rows", type=int, nargs="+", default=[1_000, 4_096, 16_000, 60_000])
    ap.add_argument("--adam-steps", type=int, default=20)
    ap.add_argument("--base", type=Path, default=Path("/tmp/ghum-vae-finish"))
    ap.add_argument("--subjects", type=int, nargs="+", default=[400, 2000])
    ap.add_argument("--resolution", default="full", choices=["full", "low"])
    ap.add_argument("--vae-steps", type=int, default=20)
    ap.add_argument("--modes", nargs="+", default=["batched", "one"], choices=["batched", "one"])
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return measure(args)
    if args.adam:
        return adam(args)
    rows = []
    for n in args.subjects:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--subjects", str(n), "--base", str(args.base),
                   "--resolution", args.resolution, "--vae-steps", str(args.vae_steps)]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                print(r.stderr[-3000:])
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\n{args.resolution} resolution, 1 thread, VAEs trained {args.vae_steps} Adam steps\n")
    print("| subjects | scans (expression rows) | finish | RSS before GB | peak RSS GB | peak - before GB | wall s "
          "| shape / expression VAE mm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "by subject batch" if r["mode"] == "batched" else "one task (previous)"
        print(f"| {r['subjects']} | {r['rows_expression']} | {name} | {r['before_gb']:.2f} | {r['peak_gb']:.2f} | "
              f"{r['peak_gb'] - r['before_gb']:.2f} | {r['wall_s']:.0f} | {r['mm']['shape']:.2f} / "
              f"{r['mm']['expression']:.2f} |")


if __name__ == "__main__":
    main()
