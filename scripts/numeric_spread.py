"""Run the tests under the numeric variations a user's machine has and print each measured value's spread.

Every numeric assertion that goes through the tests' ``measured`` fixture (tests/conftest.py) is
recorded per run. The variations: torch/BLAS threads 1 and 2, OpenBLAS kernels (unset = the CPU's
own; others this CPU can run), and another ``PYTHONHASHSEED``. The table gives, per value, its
bound, the smallest and largest value over the variations, the spread (max - min) and the margin:
the distance from the worst value to the bound in units of the spread (a margin under ~3 means
the bound sits within reach of a machine's rounding: make the computation deterministic or take
the bound from the spec).

Usage (from the repository, after ``make install``)::

    .venv/bin/python scripts/numeric_spread.py [pytest args, default: tests] [--out DIR]
    .venv/bin/python scripts/numeric_spread.py tests/test_register_stage.py -k units --out /tmp/spread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# name -> environment changes; each row is a variation a user's machine can have
VARIATIONS = {
    "base": {},
    "threads1": {"GHUM_PIPE_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"},
    "haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "sandybridge": {"OPENBLAS_CORETYPE": "SandyBridge"},
    "hashseed": {"PYTHONHASHSEED": "12345"},
}


def run(variation: str, env_changes: dict, pytest_args: list[str], out: Path) -> Path:
    log = out / f"{variation}.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, **env_changes, "GHUM_PIPE_MEASURE_LOG": str(log)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    print(f"[{variation}] {' '.join(f'{k}={v}' for k, v in env_changes.items()) or '(as is)'}: {' '.join(cmd[3:])}",
          flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    print(f"[{variation}] exit {proc.returncode}: {tail[0]}", flush=True)
    (out / f"{variation}.log").write_text(proc.stdout + proc.stderr)
    return log


def table(logs: dict[str, Path]) -> str:
    values: dict[tuple, dict[str, float]] = defaultdict(dict)
    bounds: dict[tuple, tuple[str, float]] = {}
    for variation, log in logs.items():
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            r = json.loads(line)
            key = (r["test"].split("::", 1)[-1], r["name"])
            values[key][variation] = r["value"]
            bounds[key] = (r["op"], r["bound"])
    rows = ["test :: value | bound | min | max | spread | margin (spreads) | " + " | ".join(logs)]
    for key in sorted(values):
        op, bound = bounds[key]
        v = values[key]
        lo, hi = min(v.values()), max(v.values())
        spread = hi - lo
        worst = hi if op in ("<", "<=") else lo
        room = (bound - worst) if op in ("<", "<=") else (worst - bound)
        margin = "inf" if spread == 0 else f"{room / spread:.1f}"
        cells = " | ".join(f"{v[n]:.4g}" if n in v else "-" for n in logs)
        rows.append(f"{key[0]} :: {key[1]} | {op} {bound:g} | {lo:.4g} | {hi:.4g} | {spread:.3g} | {margin} | {cells}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/spread"))
    ap.add_argument("--only", default=",".join(VARIATIONS), help="comma-separated variations to run")
    args, pytest_args = ap.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logs = {name: run(name, VARIATIONS[name], pytest_args or ["tests"], args.out)
            for name in args.only.split(",")}
    text = table(logs)
    (args.out / "spread.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
