"""Start-up time of the ``ghum-pipe`` command: ``--help``, ``--version`` and a subcommand's
``--help``, each a fresh process (what a user waits for), against the peer ``python -c pass``
(the interpreter alone) and the import of torch (what listing the commands used to cost).
Target: ``--help`` and ``--version`` under 0.5 s. Prints the median and the spread of N runs.

    .venv/bin/python bench/cli_startup.py            # 7 runs each
    .venv/bin/python bench/cli_startup.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

CASES = [
    ("python -c pass (peer: the interpreter)", ["-c", "pass"]),
    ("import torch (what --help used to pay)", ["-c", "import torch"]),
    ("ghum-pipe --help", ["-m", "ghum_pipe.cli", "--help"]),
    ("ghum-pipe --version", ["-m", "ghum_pipe.cli", "--version"]),
    ("ghum-pipe train --help", ["-m", "ghum_pipe.cli", "train", "--help"]),
    ("ghum-pipe status --help", ["-m", "ghum_pipe.cli", "status", "--help"]),
]


def time_once(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=ENV, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per case (after one warm-up)")
    args = ap.parse_args()
    print(f"{'command':42s} {'median s':>9s} {'min s':>7s} {'max s':>7s}   (load {os.getloadavg()[0]:.1f})")
    for label, argv in CASES:
        time_once(argv)  # warm the file cache
        times = [time_once(argv) for _ in range(args.runs)]
        print(f"{label:42s} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f}")


if __name__ == "__main__":
    main()
