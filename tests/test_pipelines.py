"""Work-dir bookkeeping (manifest keys, markers, lock, temp sweep), scan ids and cluster options.
Fast: no Dask workers here (tests/test_pipelines_batch.py runs real batches)."""

from __future__ import annotations

import json
import os

import pytest

from ghum_pipe.pipelines.cluster import ClusterError, ClusterOptions, build_jobqueue_cluster, load_cluster_config
from ghum_pipe.pipelines.manifest import (
    Manifest, ManifestLock, ThrottledSaver, WorkDirError, config_hash, file_hash, flatten_numeric, marker_path,
    stage_key,
    sweep_temp_files,
)
from ghum_pipe.pipelines.scans import discover_scans
from ghum_pipe.pipelines.stages import STAGES, closure


def test_stage_closure_and_keys():
    assert closure(("register",)) == ("ingest", "landmark", "register")
    assert closure(("ingest",)) == ("ingest",)
    # the key changes with the scan content, the config and the upstream key, nothing else
    k = stage_key("landmark", "h1", "c1", ["u1"])
    assert k == stage_key("landmark", "h1", "c1", ["u1"])
    assert len({k, stage_key("landmark", "h2", "c1", ["u1"]), stage_key("landmark", "h1", "c2", ["u1"]),
                stage_key("landmark", "h1", "c1", ["u2"]), stage_key("register", "h1", "c1", ["u1"])}) == 5
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 1, "b": 3})


def test_stage_config_overrides_only_declared_fields():
    cfg = STAGES["ingest"].default_config(units="mm", up=None, device="cuda")
    assert (cfg.units, cfg.up, cfg.min_points) == ("mm", None, 2000)


def test_manifest_rehashes_only_changed_files(tmp_path):
    scan = tmp_path / "a.ply"
    scan.write_bytes(b"x" * 3000)
    m = Manifest.load(tmp_path / "W")
    m.add_scans({"a": scan})
    h1 = m.scans["a"]["input_hash"]
    assert h1 == file_hash(scan) and len(h1) == 32
    m.save()
    m2 = Manifest.load(tmp_path / "W")
    assert m2.scans["a"]["input_hash"] == h1
    scan.write_bytes(b"y" * 3000)  # same size, new content and mtime
    os.utime(scan, ns=(0, m2.scans["a"]["mtime_ns"] + 10**9))
    m2.add_scans({"a": scan})
    assert m2.scans["a"]["input_hash"] == file_hash(scan) != h1
    m2.add_scans({"gone": tmp_path / "missing.ply"})
    assert m2.scans["gone"]["input_hash"].startswith("missing:")
    # another file with an id already in the work dir would overwrite its results: refused
    other = tmp_path / "sub" / "a.ply"
    other.parent.mkdir()
    other.write_bytes(b"z" * 3000)
    with pytest.raises(WorkDirError, match=r"scan id\(s\) already used by other files in this work dir: a \("):
        m2.add_scans({"a": other})
    scan.rename(tmp_path / "moved.ply")  # the same scan moved: fine, same content hash
    m2.add_scans({"a": tmp_path / "moved.ply"})
    assert m2.scans["a"]["input_hash"] == file_hash(tmp_path / "moved.ply")


def test_is_current_needs_key_outputs_and_adopts_markers(tmp_path):
    work = tmp_path / "W"
    m = Manifest.load(work)
    folder = work / "scans" / "a"
    folder.mkdir(parents=True)
    assert not m.is_current("a", "ingest", "k1", ("scan.json",))
    (folder / "scan.json").write_text("{}")
    m.set_stage("a", "ingest", {"status": "done", "key": "k1"})
    assert m.is_current("a", "ingest", "k1", ("scan.json",))
    assert not m.is_current("a", "ingest", "k2", ("scan.json",))  # config or input changed
    m.set_stage("a", "ingest", {"status": "failed", "key": "k1"})
    assert not m.is_current("a", "ingest", "k1", ("scan.json",))
    # a run killed after the task finished but before the manifest was saved left a marker
    marker = marker_path(work, "a", "ingest")
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"status": "done", "key": "k1", "finished": "t0"}))
    assert m.is_current("a", "ingest", "k1", ("scan.json",))
    assert m.stage("a", "ingest")["finished"] == "t0"
    (folder / "scan.json").unlink()  # output deleted by the user: redo
    assert not m.is_current("a", "ingest", "k1", ("scan.json",))


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": 1, "scans": {')
    with pytest.raises(WorkDirError, match="manifest.json: manifest is unreadable"):
        Manifest.load(tmp_path)


