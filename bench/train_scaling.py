"""Training at scale: wall time, memory and a cost model of ``train_models`` against N scans.

From one ``synth --registrations`` set (5 scans per subject, no close-ups) made once under
``--base``, each N gets a work dir of symlinks to its first N/5 subjects' scan folders (so every
run packs its own ``train_store.zarr``). Each measurement runs in a fresh process (so the
driver's RSS is its own) on a LocalCluster on 127.0.0.1 with 1 thread per worker, and prints:

- the store's build time and size;
- wall time of init, of each round and its phases (pose, model step, posed error), of the finish
  (VAE fits + save);
- peak RSS of the driver (the process, with the in-process scheduler) and of each worker
  process (psutil, sampled every 0.2 s over the process tree); the driver's also by phase
  (before training, store + init + rounds, the finish);
- CPU seconds (user + system) of each worker process and of the driver over the run: on a shared
  machine wall times stretch with the load, CPU seconds do not;
- per task kind: count and mean compute seconds (Dask's task stream; wall time on the worker).

The workers get ghum-pipe's allocator settings, as every command's cluster
(``pipelines/worker_malloc.py``); ``--malloc-peer N`` also runs N with Dask's own (the peer) and
prints the ratio of the workers' CPU seconds.

Then a cost model (a simulation, not a measurement) for 10,000 and 60,000 scans on 10/100/1000
single-core workers, from the measured per-task costs scaled by their work (scans x vertices)
and the task counts; see ``cost_model``. Task times are scaled by the workers' CPU seconds over
their tasks' wall seconds, so that other processes on a shared machine do not inflate them. The issue's measurements of the previous schedule
(one model-step task holding everything) are printed as the peer.

    .venv/bin/python bench/train_scaling.py --sizes 250 500 1000 --workers 2 --one-vs-two 1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PER_SUBJECT = 5
OLD = [(120, 267, 0.49, 0.93), (480, 847, 0.71, 2.75)]  # the table: scans, wall s, driver GB, worker GB


def make_base(base: Path, n_max: int) -> Path:
    from ghum_pipe.synth.registrations import make_registrations

    regs = base / "regs"
    n_subj = math.ceil(n_max / PER_SUBJECT)
    have = len(list((regs / "scans").glob("*/registration.ply"))) if regs.exists() else 0
    if have < n_subj * PER_SUBJECT:
        print(f"making {n_subj} subjects x {PER_SUBJECT} registrations in {regs} (once) ...", flush=True)
        t0 = time.time()
        make_registrations(regs, n_subj, seed=0, poses_per_subject=PER_SUBJECT, closeups=False,
                           population="template")
        print(f"  {time.time() - t0:.0f} s", flush=True)
    return regs


def work_dir(base: Path, regs: Path, n: int) -> Path:
    """W with the first n scans (whole subjects) as symlinks, and their subjects.csv."""
    import shutil

    work = base / f"work_{n}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "scans").mkdir(parents=True)
    lines = (regs / "subjects.csv").read_text().splitlines()
    header, rows = lines[0], sorted(lines[1:])
    keep = rows[:n]
    (work / "subjects.csv").write_text("\n".join([header, *keep]) + "\n")
    for line in keep:
        sid = line.split(",")[0]
        (work / "scans" / sid).symlink_to(regs / "scans" / sid)
    return work


class Sampler(threading.Thread):
    """Peak RSS of this process and of each child process (recursively), every 0.2 s."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.peak = {}
        self.driver = []  # (time, RSS) of this process, every sample
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                procs = [self.me, *self.me.children(recursive=True)]
            except Exception:  # noqa: BLE001 - a process may end while listed
                procs = [self.me]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except Exception:  # noqa: BLE001
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                if p.pid == self.me.pid:
                    self.driver.append((time.time(), rss))
            time.sleep(0.2)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (a worker's, when run by ``client.run``):
    with other processes on the machine, wall times stretch but CPU seconds do not."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def one_run(work: Path, out: Path, n_workers: int, models: list[str], rounds: int, pose_iters: int,
            shard_scans: int, joint_iters: int) -> dict:
    """One training in this process (the bench's child); returns the measurements."""
    import torch
    from distributed import Client, LocalCluster, get_task_stream

    from ghum_pipe.model.config import TrainConfig, ghum_config, ghuml_config
    from ghum_pipe.pipelines.model_schedule import train_models
    from ghum_pipe.pipelines.worker_malloc import register_worker_malloc

    torch.set_num_threads(1)
    sampler = Sampler()
    sampler.start()
    configs = {}
    if "ghum" in models:
        configs["ghum"] = TrainConfig(model=ghum_config(), rounds=rounds, pose_iters=pose_iters, joint_iters=joint_iters)
    if "ghuml" in models:
        configs["ghuml"] = TrainConfig(model=ghuml_config(), rounds=rounds, pose_iters=pose_iters,
                                       joint_iters=joint_iters)
    timings: dict = {}
    t0 = time.time()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("torch").set_num_threads(1))
        register_worker_malloc(client)  # as every command's cluster (GHUM_PIPE_WORKER_MALLOC=dask: Dask's)
        worker_pids = set(client.run(os.getpid).values())
        cpu0 = client.run(_cpu_seconds)
        with get_task_stream(client) as ts:
            t_start = time.time()
            summaries = train_models(work, out, configs, client, shard_scans=shard_scans, timings=timings)
            t_finish = time.time() - timings["finish"]
        cpu = {w: c - cpu0.get(w, 0.0) for w, c in client.run(_cpu_seconds).items()}
        tasks: dict = {}
        for t in ts.data:
            name = t["key"].split("-")[0] if isinstance(t["key"], str) else str(t["key"][0]).split("-")[0]
            busy = sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
            k = tasks.setdefault(name, [0, 0.0])
            k[0] += 1
            k[1] += busy
    wall = time.time() - t0
    sampler.stop = True
    sampler.join()
    me = os.getpid()
    # the driver's peak before training, while packing/init/rounds, and over the finish
    spans = dict(start=(0, t_start), rounds=(t_start, t_finish), finish=(t_finish, float("inf")))
    driver_phases = {k: max((r for t, r in sampler.driver if lo <= t < hi), default=0) / 1e9
                     for k, (lo, hi) in spans.items()}
    return dict(driver_phases_gb=driver_phases, wall=wall, timings=timings, tasks=tasks, worker_cpu_s=sorted(cpu.values(), reverse=True),
                driver_cpu_s=_cpu_seconds(), n_train=max(v["n_scans"] for v in summaries.values()),
                fit_mm=[v["history"][-1]["fit_mm"] for v in summaries.values()], driver_gb=sampler.peak.get(me, 0) / 1e9,
                worker_gb=sorted((sampler.peak.get(p, 0) / 1e9 for p in worker_pids), reverse=True))


