"""Real batches through the command line (``python -m ghum_pipe.cli``) on real Dask clusters:
bad scans among good ones, resuming, a run killed midway, an external scheduler whose worker dies.

Scans are the template mesh (posed at rest, scaled, in m or mm, +Z or +Y up) written as PLY, plus
broken files. The ingest stage is the workload: real reads and checks, fast enough for CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cli(*args, timeout=240, check_rc=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ghum_pipe.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def write_body(path: Path, verts_m: np.ndarray, faces: np.ndarray, units: str = "m", up: str = "z") -> None:
    """Template-like body (metres, +Z up) written in ``units`` with ``up`` as the file's up axis."""
    v = verts_m * {"m": 1.0, "mm": 1000.0}[units]
    if up == "y":  # +Z up -> +Y up: (x, y, z) -> (x, z, -y)
        v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1)
    trimesh.Trimesh(v, faces, process=False).export(path)


def write_bad_files(folder: Path) -> dict[str, str]:
    """Broken inputs and a word their error must contain."""
    (folder / "empty.ply").write_bytes(b"")
    good = trimesh.creation.box().export(file_type="ply")
    (folder / "truncated.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 90000\n"
                                           b"property float x\nproperty float y\nproperty float z\nend_header\n"
                                           + b"\x00" * 1000)
    trimesh.creation.icosphere(subdivisions=5, radius=0.6).export(folder / "ball.ply")
    (folder / "readme.txt").write_text("not a scan")
    del good
    return {"empty": "empty", "truncated": "truncated", "ball": "does not look like a person", "readme": "readme.txt"}


@pytest.fixture(scope="module")
def body(template):
    mesh = template.to_trimesh()
    return np.asarray(mesh.vertices, float), np.asarray(mesh.faces)


@pytest.fixture(scope="module")
def big_body(body):
    """The template subdivided once (~55k vertices): ingest takes a few tenths of a second, long
    enough to interrupt a batch midway."""
    v, f = trimesh.remesh.subdivide(*body)
    return v, f


def manifest(work: Path) -> dict:
    return json.loads((work / "manifest.json").read_text())["scans"]


def finished(work: Path, stage="ingest") -> dict[str, str]:
    return {i: r["stages"][stage]["finished"] for i, r in manifest(work).items()
            if r["stages"].get(stage, {}).get("status") == "done"}


def temp_files(work: Path) -> list[Path]:
    return [p for p in work.rglob("*") if ".tmp" in p.name]


def test_mixed_batch_reports_each_bad_scan_and_resumes(tmp_path, body):
    scans = tmp_path / "scans"
    scans.mkdir()
    height = np.ptp(body[0][:, 2])
    write_body(scans / "m_z.ply", *body)
    write_body(scans / "mm_z.ply", body[0] * 1.1, body[1], units="mm")
    write_body(scans / "mm_y.ply", body[0] * 0.9, body[1], units="mm", up="y")
    bad = write_bad_files(scans)
    work = tmp_path / "W"

    proc = cli("ingest", scans, scans / "readme.txt", "--work", work, "--workers", "2", "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED ")]
    assert len(failed) == 4, proc.stdout
    for scan_id, word in bad.items():
        (line,) = [f for f in failed if f.startswith(f"FAILED {scan_id} [ingest]: ")]
        assert word in line
        log = Path(line.split("(log: ")[1].rstrip(")"))
        assert log.is_file() and word.split()[0] in log.read_text()
    assert lines[-1] == "FAILED: 7 scan(s); ingest: 3 done, 0 up to date, 4 failed"

    info = {i: json.loads((work / "scans" / i / "scan.json").read_text()) for i in ("m_z", "mm_z", "mm_y")}
    assert [info[i]["units"] for i in ("m_z", "mm_z", "mm_y")] == ["m", "mm", "mm"]
    assert info["mm_y"]["up"] == "+y" and info["m_z"]["up"] == "+z"
    for i, scale in (("m_z", 1.0), ("mm_z", 1.1), ("mm_y", 0.9)):
        assert abs(info[i]["height_m"] - scale * height) < 1e-3  # metres, +Z up inside
    for i in bad:
        assert not (work / "scans" / i / "scan.json").exists()
    first = finished(work)

    # rerun: the good scans are up to date, the bad ones are tried again and fail again
    proc = cli("ingest", scans, "--work", work, "--workers", "1", "-q")
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "FAILED: 6 scan(s); ingest: 0 done, 3 up to date, 3 failed"
    assert finished(work) == first

    # only good scans: exit 0; a changed config redoes them, --force too
    proc = cli("ingest", scans, "--work", work, "--only", "m_z", "--only", "mm_z", "--up", "+z", "-q", check_rc=0)
    assert proc.stdout.strip() == "OK: 2 scan(s); ingest: 2 done, 0 up to date, 0 failed"
    second = finished(work)
    assert second["m_z"] > first["m_z"] and second["mm_y"] == first["mm_y"]
    proc = cli("ingest", scans, "--work", work, "--only", "m_z", "--up", "+z", "-q", check_rc=0)
    assert "0 done, 1 up to date" in proc.stdout
    proc = cli("ingest", scans, "--work", work, "--only", "m_z", "--up", "+z", "--force", "-q", check_rc=0)
    assert "1 done, 0 up to date" in proc.stdout and finished(work)["m_z"] > second["m_z"]

    # status: one row per scan with the reason, and the totals
    proc = cli("status", "--work", work, check_rc=1)  # exit 1: scans failed
    assert "does not look like a person" in proc.stdout and "3 done, 4 failed" in proc.stdout
    assert not temp_files(work)
    # nothing written next to the inputs
    assert sorted(p.name for p in scans.iterdir()) == sorted(
        ["m_z.ply", "mm_z.ply", "mm_y.ply", "empty.ply", "truncated.ply", "ball.ply", "readme.txt"])


