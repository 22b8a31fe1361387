"""Ctrl-C / SIGTERM at different moments of `ghum-pipe run`, as a terminal or a batch system sends
them (to the whole process group, Dask's worker processes included).

Each run: `run` on N scaled template scans with `--workers 2 -q`, the signal sent DELAY seconds
after start; the table gives the exit code, whether stderr stayed clean (no traceback, no ERROR
line) and what was left in W (`.lock`, `.dask-scratch`). Target (README): one line, exit 130,
nothing left, whatever the moment. There is no peer: the numbers before the fix are in the
issue's closing note (same harness).

    .venv/bin/python bench/interrupts.py --signal TERM --delays 1 3 6 8 9 11
    .venv/bin/python bench/interrupts.py --signal INT --delays 1 3 6 8 9 11
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signal", choices=["INT", "TERM"], default="TERM")
    ap.add_argument("--delays", type=float, nargs="+", default=[1, 3, 6, 8, 9, 11], help="seconds after start")
    ap.add_argument("--scans", type=int, default=3)
    args = ap.parse_args()
    import trimesh

    from ghum_pipe.template import load_template

    base = Path(tempfile.mkdtemp(prefix="ghum-interrupts-"))
    scans, work = base / "scans", base / "W"
    scans.mkdir()
    mesh = load_template().to_trimesh()
    for i in range(args.scans):
        trimesh.Trimesh(mesh.vertices * (1 + 0.01 * i), mesh.faces, process=False).export(scans / f"b{i}.ply")
    sig = getattr(signal, "SIG" + args.signal)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"| signal | delay s | exit | stderr | left in W |\n|---|---|---|---|---|")
    bad = 0
    for delay in args.delays:
        shutil.rmtree(work, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "ghum_pipe.cli", "run", str(scans), "-w", str(work),
                                 "--workers", "2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal
        time.sleep(delay)
        os.killpg(proc.pid, sig)
        try:
            _, err = proc.communicate(timeout=60)
            code = str(proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            code = "hung (60 s)"
        left = [p for p in (".lock", ".dask-scratch") if (work / p).exists()]
        clean = "Traceback" not in err and "ERROR" not in err
        bad += not (clean and code == "130" and not left)
        print(f"| {args.signal} | {delay:g} | {code} | {'clean' if clean else 'TRACEBACK/ERROR'} | {', '.join(left) or '-'} |")
    print(f"\n{bad} of {len(args.delays)} not clean (target: 0)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
