"""Scaling of a batch stage with the number of Dask workers on this machine.

The same batch (synthetic scans from ``ghum-pipe synth``) runs the ``landmark`` stage (or
``register``) with 1 worker (the peer) and with 2 workers (one per core), each in a fresh copy of
a work dir where ``ingest`` is already done, so only the measured stage runs. Printed per run:
wall time (including the cluster start), throughput in scans/min, the speed-up over 1 worker
(target >= 1.6x on 2 cores), the busy time of the tasks, the peak RSS of each worker process
(``ru_maxrss`` recorded by the task on the worker) and the machine's load average, since other
processes on a shared machine take cores away from the run.

    .venv/bin/python bench/scaling.py                  # 6 scans, landmark, 1 vs 2 workers
    .venv/bin/python bench/scaling.py --count 8 --stage register --scans demo/synth/scans
    .venv/bin/python bench/scaling.py --stage ingest --count 200 --scans DIR   # scheduling overhead
    .venv/bin/python bench/scaling.py --stage register --compare-malloc   # workers' allocator

``--compare-malloc`` runs 2 workers twice instead: with Dask's allocator settings on the workers
(the peer, ``GHUM_PIPE_WORKER_MALLOC=dask``) and with ghum-pipe's (``pipelines/worker_malloc.py``),
and prints the ratio of their CPU seconds per scan.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ghum_pipe.pipelines.cluster import ClusterOptions  # noqa: E402
from ghum_pipe.pipelines.manifest import Manifest  # noqa: E402
from ghum_pipe.pipelines.runner import run_batch  # noqa: E402
from ghum_pipe.pipelines.scans import discover_scans  # noqa: E402


def synth_scans(out: Path, count: int, seed: int) -> Path:
    """``ghum-pipe synth`` scans (posed, m/mm, +Z/+Y mixed), made once and reused."""
    scans = out / "scans"
    have = len(list(scans.glob("*.ply"))) if scans.exists() else 0
    if have < count:
        print(f"making {count} synthetic scans in {out} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "ghum_pipe.cli", "synth", str(out), "--count", str(count),
                        "--seed", str(seed), "--posed", "--units", "mixed", "--up", "mixed"],
                       check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return scans


def measure(base: Path, scans: dict, stage: str, workers: int, malloc: str = "ghum") -> dict:
    from ghum_pipe.pipelines.worker_malloc import ENV

    os.environ[ENV] = malloc  # read when the cluster opens (cluster.open_client)
    work = base.parent / f"work_{stage}_{workers}w_{malloc}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_batch(work, scans, (stage,), cluster=ClusterOptions(workers=workers), retries=0, progress=False)
    wall = time.perf_counter() - start
    load1 = os.getloadavg()[0]
    manifest = Manifest.load(work)
    recs = [manifest.stage(i, stage) for i in manifest.ids()]
    recs = [r for r in recs if r and r.get("status") == "done"]
    peak: dict[str, float] = {}
    for r in recs:
        peak[r["worker"]] = max(peak.get(r["worker"], 0.0), r.get("peak_rss_mb") or 0.0)
    return dict(workers=workers, malloc=malloc, wall_s=wall, done=result.counts[stage]["done"], failed=result.counts[stage]["failed"],
                busy_s=sum(r["seconds"] for r in recs), cpu_s=sum(r.get("cpu_s") or 0.0 for r in recs), per_scan_s=[r["seconds"] for r in recs],
                peak_rss_mb=sorted(peak.values()), load=(load0, load1))


def main() -> None:
    # MediaPipe's C++ warnings go to the workers' stderr; keep the table readable
    os.environ.setdefault("GLOG_minloglevel", "2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=Path, default=None, help="scan folder (default: synthesise --count scans)")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stage", choices=["ingest", "landmark", "register"], default="landmark")
    ap.add_argument("--compare-malloc", action="store_true",
                    help="2 workers with Dask's allocator settings vs ghum-pipe's, instead of 1 vs 2 workers")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ghum-pipe-bench-scaling"))
    args = ap.parse_args()

    scan_dir = args.scans or synth_scans(args.out / "synth", args.count, args.seed)
    scans = dict(sorted(discover_scans([scan_dir]).items())[: args.count])
    base = args.out / f"base_{args.stage}"
    shutil.rmtree(base, ignore_errors=True)
    # everything upstream of the measured stage, done once and copied into each run's work dir
    upstream = {"ingest": None, "landmark": "ingest", "register": "landmark"}[args.stage]
    base.mkdir(parents=True)
    if upstream:
        pre = run_batch(base, scans, (upstream,), cluster=ClusterOptions(workers=2), retries=0, progress=False)
        print(f"{len(scans)} scans; upstream '{upstream}': {pre.summary()}", flush=True)

    if args.compare_malloc:
        rows = [measure(base, scans, args.stage, 2, m) for m in ("dask", "ghum")]
        print(f"\nstage '{args.stage}', {len(scans)} scans, 2 workers; the workers' allocator: Dask's (peer) vs "
              f"ghum-pipe's (pipelines/worker_malloc.py)")
        print(f"{'settings':>8} {'done':>5} {'wall s':>7} {'task s/scan':>11} {'cpu s/scan':>10} {'peak RSS MB/worker':>20} "
              f"{'load':>10}")
        for r in rows:
            print(f"{r['malloc']:>8} {r['done']:>5} {r['wall_s']:>7.1f} {r['busy_s'] / max(r['done'], 1):>11.1f} "
                  f"{r['cpu_s'] / max(r['done'], 1):>10.1f} {'/'.join(f'{p:.0f}' for p in r['peak_rss_mb']):>20} "
                  f"{r['load'][0]:>4.1f}/{r['load'][1]:<4.1f}")
        d, g = rows
        print(f"\nCPU seconds per scan, Dask's / ghum-pipe's: x{(d['cpu_s'] / max(d['done'], 1)) / (g['cpu_s'] / max(g['done'], 1)):.2f}; "
              f"wall x{d['wall_s'] / g['wall_s']:.2f}")
        return
    rows = [measure(base, scans, args.stage, w) for w in (1, 2)]
    one = rows[0]
    print(f"\nstage '{args.stage}', {len(scans)} scans, {os.cpu_count()} cores "
          f"(load average before/after each run shows other users of the cores)")
    head = (f"{'workers':>7} {'done':>5} {'failed':>6} {'wall s':>7} {'scans/min':>9} {'speed-up':>8} "
            f"{'task s/scan':>11} {'cpu s/scan':>10} {'cpu share':>9} {'peak RSS MB/worker':>20} {'load':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        thr = 60.0 * r["done"] / r["wall_s"]
        speed = one["wall_s"] / r["wall_s"]
        per = r["busy_s"] / max(r["done"], 1)
        cpu = r["cpu_s"] / max(r["done"], 1)
        peaks = "/".join(f"{p:.0f}" for p in r["peak_rss_mb"])
        print(f"{r['workers']:>7} {r['done']:>5} {r['failed']:>6} {r['wall_s']:>7.1f} {thr:>9.2f} {speed:>7.2f}x "
              f"{per:>11.1f} {cpu:>10.1f} {cpu / max(per, 1e-9):>9.2f} {peaks:>20} {r['load'][0]:>4.1f}/{r['load'][1]:<4.1f}")
    ratio = one["wall_s"] / rows[1]["wall_s"]
    print(f"\nspeed-up 2 vs 1 worker: {ratio:.2f}x (target >= 1.6x)"
          f"{'' if ratio >= 1.6 else '  BELOW TARGET'}")
    print("cpu share = task CPU time / task wall time (1 thread per worker): well below 1 means the "
          "tasks waited for a core, i.e. other processes were using the machine")


if __name__ == "__main__":
    main()
