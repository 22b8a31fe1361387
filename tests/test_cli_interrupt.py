"""Ctrl-C on a running batch, as a terminal sends it (SIGINT to the whole process group, Dask's
worker processes included): one line, no worker traceback, exit 130, the lock and the Dask
scratch under W removed, finished results kept. Real LocalCluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _sigint_as_in_a_terminal() -> None:
    """A command started from a terminal has SIGINT at its default; one started under a shell's
    `&` (as a CI runner may start the tests) inherits it ignored, and then Ctrl-C could not reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path, template, command: str, n_scans: int, workers: int):
    """``ghum-pipe COMMAND`` on ``n_scans`` scaled template scans, in a process group of its own
    (as a terminal starts it); returns (process, W)."""
    scans, work = tmp_path / "scans", tmp_path / "W"
    scans.mkdir()
    mesh = template.to_trimesh()
    for i in range(n_scans):
        trimesh.Trimesh(mesh.vertices * (1 + 0.01 * i), mesh.faces, process=False).export(scans / f"b{i}.ply")
    proc = subprocess.Popen([sys.executable, "-m", "ghum_pipe.cli", command, str(scans), "-w", str(work),
                             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=REPO, start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
    return proc, work


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, template):
    proc, work = _start(tmp_path, template, "landmark", 3, 1)
    deadline = time.time() + 240
    while time.time() < deadline and not list(work.glob("scans/*/logs/landmark.log")):
        time.sleep(0.3)
    assert list(work.glob("scans/*/logs/landmark.log")), "no landmark task started"
    assert (work / ".lock").exists() and (work / ".dask-scratch").is_dir()  # while it runs
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "distributed." not in err, err
    lines = [l for l in err.splitlines() if l.strip() and not l.lstrip().startswith(("ingest ", "landmark "))]
    assert len([l for l in lines if "interrupted" in l]) == 1, err
    assert out.strip().splitlines()[-1].startswith("INTERRUPTED: 3 scan(s)")
    assert not (work / ".lock").exists() and not (work / ".dask-scratch").exists()
    done = [i for i, s in json.loads((work / "manifest.json").read_text())["scans"].items()
            if s["stages"].get("ingest", {}).get("status") == "done"]
    assert done and all((work / "scans" / i / "scan.json").is_file() for i in done)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_while_workers_start_is_one_line(tmp_path, template, sig):
    """The signal reaches the process group while the 2 local workers are still starting (importing
    Dask): before, the workers printed KeyboardInterrupt tracebacks, the scheduler logged every
    dropped connection, and distributed's exit hook an AssertionError for the half-started cluster
    (8 of 11 SIGTERMs sent 7-13 s after start). Workers' stderr now goes to W/logs/workers.log."""
    proc, work = _start(tmp_path, template, "run", 2, 2)
    deadline = time.time() + 240
    while time.time() < deadline and not (work / ".dask-scratch").is_dir():  # the cluster is starting
        time.sleep(0.05)
    assert (work / ".dask-scratch").is_dir(), "the cluster did not start"
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "distributed." not in err and "ERROR" not in err, err
    assert len([l for l in err.splitlines() if "interrupted" in l]) == 1, err
    assert not (work / ".lock").exists() and not (work / ".dask-scratch").exists()


def test_the_temp_file_sweep_skips_the_workers_scratch(tmp_path):
    """After a Ctrl-C the runner sweeps W for temp files while the local workers may still be
    removing their scratch (a folder vanished under the walk: FileNotFoundError, exit 1, seen in
    CI). The sweep walks past W/.dask-scratch and removes a killed writer's temp file elsewhere."""
    from ghum_pipe.cli.options import DASK_SCRATCH
    from ghum_pipe.pipelines.manifest import SCRATCH, sweep_temp_files

    assert DASK_SCRATCH == SCRATCH
    (tmp_path / SCRATCH / "123" / "worker-x").mkdir(parents=True)
    kept = tmp_path / SCRATCH / "123" / "worker-x" / ".spill.abc.tmp"
    kept.write_text("")
    left = tmp_path / "scans" / "a" / ".metrics.x1y2.tmp.json"
    left.parent.mkdir(parents=True)
    left.write_text("{}")
    assert sweep_temp_files(tmp_path) == [left] and not left.exists() and kept.exists()