def test_lock_is_exclusive_and_released(tmp_path):
    with ManifestLock(tmp_path):
        with pytest.raises(WorkDirError, match="another ghum-pipe run"):
            with ManifestLock(tmp_path):
                pass
    with ManifestLock(tmp_path):  # released
        pass


def test_throttled_saver_and_temp_sweep(tmp_path):
    m = Manifest(tmp_path, {"a": {"stages": {}}})
    saver = ThrottledSaver(m)
    saver.touch()
    assert json.loads((tmp_path / "manifest.json").read_text())["scans"] == {"a": {"stages": {}}}
    saver = ThrottledSaver(m, min_interval_s=3600)
    m.scans["b"] = {"stages": {}}
    saver.touch()  # the first result: written at once
    m.scans["c"] = {"stages": {}}
    saver.touch()  # within the interval: not written yet
    assert "c" not in json.loads((tmp_path / "manifest.json").read_text())["scans"]
    saver.flush()
    assert "c" in json.loads((tmp_path / "manifest.json").read_text())["scans"]
    (tmp_path / "scans" / "a").mkdir(parents=True)
    tmp = tmp_path / "scans" / "a" / ".registration.x1y2.tmp.ply"
    tmp.write_text("half")
    keep = tmp_path / "scans" / "a" / "registration.ply"
    keep.write_text("whole")
    assert sweep_temp_files(tmp_path) == [tmp]
    assert not tmp.exists() and keep.exists()


