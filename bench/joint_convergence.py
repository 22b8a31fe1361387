"""How C's joint step converges: its objective and the planted-truth joint error against L-BFGS
iterations, to choose the stopping tolerance (``TrainConfig.joint_rtol``) from evidence.

Data: tests/test_model_train.py's set (10 subjects x 6 poses, no close-ups, template population;
``--shifts`` plants the joint-centre shifts C must learn). The state is that of round 0 of
``train_inline`` just before C's step (3 shape refreshes, one pose step, one refresh); then
``joints.joint_batch_step`` runs on the first subject batch (``--batch-scans``) with
``--iters`` iterations per pass and no tolerance, and every ``--every`` iterations the table
gets: the objective, its relative decrease over those iterations (what ``joint_rtol`` tests),
the batch's fitted joint centres against the planted truth (mean mm: all joints, the joints the
synthetic data can shift) and their distance to where the pass ends (max mm over subjects and
joints). Then the same step with the tolerance (``--rtol``): iterations, time, joint error,
against the run without it as the peer. The trace reads the step's variables through its
objective's closure (``physical``): a measurement harness, tied to ``joint_batch_step``'s body.

    .venv/bin/python bench/joint_convergence.py --shifts --rtol 1e-4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prepare(work: Path, shifts: bool, batch_scans: int):
    from ghum_pipe.model import GHUM, TrainConfig, ghuml_config
    from ghum_pipe.model.data import load_registrations, subject_batches
    from ghum_pipe.model.state import TrainState
    from ghum_pipe.model.train import init_state, pose_step, refresh_shapes
    from ghum_pipe.synth.registrations import make_registrations

    if not (work / "subjects.csv").exists():
        make_registrations(work, 10, seed=0, poses_per_subject=6, closeups=False, joint_shifts=shifts,
                           population="template")
    cfg = TrainConfig(model=ghuml_config(shape_latent=4, hidden=64), pose_iters=5)
    data = load_registrations(str(work), "low")
    torch.manual_seed(cfg.seed)
    model = GHUM(cfg.model)
    state = init_state(model, data)
    for _ in range(3):
        refresh_shapes(model, data, state)
    for lo in range(0, len(data), cfg.chunk):
        idx = np.arange(lo, min(len(data), lo + cfg.chunk))
        state.pose[idx], state.translation[idx] = pose_step(model, data, state, idx, cfg.pose_iters)
    refresh_shapes(model, data, state)
    idx = subject_batches([data.subjects[k] for k in data.subject_index], batch_scans)[0]
    sub = data.select(idx)
    row_of = {s: k for k, s in enumerate(data.subjects)}
    rows = torch.as_tensor([row_of[s] for s in sub.subjects])

    def part():
        return TrainState(state.model, state.pose[idx].clone(), state.translation[idx].clone(), state.rest[rows],
                          state.expression[idx], [])
    return model, sub, part, cfg


def run(model, sub, part, cfg, work: Path, every: int, history: int | None = None):
    """joint_batch_step with a trace of every chunk: (pass, iterations, loss, joints (S, J, 3))."""
    from ghum_pipe.model import joints as jm
    from ghum_pipe.model.truth import subject_truth

    ps = part()
    with torch.no_grad():
        joints0 = model.joint_regressor(ps.rest)
    free = torch.ones(model.n_joints, 1)
    free[0] = 0.0
    rows, original = [], jm.minimize_lbfgs_torch

    def traced(params, loss_fn, iters, **kw):
        cells = dict(zip(loss_fn.__code__.co_freevars, (c.cell_contents for c in loss_fn.__closure__)))
        physical, p = cells["physical"], len({r[0] for r in rows})

        def trace(n, loss):
            rows.append((p, n, loss, (joints0 + 0.01 * physical(params)[2].detach() * free).numpy().copy()))
        with torch.no_grad():
            trace(0, float(loss_fn()))
        if history:
            kw["history_size"] = history
        return original(params, loss_fn, iters, check_every=every, trace=trace, **kw)

    jm.minimize_lbfgs_torch = traced
    try:
        t0 = time.process_time()
        jm.joint_batch_step(model, sub, ps, cfg)
        cpu = time.process_time() - t0
    finally:
        jm.minimize_lbfgs_torch = original
    _, truth = subject_truth(work, sub.subjects)
    return rows, truth, cpu


def main():
    from dataclasses import replace

    from ghum_pipe.synth.registrations import planted_joint_shifts
    from ghum_pipe.template import load_template

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("/tmp/ghum-joint-convergence"))
    ap.add_argument("--shifts", action="store_true", help="Plant joint-centre shifts (C must move them).")
    ap.add_argument("--batch-scans", type=int, default=32)
    ap.add_argument("--iters", type=int, default=400, help="L-BFGS iterations per pass of the traced run.")
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--history", type=int, default=None, help="L-BFGS history size (default: the step's).")
    ap.add_argument("--rtol", type=float, nargs="*", default=[],
                    help="Then run the step with each of these joint_rtol (cap --iters).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = args.base / ("shifts" if args.shifts else "noshifts")
    model, sub, part, cfg = prepare(work, args.shifts, args.batch_scans)
    planted = planted_joint_shifts(load_template())["joints"]
    print(f"## {'with' if args.shifts else 'without'} planted joint shifts: batch of {len(sub)} scans, "
          f"{len(sub.subjects)} subjects; {args.iters} iterations per pass, no tolerance\n")
    base = replace(cfg, joint_iters=args.iters, joint_rtol=0.0)
    rows, truth, cpu = run(model, sub, part, base, work, args.every, args.history)
    print(f"CPU {cpu:.0f} s ({cpu / len(sub):.2f} s per scan)\n")
    print("| pass | iterations | objective | rel. decrease since last | joints mm (all) | joints mm (shiftable) "
          "| to pass end, max mm |")
    print("|---|---|---|---|---|---|---|")
    end = {}
    for p, _, _, j in rows:
        end[p] = j
    prev = None
    for p, n, loss, j in rows:
        err = np.linalg.norm(j - truth, axis=-1) * 1000
        rel = "" if prev is None or n == 0 else f"{(prev - loss) / loss:.1e}"
        print(f"| {p + 1} | {n} | {loss:.6g} | {rel} | {err.mean():.3f} | {err[:, planted].mean():.3f} | "
              f"{np.linalg.norm(j - end[p], axis=-1).max() * 1000:.3f} |")
        prev = loss
    full_end = rows[-1][3]
    for rtol in args.rtol:
        r2, _, cpu2 = run(model, sub, part, replace(base, joint_rtol=rtol), work, args.every, args.history)
        its = [max(n for p, n, *_ in r2 if p == q) for q in sorted({r[0] for r in r2})]
        err = np.linalg.norm(r2[-1][3] - truth, axis=-1) * 1000
        print(f"\njoint_rtol {rtol:g}: iterations per pass {its}, CPU {cpu2:.0f} s ({cpu2 / len(sub):.2f} s per scan, "
              f"{cpu / cpu2:.1f}x faster), joints mm {err.mean():.3f} (shiftable {err[:, planted].mean():.3f}), "
              f"max {np.linalg.norm(r2[-1][3] - full_end, axis=-1).max() * 1000:.3f} mm from the untoleranced end")


if __name__ == "__main__":
    main()
