"""The residual heat map (residuals.png): scan->registration distance, front and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import atomic_path


def write_residual_map(path: str | Path, points: np.ndarray, dist_m: np.ndarray, title: str = "",
                       vmax_mm: float = 5.0) -> None:
    """Scatter the scan points (internal metres, +Z up, person facing -Y) coloured by their
    distance to the registration, seen from the front (-Y) and the back (+Y); written atomically.

    Args:
        points: (N, 3) scan samples; dist_m: (N,) distances in metres; vmax_mm: colour scale top.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_mm = np.asarray(dist_m) * 1e3
    fig, axes = plt.subplots(1, 2, figsize=(8, 8), dpi=100)
    for ax, (label, sign) in zip(axes, (("front", 1.0), ("back", -1.0))):
        # painter's order: far points first so the visible side is drawn on top
        order = np.argsort(sign * points[:, 1])[::-1]
        p = points[order]
        sc = ax.scatter(sign * p[:, 0], p[:, 2], c=d_mm[order], s=0.3, cmap="inferno",
                        vmin=0.0, vmax=vmax_mm, linewidths=0)
        ax.set_aspect("equal")
        ax.set_title(label)
        ax.axis("off")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="scan -> registration (mm)")
    fig.suptitle(title or f"mean {d_mm.mean():.2f} mm, p95 {np.percentile(d_mm, 95):.2f} mm")
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