def cost_model(meas: dict, n_scans: int, workers: int, n_blocks: int, shard_scans: int, rounds: int = 3,
               inner: int = 3, bandwidth_gbs: float = 1.0) -> dict:
    """Simulated wall time (s) per phase of a ``rounds``-round training of ``n_scans`` scans on
    ``workers`` single-core workers, from one measured run ``meas`` (its per-task compute seconds,
    taken per scan and pass). Not a measurement.

    Model: per-batch tasks (pose, refresh, error) cost per scan as measured; a phase of T equal
    tasks on W workers takes ceil(T / W) task times. Normal-equation tasks: the measured cost per
    scan and block; batches per sum chosen so that blocks x groups >= W; each group's sums of a
    block (``sums_gb_per_block``) move once to the block's solve task at ``bandwidth_gbs``. The
    joint step C (round 0): one task per batch (measured per scan) as a phase, then its refit (one
    task, measured per scan: it grows with N, but by ~1e-4 s per subject) and one joints task per
    batch. The VAE fits (``submit_vae_fit``): their per-batch passes (rows, coefficients, error,
    counts) as phases of as many passes as measured; their columns passes (one task per vertex
    block and group of batches, as many as workers) as their measured cost scaled by N / W; Adam on the coefficients (one task per VAE, serial: its steps
    take all rows up to ``TrainConfig.vae_batch`` and that many beyond, so its cost grows with N
    up to that many rows, then stays; taken as the measured cost x rows / measured rows, an upper
    bound: part of a step's cost does not grow with its rows) and the save (one task, grows with
    N), serial; the driver's QR/SVD steps on (n, 160) and (D, 160) arrays are not in the
    task stream and not counted. The scheduler: 1 ms per task, serial (Dask's order of
    magnitude)."""
    m = meas["n_train"]
    t = meas["tasks"]
    m_rounds, m_passes = meas["rounds"], meas["rounds"] * inner
    share = meas.get("cpu_share", 1.0)  # task wall seconds -> CPU seconds (other load stretched them)
    cost = lambda name: t.get(name, (0, 0.0))[1] * share  # noqa: E731
    n_batches = math.ceil(n_scans / shard_scans)
    phase = lambda per_scan: math.ceil(n_batches / workers) * per_scan * shard_scans  # noqa: E731
    passes = rounds * inner
    normals_scan_block = cost("_normals_task") / max(m_passes * m * n_blocks, 1)
    groups = max(1, math.ceil(workers / n_blocks))
    normals = math.ceil(n_blocks * groups / workers) * normals_scan_block * n_scans / groups
    transfer = (groups - 1) * meas["sums_gb_per_block"] / bandwidth_gbs if groups > 1 else 0.0
    solve = cost("_solve_task") / max(m_passes * n_blocks, 1) * math.ceil(n_blocks / workers)
    n_tasks_round = n_batches * (2 + inner) + inner * (n_blocks * (groups + 1) + 1) + 2 * n_batches / rounds
    out = dict(
        pose=rounds * phase(cost("_pose_task") / max(m_rounds * m, 1)),
        refresh=(passes + 1) * phase(cost("_refresh_task") / max((m_passes + 1) * m, 1)),
        normals=passes * (normals + transfer + solve),
        error=rounds * phase(cost("_error_task") / max(m_rounds * m, 1)),
        joint_C=(phase(cost("_joint_batch_task") * meas.get("joint_scale", 1.0) / max(m, 1)) + phase(cost("_joints_task") / max(m, 1))
                 + cost("_joint_refit_task") / max(m, 1) * n_scans),
        finish_VAE=vae_finish(cost, t, m, n_scans, n_batches, workers, meas.get("vae_batch")),
        scheduler=rounds * n_tasks_round * 1e-3,
    )
    out["total"] = sum(out.values())
    return out


