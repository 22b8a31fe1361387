"""Pictures for the HTML report: metric histograms (matplotlib) and a multi-view image of the
registration over its scan (ray cast with ``ghum_pipe.landmarks.render``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import atomic_path

# Registration drawn over the scan in this colour (sRGB 0-1) at OVERLAY_ALPHA.
REG_RGB = np.array([0.20, 0.45, 0.95])
OVERLAY_ALPHA = 0.55
VIEW_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)  # front (from -Y), left side, back, right side


def histogram_png(path: Path, values: dict[str, list[float]], title: str, xlabel: str) -> None:
    """One histogram per series (overlaid) of finite ``values``; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    for label, vals in values.items():
        vals = np.asarray([v for v in vals if v is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), alpha=0.6, label=f"{label} (n={len(vals)})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("scans")
    if len(values) > 1 or values:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _ring_cameras(verts_m: np.ndarray, size: int):
    """Cameras around +Z framing the (N, 3) points (metres), one per ``VIEW_AZIMUTHS_DEG``."""
    from ghum_pipe.landmarks.render import Camera

    lo, hi = verts_m.min(0), verts_m.max(0)
    centre = (lo + hi) / 2
    dist = 1.15 * float(np.max(hi - lo)) / (2 * np.tan(np.deg2rad(15)))
    cams = []
    for az in np.deg2rad(VIEW_AZIMUTHS_DEG):
        eye = centre + dist * np.array([np.sin(az), -np.cos(az), 0.0])
        cams.append(Camera.look_at(eye, centre, fov_deg=30, size=size))
    return cams


def _splat(points: np.ndarray, colors: np.ndarray | None, camera, background) -> tuple[np.ndarray, np.ndarray]:
    """Render a point cloud as 1-pixel splats with a depth test: rgb (H, W, 3) float, depth (H, W)."""
    uv, depth = camera.project(points)
    h, w = camera.height, camera.width
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    ok = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h) & (depth > 0)
    flat = rows[ok] * w + cols[ok]
    zbuf = np.full(h * w, np.inf)
    np.minimum.at(zbuf, flat, depth[ok])
    front = depth[ok] <= zbuf[flat] + 1e-9
    rgb = np.empty((h * w, 3))
    rgb[:] = background
    col = np.full((ok.sum(), 3), 0.55) if colors is None else np.asarray(colors, float)[ok][:, :3] / 255.0
    rgb[flat[front]] = col[front]
    return rgb.reshape(h, w, 3), zbuf.reshape(h, w)


def overlay_png(path: Path, scan, reg_verts_m: np.ndarray | None, reg_faces: np.ndarray | None,
                size: int = 256) -> None:
    """Top row: the scan from 4 sides; bottom row: the registration (blue, translucent where the
    scan is in front of it) over the scan. scan: a ``ghum_pipe.io.Scan`` (metres, +Z up);
    reg_verts_m: (V, 3) registration vertices in the same frame, or None (scan only)."""
    from PIL import Image

    from ghum_pipe.landmarks.render import BACKGROUND_RGB, MeshRenderer

    bg = np.asarray(BACKGROUND_RGB)
    cams = _ring_cameras(scan.verts, size)
    scan_r = None if scan.faces is None or len(scan.faces) == 0 else MeshRenderer(scan.verts, scan.faces, scan.colors)
    reg_r = None if reg_verts_m is None else MeshRenderer(reg_verts_m, reg_faces, np.tile(REG_RGB, (len(reg_verts_m), 1)))
    top, bottom = [], []
    for cam in cams:
        if scan_r is not None:
            res = scan_r.render(cam)
            scan_rgb, scan_depth = res.rgb / 255.0, res.depth
        else:
            scan_rgb, scan_depth = _splat(scan.verts, scan.colors, cam, bg)
        top.append(scan_rgb)
        if reg_r is None:
            bottom.append(scan_rgb)
            continue
        reg = reg_r.render(cam)
        hit = reg.tri_id >= 0
        # registration in front of the scan: opaque blue; behind it: a translucent tint
        alpha = np.where(reg.depth <= scan_depth + 0.005, 0.9, OVERLAY_ALPHA)[..., None] * hit[..., None]
        bottom.append(scan_rgb * (1 - alpha) + reg.rgb / 255.0 * alpha)
    grid = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)).save(tmp)


def render_overlay(scan_path: str, scan_dir: str, reg_file: str | None, out: str) -> str | None:
    """Task form of :func:`overlay_png` from files: the scan (with the frame and kind ingest
    recorded in ``scan_dir/scan.json``) and its ``registration.ply`` (in the scan file's frame;
    None: the scan's views only). Returns None, or the error in one line (a picture that cannot be
    made must not stop the report)."""
    try:
        import trimesh

        from ghum_pipe.io.scan_record import load_recorded_scan

        scan, _ = load_recorded_scan(scan_path, scan_dir)
        if reg_file is None:
            overlay_png(Path(out), scan, None, None)
            return None
        reg = trimesh.load(reg_file, process=False, force="mesh")
        overlay_png(Path(out), scan, scan.frame.to_internal(np.asarray(reg.vertices)), np.asarray(reg.faces))
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