def test_discover_scans_ids(tmp_path):
    for rel in ("s1/scan.ply", "s2/scan.ply", "b.obj", "b.ply", "c.xyz", "notes.txt", ".hidden/d.ply"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    found = discover_scans([tmp_path])
    assert sorted(found) == ["b_obj", "b_ply", "c", "s1__scan", "s2__scan"]
    assert found["s2__scan"] == (tmp_path / "s2" / "scan.ply").resolve()
    # an explicit file is taken whatever its suffix (ingest reports it)
    assert list(discover_scans([tmp_path / "notes.txt"])) == ["notes"]
    with pytest.raises(WorkDirError, match="no such scan file"):
        discover_scans([tmp_path / "nope.ply"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkDirError, match="folder has no scan files"):
        discover_scans([tmp_path / "empty"])


def test_flatten_numeric():
    assert flatten_numeric({"a": 1, "b": {"c": 2.5, "d": "x", "e": [1, 2]}, "f": float("nan"), "g": True}) == {
        "a": 1.0, "b.c": 2.5}
    per_landmark = {f"lm{i}": float(i) for i in range(40)}
    assert flatten_numeric({"mean_mm": 1.5, "residual_mm": per_landmark}) == {"mean_mm": 1.5}


def test_manifest_records_are_compact(tmp_path):
    m = Manifest(tmp_path, {})
    config = {"ring_views": 8, "units": None}
    per_landmark = {f"lm{i}": float(i) for i in range(500)}
    for i in range(3):
        m.set_stage(f"s{i}", "landmark", {"status": "done", "key": "k", "config_hash": "c1", "config": config,
                                          "metrics": {"mean_mm": 1.0 + i, "per_landmark_mm": per_landmark}})
    m.save()
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["configs"] == {"c1": config}  # once, not per scan
    assert data["scans"]["s2"]["stages"]["landmark"]["metrics"] == {"mean_mm": 3.0}
    assert "config" not in data["scans"]["s2"]["stages"]["landmark"]
    assert Manifest.load(tmp_path).config("c1") == config


def test_cluster_options_validation():
    assert ClusterOptions(workers=3).local_workers() == 3
    with pytest.raises(ClusterError, match="--workers 0"):
        ClusterOptions(workers=0)
    with pytest.raises(ClusterError, match="unknown batch system"):
        ClusterOptions(cluster="lsf")
    with pytest.raises(ClusterError, match="both given"):
        ClusterOptions(scheduler="tcp://127.0.0.1:8786", cluster="slurm")


def test_cluster_config_files(tmp_path):
    flat = tmp_path / "c.yaml"
    flat.write_text("cores: 4\nmemory: 16GB\nqueue: short\n")
    assert load_cluster_config(flat, "slurm") == {"cores": 4, "memory": "16GB", "queue": "short"}
    nested = tmp_path / "c.json"
    nested.write_text(json.dumps({"jobqueue": {"pbs": {"cores": 2, "memory": "8GB"}}}))
    assert load_cluster_config(nested, "pbs") == {"cores": 2, "memory": "8GB"}
    with pytest.raises(ClusterError, match="no jobqueue.slurm section"):
        load_cluster_config(nested, "slurm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cores: [4\n")
    with pytest.raises(ClusterError, match="bad.yaml: cannot parse cluster config"):
        load_cluster_config(bad, "slurm")
    lacking = tmp_path / "lacking.yaml"
    lacking.write_text("queue: short\n")
    with pytest.raises(ClusterError, match="lacks cores and memory"):
        build_jobqueue_cluster(ClusterOptions(cluster="slurm", cluster_config=str(lacking)), scale=False)


@pytest.mark.parametrize("kind,directive", [("slurm", "#SBATCH"), ("pbs", "#PBS"), ("sge", "#$")])
def test_jobqueue_cluster_job_script(tmp_path, kind, directive):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("cores: 4\nmemory: 16GB\nqueue: short\nwalltime: '02:00:00'\n"
                   "job_script_prologue: ['source /opt/venv/bin/activate']\n")
    cluster = build_jobqueue_cluster(ClusterOptions(cluster=kind, cluster_config=str(cfg), workers=3), scale=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert directive in script
    assert "short" in script and "source /opt/venv/bin/activate" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 4" in script
    if kind == "slurm":
        assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH -t 02:00:00" in script


def test_overlay_of_a_point_cloud_scan(tmp_path, template):
    """Point-cloud scans are splatted (no mesh to ray cast); the registration is drawn over them."""
    import numpy as np
    from PIL import Image

    from ghum_pipe.io import load_scan
    from ghum_pipe.landmarks.render import BACKGROUND_RGB
    from ghum_pipe.pipelines.report_plots import overlay_png

    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, template.rest_verts * 1000.0, fmt="%.3f")  # mm
    scan = load_scan(cloud)
    assert scan.is_point_cloud and scan.frame.units == "mm"
    out = tmp_path / "overlay.png"
    overlay_png(out, scan, np.asarray(template.rest_verts), np.asarray(template.faces), size=128)
    img = np.asarray(Image.open(out).convert("RGB"), float)
    assert img.shape == (256, 512, 3)
    top, bottom = img[:128], img[128:]
    background = np.abs(top - np.asarray(BACKGROUND_RGB) * 255).sum(-1) < 6
    assert 0.02 < (~background).mean() < 0.5  # the splatted body covers part of each view
    assert (bottom[..., 2] > bottom[..., 0] + 60).mean() > 0.02  # the registration in blue


def test_forced_units_and_up_reach_every_stage_that_reads_the_scan():
    """`--units/--up` must give ingest, landmark and register the same frame."""
    from ghum_pipe.pipelines.stages import STAGES

    for name in ("ingest", "landmark", "register"):
        cfg = STAGES[name].default_config(units="mm", up="+y")
        assert (cfg.units, cfg.up) == ("mm", "+y"), name