def vae_finish(cost, tasks: dict, m: int, n_scans: int, n_batches: int, workers: int,
               vae_batch: int | None = None) -> float:
    """Simulated seconds of the end of training (both VAE fits and the save) for ``n_scans`` on
    ``workers``, from the measured tasks of a run of ``m`` training scans (see ``cost_model``);
    Adam's rows per step stop growing at ``vae_batch`` (None: full batch, as before it)."""
    m_batches = max(tasks.get("_init_task", (1, 0.0))[0], 1)
    total = 0.0
    for name in ("_vae_rows_task", "_vae_count_task", "_vae_coefficients_task", "_vae_error_task"):
        count = tasks.get(name, (0, 0.0))[0]
        if count:  # passes x batches (+ the prior's rows): per pass, a phase of batch tasks
            total += count / m_batches * math.ceil(n_batches / workers) * cost(name) / count
    # the columns passes: one task per vertex block and group of batches (blocks x groups >= workers,
    # as the normal equations), so a pass's work spreads over the workers; the save grows with N, serial
    total += cost("_vae_columns_task") * n_scans / max(m, 1) / workers + cost("_sum_task")
    total += cost("_finish_task") * n_scans / max(m, 1)
    adam_rows = n_scans if vae_batch is None else min(n_scans, max(vae_batch, m))  # rows <= scans
    total += cost("_vae_train_task") * adam_rows / max(m, 1)
    for name in ("_vae_dims_task", "_vae_start_task", "_vae_choose_task"):  # small, fixed
        total += cost(name)
    return total


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _child(args, n: int, w: int, env: dict | None = None) -> dict:
    """One measurement in a fresh process (``--child``); its RESULT line."""
    cmd = [sys.executable, __file__, "--base", str(args.base), "--models", *args.models, "--joint-iters",
           str(args.joint_iters), "--rounds", str(args.rounds), "--pose-iters", str(args.pose_iters),
           "--shard-scans", str(args.shard_scans), "--child", str(n), str(w)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        print(p.stdout[-3000:], p.stderr[-3000:])
        raise SystemExit(f"run N={n} failed")
    return json.loads(line[0][7:])


def main():
    from ghum_pipe.model.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("/tmp/ghum-train-scaling"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--models", nargs="+", default=["ghuml"], choices=["ghum", "ghuml"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--one-vs-two", type=int, default=None, help="Also run this N with 1 worker.")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pose-iters", type=int, default=5)
    ap.add_argument("--shard-scans", type=int, default=32)
    ap.add_argument("--joint-iters", type=int, default=TrainConfig().joint_iters,
                    help="Cap on L-BFGS iterations per pass of C's step (TrainConfig.joint_iters; a pass stops "
                         "earlier once converged, TrainConfig.joint_rtol). Lower only to fit a slow machine: the "
                         "cost model then scales C's measured cost by the default / this (an upper bound: "
                         "with the synthetic joint shifts C runs to its cap, docs/cluster.md).")
    ap.add_argument("--malloc-peer", type=int, default=None, metavar="N",
                    help="Also run N with Dask's allocator settings on the workers (GHUM_PIPE_WORKER_MALLOC=dask; "
                         "pipelines/worker_malloc.py) and print the ratio to ours.")
    ap.add_argument("--report", action="store_true", help="Print the tables of BASE/results.json, run nothing.")
    ap.add_argument("--child", nargs=2, metavar=("N", "WORKERS"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, w = int(args.child[0]), int(args.child[1])
        work = args.base / f"work_{n}"
        r = one_run(work, args.base / f"out_{n}_{w}", w, args.models, args.rounds, args.pose_iters, args.shard_scans,
                    args.joint_iters)
        tag = "_dask" if os.environ.get("GHUM_PIPE_WORKER_MALLOC") == "dask" else ""
        (args.base / f"result_{n}_{w}{tag}.json").write_text(json.dumps(r))
        print("RESULT " + json.dumps(r), flush=True)
        return
    runs = [(n, args.workers) for n in args.sizes]
    if args.one_vs_two:
        runs.append((args.one_vs_two, 1))
    if args.report:  # print the tables of the last runs again (from each run's result file)
        results = {(n, w): json.loads((args.base / f"result_{n}_{w}.json").read_text()) for n, w in runs
                   if (args.base / f"result_{n}_{w}.json").exists()}
        runs = []
    else:
        regs = make_base(args.base, max(args.sizes))
        results = {}
    for n, w in runs:
        if (args.base / f"work_{n}").exists() and w != args.workers:
            import shutil

            shutil.rmtree(args.base / f"work_{n}" / "train_store.zarr", ignore_errors=True)
        else:
            work_dir(args.base, regs, n)
        print(f"N={n} workers={w} ...", flush=True)
        results[(n, w)] = _child(args, n, w)
    if args.malloc_peer and not args.report:
        n = args.malloc_peer
        if not (args.base / f"work_{n}").exists():
            work_dir(args.base, regs, n)
        shutil_rm(args.base / f"work_{n}" / "train_store.zarr")
        print(f"N={n} workers={args.workers}, Dask's allocator settings ...", flush=True)
        peer = _child(args, n, args.workers, {"GHUM_PIPE_WORKER_MALLOC": "dask"})
        ours = results.get((n, args.workers))
        print(f"\n## Worker allocator (pipelines/worker_malloc.py) at N={n}, {args.workers} workers\n")
        print("| settings | round s | total s | worker CPU s | worker peaks GB | fit mm |\n|---|---|---|---|---|---|")
        for name, r in (("Dask's (peer)", peer), ("ghum-pipe's", ours)):
            if r:
                print(f"| {name} | {r['timings']['rounds'][0]['seconds']:.0f} | {r['wall']:.0f} | "
                      f"{sum(r['worker_cpu_s']):.0f} | {' / '.join(f'{g:.2f}' for g in r['worker_gb'])} | "
                      f"{' / '.join(f'{x:.3f}' for x in r['fit_mm'])} |")
        if ours:
            print(f"\nworkers' CPU seconds: Dask's / ours x{sum(peer['worker_cpu_s']) / sum(ours['worker_cpu_s']):.2f}; "
                  f"total wall x{peer['wall'] / ours['wall']:.2f}")
    models = "+".join(args.models)
    print(f"\n## {models}, {args.rounds} round(s), pose_iters {args.pose_iters}, C's step by subject batch "
          f"(at most {args.joint_iters} L-BFGS iterations per pass, joint_rtol {TrainConfig().joint_rtol:g}), "
          f"subject batches of ~{args.shard_scans} "
          f"scans, this machine: {os.cpu_count()} cores shared (load {os.getloadavg()[0]:.1f})\n")
    print("| N (all) | train scans | workers | store build s | store MB | init s | round s | pose s | model step s "
          "| error s | finish s | total s | worker CPU s | driver CPU s | driver peak GB | worker peaks GB | fit mm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, w), r in results.items():
        tm = r["timings"]
        rd = tm["rounds"][0]
        print(f"| {n} | {r['n_train']} | {w} | {tm['store']['seconds']:.1f} | {tm['store']['bytes'] / 1e6:.0f} | "
              f"{tm['init']:.0f} | {rd['seconds']:.0f} | {rd['pose']:.0f} | {rd['model']:.0f} | {rd['error']:.0f} | "
              f"{tm['finish']:.0f} | {r['wall']:.0f} | {' / '.join(f'{c:.0f}' for c in r.get('worker_cpu_s', []))} | "
              f"{r.get('driver_cpu_s', float('nan')):.0f} | {r['driver_gb']:.2f} | "
              f"{' / '.join(f'{g:.2f}' for g in r['worker_gb'])} | {' / '.join(f'{x:.2f}' for x in r['fit_mm'])} |")
    print("\nDriver peak RSS by phase (GB): before training (cluster start) / store, init and rounds / finish")
    for (n, w), r in results.items():
        if "driver_phases_gb" in r:
            print(f"N={n} w={w}: " + " / ".join(f"{g:.2f}" for g in r["driver_phases_gb"].values()))
    print("\nPeer (the issue, previous schedule, GHUM + GHUML, 6 scans/subject, 2 workers, 1 round):")
    print("| scans | wall s | driver GB | largest worker GB |\n|---|---|---|---|")
    for row in OLD:
        print("| " + " | ".join(str(x) for x in row) + " |")
    print("\nPer task kind (compute seconds, Dask task stream):")
    for (n, w), r in results.items():
        print(f"N={n} w={w}: " + ", ".join(f"{k[1:]} {c}x{s / max(c, 1):.2f}s" for k, (c, s) in sorted(r["tasks"].items())))
    if args.one_vs_two and (args.one_vs_two, args.workers) in results:
        a, b = results[(args.one_vs_two, 1)], results[(args.one_vs_two, args.workers)]
        print(f"\n1 vs {args.workers} workers at N={args.one_vs_two}: round {a['timings']['rounds'][0]['seconds']:.0f} s vs "
              f"{b['timings']['rounds'][0]['seconds']:.0f} s (x{a['timings']['rounds'][0]['seconds'] / b['timings']['rounds'][0]['seconds']:.2f}); "
              f"total {a['wall']:.0f} vs {b['wall']:.0f} s (x{a['wall'] / b['wall']:.2f})")
    # cost model from the largest multi-worker run
    n_big = max(n for (n, w) in results if w == args.workers)
    r = results[(n_big, args.workers)]
    key = json.loads((args.base / f"work_{n_big}" / "train_store.zarr" / "index.json").read_text())["key"]
    res = "low" if args.models == ["ghuml"] else "full"
    V = key["n_verts_low"] if res == "low" else key["n_verts"]
    vblock = 512
    n_blocks = math.ceil(V / vblock)
    from ghum_pipe.pipelines.model_schedule import SUMS_BYTES

    sums_gb = SUMS_BYTES / 1e9  # a block's normal-equation sums (512 vertices)
    # On a shared machine a task's wall time counts the time other processes held its core; the
    # workers' CPU seconds over the sum of their tasks' wall seconds is that share (an upper
    # bound: a worker's CPU also counts its own overhead between tasks).
    task_s = sum(s for _, s in r["tasks"].values())
    cpu_share = min(1.0, sum(r["worker_cpu_s"]) / task_s) if r.get("worker_cpu_s") and task_s else 1.0
    meas = dict(n_train=r["n_train"], tasks=r["tasks"], n_blocks=n_blocks, sums_gb_per_block=sums_gb,
                rounds=args.rounds, joint_scale=TrainConfig().joint_iters / args.joint_iters, cpu_share=cpu_share,
                vae_batch=TrainConfig().vae_batch)
    print(f"\n## Cost model (a SIMULATION from N={n_big}'s per-task costs, {res}-res, projected to 3 rounds x inner 3, "
          f"{n_blocks} vertex blocks, sums {sums_gb * 1e3:.0f} MB per block and group at 1 GB/s; C's measured "
          f"cost x{meas['joint_scale']:.1f} for the default {TrainConfig().joint_iters} iterations; task times x{cpu_share:.2f}, "
          f"the workers' CPU seconds / their tasks' wall seconds)\n")
    print("seconds per phase; C: the joint step by subject batch + its refit; VAE finish: both VAE fits' passes "
          "(rows by batch, columns by vertex block x group of batches; Adam and the save counted serial) and the save\n")
    print("| scans | workers | pose | refresh | normals+solve | error | C (by batch) | VAE finish "
          "| scheduler | total h | of it VAE finish h |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in (10_000, 60_000):
        for w in (10, 100, 1000):
            c = cost_model(meas, n, w, n_blocks, args.shard_scans)
            print(f"| {n} | {w} | " + " | ".join(f"{c[k]:.0f}" for k in ("pose", "refresh", "normals", "error", "joint_C",
                                                                       "finish_VAE", "scheduler"))
                  + f" | {c['total'] / 3600:.2f} | {c['finish_VAE'] / 3600:.2f} |")


if __name__ == "__main__":
    main()
