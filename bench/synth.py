"""Synthetic scanner: speed per stage and how scan-like the scans are, against a naive peer.

For each kind (A-pose body, posed body, head and hand close-ups, raw point cloud, mannequin)
and ``--count`` subjects, times every stage of the scanner (pose, ray casting with noise and
dropouts, voxel merge + normals, Poisson + crop) and scores the result against its truth:

- ``gt_mm``: mean / 95th percentile distance (mm) of the observed truth vertices to the scan
  surface (the scanner's noise after Poisson smoothing; the tests require a mean < 2 mm);
- ``seen %``: surface vertices of the region with a scanner sample within 5 mm;
- ``holes %`` in the places a booth cannot see: soles, armpits, crotch (vertices with no scan
  vertex within 1 cm).

Peer, in the same run on the same posed bodies: the naive synthetic scan (uniform samples on the
whole template surface, the same depth noise, the same Poisson + crop): what one gets without
simulating cameras. It has no holes at all, i.e. it is not what a scanner delivers; the ratio
column is ours / peer wall time. ``cpu_s`` is the process CPU time (all threads): on a shared
machine it is the steadier number; wall times grow with the load.

    .venv/bin/python bench/synth.py               # 2 subjects per kind, ~2-4 min
    .venv/bin/python bench/synth.py --count 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import open3d as o3d  # noqa: E402
import torch  # noqa: E402
from pykdtree.kdtree import KDTree  # noqa: E402

from ghum_pipe.synth import generate as gen  # noqa: E402
from ghum_pipe.synth import scanner as sc  # noqa: E402
from ghum_pipe.template import load_template  # noqa: E402


def regions(t) -> dict[str, np.ndarray]:
    """(V,) bool masks of the places a booth sees badly, on the rest template."""
    v, j = t.rest_verts, lambda n: t.rest_joints[t.joint_index(n)]
    feet = t.masks["feet"]
    out = {"soles": feet & (v[:, 2] < v[feet, 2].min() + 0.01)}
    normal_z = t.to_trimesh().vertex_normals[:, 2]
    # the axilla vault: skin under the shoulder joint, between arm and chest, facing down
    pits = np.zeros(len(v), bool)
    for s in "LR":
        sh = j(f"upperarm01.{s}")
        dx = np.abs(v[:, 0]) - abs(sh[0])
        pits |= (dx > -0.07) & (dx < 0.01) & (v[:, 2] > sh[2] - 0.16) & (v[:, 2] < sh[2] - 0.03) & (
            np.abs(v[:, 1] - sh[1]) < 0.04) & (np.sign(v[:, 0]) == np.sign(sh[0]))
    out["armpits"] = pits & t.masks["surface"] & (normal_z < -0.3)
    # the crotch: skin between the thighs' tops, facing down
    hips = (j("upperleg01.L") + j("upperleg01.R")) / 2
    out["crotch"] = (np.abs(v[:, 0]) < 0.05) & (v[:, 2] < hips[2]) & (v[:, 2] > hips[2] - 0.2) & (
        np.abs(v[:, 1] - hips[1]) < 0.06) & (normal_z < -0.3) & t.masks["surface"]
    return out


def distance_to_mesh(verts, faces, points) -> np.ndarray:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def score(t, masks, verts_t, scan_v, scan_f, observed, region=None) -> dict:
    """Quality numbers for one scan in the template frame (metres)."""
    surface = t.masks["surface"] if region is None else (t.masks["surface"] & region)
    obs = observed & surface
    row = {"seen": 100 * obs.sum() / surface.sum()}
    if scan_f is not None:
        d = distance_to_mesh(scan_v, scan_f, verts_t[obs]) * 1000
        row.update(gt_mean=d.mean(), gt_p95=np.percentile(d, 95))
    if region is None:
        tree = KDTree(scan_v)
        for name, m in masks.items():
            row[name] = 100 * (tree.query(verts_t[m], k=1)[0] > 0.01).mean()
    return row


def timed_body(t, seed, i, config, masks, point_cloud=False) -> dict:
    """One body scan, stage by stage (the same calls as generate.body_scan)."""
    rng = np.random.default_rng([seed, i, gen.STREAM_POSE])
    sub = gen.make_subject(t, seed, i, config)
    t0, c0 = time.perf_counter(), time.process_time()
    pose = gen._poser(t).sample(rng) if config.posed else np.zeros((t.n_joints, 3))
    v, _ = gen.pose_template(t, sub.betas, pose, np.zeros(t.n_expression))
    t1 = time.perf_counter()
    rng_scan = np.random.default_rng([seed, i, gen.STREAM_SCANNER])
    s = t.masks["surface"]
    cams = sc.ring_cameras(v[s].min(0), v[s].max(0), azimuth0=rng_scan.uniform(0, 2 * np.pi))
    samples = sc.scan_samples(v, t.faces, sub.colors, cams, config.scanner, rng_scan)
    t2 = time.perf_counter()
    pcd = sc.merge_samples(samples, config.scanner)
    t3 = time.perf_counter()
    observed = KDTree(samples.points).query(v, k=1)[0] < gen.OBSERVED_M
    if point_cloud:
        row = score(t, masks, v, np.asarray(pcd.points), None, observed)
        sv = np.asarray(pcd.points)
    else:
        sv, sf, _ = sc.reconstruct(pcd, config.scanner)
        row = score(t, masks, v, sv, sf, observed)
    t4 = time.perf_counter()
    row.update(pose_s=t1 - t0, rays_s=t2 - t1, merge_s=t3 - t2, poisson_s=t4 - t3, total_s=t4 - t0,
               cpu_s=time.process_time() - c0, n_verts=len(sv))
    return row, v


def naive_peer(t, verts, rng, config, masks) -> dict:
    """Uniform noisy samples of the whole surface (no cameras) -> the same merge and Poisson."""
    import trimesh

    t0, c0 = time.perf_counter(), time.process_time()
    surf_faces = t.faces[t.masks["surface"][t.faces].all(1)]
    mesh = trimesh.Trimesh(verts, surf_faces, process=False)
    pts, fid = trimesh.sample.sample_surface(mesh, 300_000, seed=int(rng.integers(1 << 31)))
    n = mesh.face_normals[fid]
    pts = pts + n * rng.normal(0, config.scanner.noise_m, (len(pts), 1))
    samples = sc.ScanSamples(pts, n, np.full((len(pts), 3), 200, np.uint8), len(pts), len(pts))
    pcd = sc.merge_samples(samples, config.scanner)
    sv, sf, _ = sc.reconstruct(pcd, config.scanner)
    elapsed = time.perf_counter() - t0
    observed = KDTree(pts).query(verts, k=1)[0] < gen.OBSERVED_M
    row = score(t, masks, verts, sv, sf, observed)
    row.update(total_s=elapsed, cpu_s=time.process_time() - c0, n_verts=len(sv))
    return row


def closeup_rows(t, seed, i, config) -> list[tuple[str, dict]]:
    rows = []
    for kind in gen.CLOSEUP_KINDS[:2]:  # head, left hand
        t0, c0 = time.perf_counter(), time.process_time()
        scan = gen.closeup_scans(t, seed, i, config, kinds=(kind,))[0]
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        tr = scan.truth
        inv = np.linalg.inv(tr["transform"])
        sv = scan.verts @ inv[:3, :3].T + inv[:3, 3]
        v = tr["verts"] @ inv[:3, :3].T + inv[:3, 3]
        row = score(t, {}, v, sv, scan.faces, tr["observed"], region=tr["region_mask"])
        row.update(total_s=elapsed, cpu_s=cpu, n_verts=len(sv))
        rows.append((kind, row))
    return rows


def mannequin_row(seed, i) -> dict:
    import trimesh

    from ghum_pipe.synth.mannequin import mannequin_scan

    t0, c0 = time.perf_counter(), time.process_time()
    scan = mannequin_scan(seed, i)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = trimesh.Trimesh(scan.verts, scan.faces, process=False)
    return {"total_s": elapsed, "cpu_s": cpu, "n_verts": len(scan.verts), "height_m": float(np.ptp(scan.verts[:, 1])),
            "watertight": float(m.is_watertight)}


def fmt_table(rows: list[tuple[str, dict]]) -> str:
    cols = ["total_s", "cpu_s", "pose_s", "rays_s", "merge_s", "poisson_s", "n_verts", "gt_mean", "gt_p95", "seen",
            "soles", "armpits", "crotch", "height_m", "watertight", "ratio"]
    used = [c for c in cols if any(c in r for _, r in rows)]
    head = f"{'kind':<22}" + "".join(f"{c:>11}" for c in used)
    lines = [head, "-" * len(head)]
    for name, r in rows:
        cells = []
        for c in used:
            x = r.get(c)
            cells.append(f"{'':>11}" if x is None else f"{x:>11.0f}" if c == "n_verts" else f"{x:>11.2f}")
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


def mean_rows(rows: list[dict]) -> dict:
    keys = set.intersection(*(set(r) for r in rows))
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2)
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = load_template()
    masks = regions(t)
    table: dict[str, list[dict]] = {}
    for i in range(args.count):
        for name, cfg, pc in (("body A-pose", gen.SynthConfig(), False), ("body posed", gen.SynthConfig(posed=True), False),
                              ("body point cloud", gen.SynthConfig(), True)):
            row, verts = timed_body(t, args.seed, i, cfg, masks, point_cloud=pc)
            table.setdefault(name, []).append(row)
            if name == "body posed":
                peer = naive_peer(t, verts, np.random.default_rng([args.seed, i, 99]), cfg, masks)
                peer["ratio"] = row["total_s"] / peer["total_s"]
                table.setdefault("peer: naive posed", []).append(peer)
        for kind, row in closeup_rows(t, args.seed, i, gen.SynthConfig(expressions=True)):
            table.setdefault(f"close-up {kind}", []).append(row)
        table.setdefault("mannequin", []).append(mannequin_row(args.seed, i))
    rows = [(k, mean_rows(v)) for k, v in table.items()]
    import os

    print(f"ghum-pipe synth, {args.count} subjects per kind, torch 1 thread, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; means; times in s, distances in mm, "
          f"seen/holes in % of the region's vertices")
    print(fmt_table(rows))


if __name__ == "__main__":
    main()
