"""The command line: help texts, set-up errors, the --cluster path, status and the HTML report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from PIL import Image

from ghum_pipe.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cli(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghum_pipe.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("command", ["ingest", "landmark", "register", "run", "status", "report"])
def test_every_command_has_help_with_an_example(command):
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and f"ghum-pipe {command}" in res.output
    if command in ("ingest", "landmark", "register", "run"):
        for opt in ("--work", "--workers", "--threads-per-worker", "--scheduler", "--cluster", "--cluster-config",
                    "--retries", "--force", "--only", "--units", "--up", "--verbose", "--quiet"):
            assert opt in res.output, (command, opt)


def test_module_entry_point_and_version():
    res = cli("--version")
    assert res.returncode == 0 and re.fullmatch(r"ghum-pipe, version \d+\.\d+\.\d+\n", res.stdout)


def test_setup_errors_exit_2_with_one_line(tmp_path):
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "nope.ply"), "--work", str(tmp_path / "W")])
    assert res.exit_code == 2 and "nope.ply: no such scan file or folder" in res.output
    res = CliRunner().invoke(main, ["register", "--work", str(tmp_path / "W2")])
    assert res.exit_code == 2 and "no scans to process" in res.output
    for command in ("status", "report"):
        res = CliRunner().invoke(main, [command, "--work", str(tmp_path)])
        assert res.exit_code == 2 and "not a ghum-pipe work dir (no manifest.json)" in res.output
    res = CliRunner().invoke(main, ["ingest", str(tmp_path), "--work", str(tmp_path / "W"), "--workers", "0"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["ingest", str(tmp_path), "--work", str(tmp_path / "W"),
                                    "--cluster-config", "c.yaml"])
    assert res.exit_code == 2 and "--cluster-config without --cluster" in res.output


def test_cluster_slurm_builds_the_job_script_then_needs_sbatch(tmp_path, template):
    """No SLURM here: the job script is built and logged, then a clear error (not a hang)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    template.to_trimesh().export(scans / "a.ply")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("cores: 2\nmemory: 8GB\nqueue: short\nwalltime: '00:30:00'\n")
    res = cli("ingest", scans, "--work", tmp_path / "W", "--cluster", "slurm", "--cluster-config", cfg,
              "--workers", "3", "-v", timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "'sbatch' is not on PATH" in res.stderr
    assert "#SBATCH -p short" in res.stderr and "#SBATCH --cpus-per-task=2" in res.stderr


def _write_scans(folder: Path, template) -> None:
    folder.mkdir()
    mesh = template.to_trimesh()
    trimesh.Trimesh(mesh.vertices * 1000.0, mesh.faces, process=False).export(folder / "body_mm.ply")
    trimesh.Trimesh(mesh.vertices * 1.05, mesh.faces, process=False).export(folder / "body_m.ply")
    (folder / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 5000\nend_header\n1 2 3\n")


def test_status_and_report(tmp_path, template):
    scans, work = tmp_path / "scans", tmp_path / "W"
    _write_scans(scans, template)
    res = cli("ingest", scans, "--work", work, "--workers", "1", "-q")
    assert res.returncode == 1
    assert res.stdout.strip().splitlines()[-1] == "FAILED: 3 scan(s); ingest: 2 done, 0 up to date, 1 failed"

    # a registration of body_mm: the template itself, moved 2 cm to the side, in the scan's file
    # frame (mm), as the register stage writes it
    mesh = template.to_trimesh()
    reg = trimesh.Trimesh((mesh.vertices + [0.02, 0, 0]) * 1000.0, mesh.faces, process=False)
    reg.export(work / "scans" / "body_mm" / "registration.ply")
    (work / "scans" / "body_mm" / "metrics.json").write_text(json.dumps({"scan_to_reg_mean_mm": 4.2}))
    # and one of body_m, exactly over it (metres): the overlays are rendered on a Dask worker
    trimesh.Trimesh(mesh.vertices * 1.05, mesh.faces, process=False).export(
        work / "scans" / "body_m" / "registration.ply")

    res = CliRunner().invoke(main, ["status", "--work", str(work)])
    assert res.exit_code == 1  # a scan failed: scripts see it
    assert "body_mm" in res.output and "broken" in res.output and "2 done, 1 failed" in res.output
    res = cli("status", "--work", work, "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["totals"]["ingest"] == {"done": 2, "failed": 1}
    assert doc["scans"]["broken"]["stages"]["ingest"]["status"] == "failed"
    assert doc["scans"]["body_mm"]["stages"]["ingest"]["status"] == "done"

    res = cli("report", "--work", work, "--workers", "1")
    assert res.returncode == 0, res.stderr
    index = work / "report" / "index.html"
    assert res.stdout.strip() == f"report: {index}"
    page = index.read_text()
    for scan_id in ("body_mm", "body_m", "broken"):
        assert f"id='scan-{scan_id}'" in page
    assert "cannot read the file" in page or "truncated" in page
    assert "<table class='sortable compact'" in page and "addEventListener('click'" in page
    assert "scan→reg mean (mm)</th>" in page and ">4.2<" in page
    assert "http://" not in page and "https://" not in page  # offline
    srcs = re.findall(r"src='([^']+)'", page)
    assert not any(src.startswith("plots/") for src in srcs)  # 3 scans: no histogram says anything
    for src in srcs + re.findall(r"href='([^'#]+)'", page):
        assert (index.parent / src).is_file(), src
    # the overlay: scan on top, the (shifted) registration in blue over it below
    overlay = np.asarray(Image.open(work / "report" / "scans" / "body_mm" / "overlay.png").convert("RGB"), float)
    h = overlay.shape[0] // 2
    top, bottom = overlay[:h], overlay[h:]
    blue = (bottom[..., 2] > bottom[..., 0] + 60)
    assert blue.mean() > 0.02 and (top[..., 2] > top[..., 0] + 60).mean() < 0.001
    overlay_m = np.asarray(Image.open(work / "report" / "scans" / "body_m" / "overlay.png").convert("RGB"), float)
    assert ((overlay_m[h:, :, 2] > overlay_m[h:, :, 0] + 60).mean() > 0.02)
    assert not (work / "report" / "scans" / "broken").exists()  # no registration, no overlay


def test_stage_commands_are_registered():
    for name in ("synth", "train", "evaluate", "sample"):
        assert name in main.commands, name
        res = CliRunner().invoke(main, [name, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output, (name, res.output)


def test_one_cli_options_mean_the_same_everywhere():
    """-w/--work, -v, -q, --workers: the same spelling and meaning on every command; every option
    has help text and shows its default when it has one (required options and None have none)."""
    import click

    for name, cmd in sorted(main.commands.items()):
        opts = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        assert "-v" in opts and opts["-v"].count and "--verbose" in opts["-v"].opts, name
        assert "-q" in opts and opts["-q"].is_flag and "--quiet" in opts["-q"].opts, name
        if "--work" in opts:
            assert opts["--work"].opts == ["--work", "-w"], name
        if "--workers" in opts:
            assert isinstance(opts["--workers"].type, click.IntRange) and opts["--workers"].type.min == 1, name
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            assert p.help, (name, p.opts)
            real_default = (not p.required and not p.is_flag and not p.count and not p.multiple
                            and p.default is not None)
            assert not real_default or p.show_default, (name, p.opts, p.default)
    # the old spellings still work, hidden
    assert "--jobs" not in CliRunner().invoke(main, ["synth", "--help"]).output
    assert "--workers" in CliRunner().invoke(main, ["synth", "--help"]).output
    assert "--count" in CliRunner().invoke(main, ["sample", "--help"]).output
    assert "[default: auto]" in " ".join(CliRunner().invoke(main, ["register", "--help"]).output.split())


def test_user_errors_are_one_line_exit_2(tmp_path):
    """No traceback for the README's user errors; the message names the path (run as a user would)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.ply").write_text("ply\n")
    cases = [
        (("ingest", scans, "--work", blocker / "W"), "cannot write to this work dir"),  # --work under a file
        (("ingest", scans, "--work", "/proc/ghum-W"), "cannot write to this work dir"),  # a read-only file system
        (("report", "--work", tmp_path / "missing"), "no such work dir"),
        (("evaluate", "--model", tmp_path / "no-model", "--work", tmp_path), "no trained model here"),
        (("sample", "--model", tmp_path / "no-model", "--out", tmp_path / "s"), "no trained model here"),
        (("train", "--work", tmp_path, "--out", tmp_path / "M"), "no registrations"),
        (("evaluate", "--model", tmp_path, "--work", tmp_path), "no trained model here"),
    ]
    for args, message in cases:
        res = cli(*args, timeout=120)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