def test_killed_run_resumes_without_recomputing(tmp_path, big_body):
    scans = tmp_path / "scans"
    scans.mkdir()
    n = 24
    for i in range(n):
        write_body(scans / f"s{i:02d}.ply", big_body[0] * (0.9 + 0.01 * i), big_body[1], units="mm" if i % 2 else "m")
    work = tmp_path / "W"
    cmd = [sys.executable, "-m", "ghum_pipe.cli", "ingest", str(scans), "--work", str(work), "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (work / "manifest.json").exists() and len(finished_safe(work)) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert out.strip().splitlines()[-1].startswith("INTERRUPTED: 24 scan(s); ingest: ")
    before = finished(work)
    assert 3 <= len(before) < n, "the run was not interrupted midway"
    assert not temp_files(work)
    for d in (work / "scans").iterdir():  # every output is whole
        if (d / "scan.json").exists():
            json.loads((d / "scan.json").read_text())

    proc = cli("ingest", scans, "--work", work, "--workers", "2", "-q", check_rc=0)
    done_now = int(proc.stdout.split("ingest: ")[1].split(" done")[0])
    assert done_now <= n - len(before)
    after = finished(work)
    assert len(after) == n
    assert {i: after[i] for i in before} == before  # finished scans were not recomputed
    assert not temp_files(work)


def finished_safe(work: Path) -> dict:
    try:
        return finished(work)
    except (ValueError, KeyError, OSError):
        return {}


def test_external_scheduler_survives_a_dead_worker(tmp_path, big_body):
    scans = tmp_path / "scans"
    scans.mkdir()
    n = 16
    # subdivided once more (~220k vertices): with ghum-pipe's worker allocator the big body's
    # ingest got fast enough (~0.1 s) that the whole batch could end before w0 was killed
    verts, faces = trimesh.remesh.subdivide(*big_body)
    for i in range(n):
        write_body(scans / f"s{i:02d}.ply", verts * (0.95 + 0.01 * i), faces)
    sched_file = tmp_path / "scheduler.json"
    procs = []

    def start(*args, env=ENV, cwd=REPO):
        p = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=cwd, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(sched_file))
        worker_args = ("distributed.cli.dask_worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                       "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1")
        # first a worker whose environment has a broken ghum_pipe: refused before any task runs
        shadow = tmp_path / "shadow" / "ghum_pipe"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('not this ghum_pipe')\n")
        stray = start(*worker_args, "--name", "stray", env={**os.environ, "PYTHONPATH": str(shadow.parent)},
                      cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        _wait_for_workers(address, 1)
        work = tmp_path / "W"
        res = cli("ingest", scans, "--work", work, "--scheduler", address, "-q")
        assert res.returncode == 2 and "cannot import ghum_pipe" in res.stderr, res.stdout + res.stderr
        os.killpg(stray.pid, signal.SIGTERM)
        stray.wait(timeout=30)

        workers = [start(*worker_args, "--name", f"w{k}") for k in range(2)]
        _wait_for_workers(address, 2, exactly=True)
        run = subprocess.Popen([sys.executable, "-m", "ghum_pipe.cli", "ingest", str(scans), "--work", str(work),
                                "--scheduler", address, "--retries", "2", "-q"],
                               env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(run)
        victim = _worker_address(address, "w0")
        # kill w0 (the worker and its nanny) once it has finished a scan, while scans remain
        while time.monotonic() < deadline + 90 and not any(
                r["stages"].get("ingest", {}).get("worker") == victim for r in manifest_safe(work).values()):
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)
        assert len(finished_safe(work)) < n, "the batch ended before the worker was killed"
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, out + err
        assert out.strip() == f"OK: {n} scan(s); ingest: {n} done, 0 up to date, 0 failed"
        records = [r["stages"]["ingest"] for r in manifest(work).values()]
        assert all(r["status"] == "done" for r in records) and len(records) == n
        by_victim = sum(r["worker"] == victim for r in records)
        assert 1 <= by_victim < n  # w0 took part before it died, w1 finished the batch
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def manifest_safe(work: Path) -> dict:
    try:
        return manifest(work)
    except (ValueError, KeyError, OSError):
        return {}


def _worker_address(address: str, name: str) -> str:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == name)


def _wait_for_workers(address: str, n: int, exactly: bool = False) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=60)
        deadline = time.monotonic() + 30
        while exactly and len(client.scheduler_info()["workers"]) != n and time.monotonic() < deadline:
            time.sleep(0.1)
