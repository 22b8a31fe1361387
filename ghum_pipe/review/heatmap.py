"""The residual heat map (``residuals.png``): where the scan and its registration disagree, drawn
on the registration as a shaded mesh, seen from the body's own front and back.

Each registration vertex is coloured by the mean scan->registration distance of the scan samples
nearest to it; vertices no sample is nearest to (holes, the soles, the inside of the mouth) are
grey. The colour scale runs from 0 to the samples' p95 (at least 1 mm), so a good registration
still shows its pattern and a bad one does not saturate everything; the scale is printed on the
colour bar. "Front" is the direction the body faces (from its shoulders and hips), not the
scan's -Y: a scan of someone turned 90 degrees is still seen face on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import atomic_path

GREY = np.array([0.55, 0.55, 0.55])


def body_front(verts_m: np.ndarray, coco_regressor: np.ndarray, coco_names, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(3,) unit horizontal direction the body faces: perpendicular to ``up`` and to its
    right->left axis (shoulders and hips, through the template's COCO keypoint regressor
    (K, V)). Falls back to -Y (the template's own facing) when the axis is degenerate."""
    up = np.asarray(up, dtype=np.float64)
    k = np.asarray(coco_regressor) @ np.asarray(verts_m, dtype=np.float64)
    idx = {n: i for i, n in enumerate(coco_names)}
    left = sum(k[idx[f"left_{n}"]] - k[idx[f"right_{n}"]] for n in ("shoulder", "hip"))
    left = left - (left @ up) * up
    if np.linalg.norm(left) < 1e-6:
        return np.array([0.0, -1.0, 0.0])
    front = np.cross(left, up)  # the template (left = +X, up = +Z) faces -Y
    return front / np.linalg.norm(front)


def vertex_residuals_mm(verts_m: np.ndarray, scan_points_m: np.ndarray, dist_m: np.ndarray,
                        vertices: np.ndarray | None = None) -> np.ndarray:
    """(V,) mean scan->registration distance (mm) of the scan samples (N, 3) nearest to each
    registration vertex (among ``vertices`` (V,) bool, default all); nan where no sample is."""
    from ghum_pipe.register.backend import PointIndex

    V = len(verts_m)
    cand = np.arange(V) if vertices is None else np.flatnonzero(vertices)
    _, nn = PointIndex(np.asarray(verts_m)[cand]).query(np.asarray(scan_points_m, dtype=np.float64))
    owner = cand[nn[:, 0]]
    total = np.bincount(owner, weights=np.asarray(dist_m, dtype=np.float64) * 1e3, minlength=V)
    count = np.bincount(owner, minlength=V)
    out = np.full(V, np.nan)
    out[count > 0] = total[count > 0] / count[count > 0]
    return out


def colour_scale_mm(dist_m: np.ndarray) -> float:
    """Top of the colour scale: the samples' p95 in mm, rounded up to 0.5 mm, at least 1 mm."""
    p95 = float(np.percentile(np.asarray(dist_m) * 1e3, 95)) if len(dist_m) else 1.0
    return max(1.0, np.ceil(p95 * 2) / 2)


def render_residual_views(verts_m: np.ndarray, faces: np.ndarray, values_mm: np.ndarray, vmax_mm: float,
                          front: np.ndarray, size: tuple[int, int] = (320, 640), cmap: str = "inferno"):
    """Render the mesh coloured by ``values_mm`` (V,) (nan: grey) from ``front`` and from behind.
    Returns two (H, W, 3) uint8 images. The views frame the vertices that have a value."""
    import matplotlib

    from ghum_pipe.landmarks.render import Camera, MeshRenderer

    colours = np.tile(GREY, (len(verts_m), 1))
    seen = np.isfinite(values_mm)
    colours[seen] = matplotlib.colormaps[cmap](np.clip(values_mm[seen] / vmax_mm, 0.0, 1.0))[:, :3]
    pts = np.asarray(verts_m)[seen] if seen.sum() >= 3 else np.asarray(verts_m)
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    w, h = size
    fov = 30.0
    front = np.asarray(front, dtype=np.float64)
    side = np.cross((0.0, 0.0, 1.0), front)
    extent = np.abs((pts - centre) @ np.stack([side, front, (0.0, 0.0, 1.0)]).T).max(0)  # half sizes
    half = 1.06 * max(extent[2], extent[0] * h / w)  # fit the height and the width, 6 % margin
    dist = half / np.tan(np.deg2rad(fov / 2)) + extent[1]
    renderer = MeshRenderer(verts_m, faces, colours)
    return [renderer.render(Camera.look_at(centre + s * dist * front, centre, fov_deg=fov, size=(w, h))).rgb
            for s in (1.0, -1.0)]


def write_residual_map(path: str | Path, verts_m: np.ndarray, faces: np.ndarray, scan_points_m: np.ndarray,
                       dist_m: np.ndarray, front: np.ndarray, vertices: np.ndarray | None = None,
                       title: str = "") -> dict:
    """Write the heat map PNG atomically (see the module docstring) and return its numbers.

    Args:
        verts_m: (V, 3) the registration, metres, +Z up; faces: (F, 3) the faces to draw;
        scan_points_m: (N, 3) scan samples and dist_m (N,) their distances to the registration;
        front: (3,) the body's facing (:func:`body_front`); vertices: (V,) bool, the vertices
        samples may be assigned to (default all).
    Returns:
        ``{"vmax_mm", "mean_mm", "p95_mm"}`` of the samples.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = vertex_residuals_mm(verts_m, scan_points_m, dist_m, vertices)
    vmax = colour_scale_mm(dist_m)
    views = render_residual_views(verts_m, faces, values, vmax, front)
    d_mm = np.asarray(dist_m) * 1e3
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 6.4), dpi=100, layout="constrained")
    for ax, img, label in zip(axes, views, ("front", "back")):
        ax.imshow(img)
        ax.set_title(label)
        ax.axis("off")
    sm = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0.0, vmax))
    fig.colorbar(sm, ax=axes, shrink=0.6,
                 label=f"scan -> registration (mm)\nscale 0-{vmax:g} mm = the p95; grey: no scan data")
    fig.suptitle(title or f"mean {d_mm.mean():.2f} mm, p95 {np.percentile(d_mm, 95):.2f} mm")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    return {"vmax_mm": vmax, "mean_mm": float(d_mm.mean()), "p95_mm": float(np.percentile(d_mm, 95))}
