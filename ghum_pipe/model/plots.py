"""PNG figures of the evaluation: per-vertex error heat maps, VAE-vs-PCA curve, fit-error bars.

Matplotlib only (Agg); the heat map is an orthographic front and back view of the mesh with
each triangle coloured by the mean error of its vertices, drawn back to front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ghum_pipe.ops.normals import face_normals


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_heatmap(verts: np.ndarray, faces: np.ndarray, error_m: np.ndarray, path: Path, title: str,
                  vmax_mm: float | None = None) -> Path:
    """Front (-Y) and back (+Y) views of the mesh coloured by per-vertex error (mm)."""
    from matplotlib.collections import PolyCollection

    plt = _plt()
    err_mm = np.asarray(error_m) * 1000
    vmax = vmax_mm or max(1e-3, float(np.percentile(err_mm, 99)))
    tri_err = err_mm[faces].mean(1)
    fig, axes = plt.subplots(1, 2, figsize=(8, 6.5))
    for ax, (name, sign) in zip(axes, (("front", 1.0), ("back", -1.0))):
        xz = verts[:, [0, 2]] * np.array([sign, 1.0])
        depth = -sign * verts[faces].mean(1)[:, 1]  # larger = farther from the viewer
        order = np.argsort(-depth)
        pc = PolyCollection(xz[faces[order]], array=tri_err[order], cmap="inferno", clim=(0, vmax),
                            edgecolors="none")
        ax.add_collection(pc)
        ax.set_xlim(xz[:, 0].min() - 0.05, xz[:, 0].max() + 0.05)
        ax.set_ylim(xz[:, 1].min() - 0.05, xz[:, 1].max() + 0.05)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(name)
    fig.colorbar(pc, ax=axes, shrink=0.7, label="mean vertex error (mm)")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def vae_pca_curve(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    dims = [r["dim"] for r in rows]
    ax.plot(dims, [r["vae_mm"] for r in rows], "o-", label="VAE")
    ax.plot(dims, [r["pca_mm"] for r in rows], "s--", label="PCA")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latent dimensions")
    ax.set_ylabel("held-out shape error (mm)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def fit_bars(rows: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [f"{r['model']}" for r in rows]
    ax.bar(names, [r["mean_mm"] for r in rows], color="tab:blue", label="with PSD")
    if all("no_psd_mm" in r for r in rows):
        ax.plot(names, [r["no_psd_mm"] for r in rows], "k_", markersize=25, label="without PSD")
    ax.set_ylabel("held-out fit error (mm)")
    ax.tick_params(axis="x", rotation=20)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def preview(verts_list: list[np.ndarray], faces: np.ndarray, path: Path) -> Path:
    """Front views of several bodies side by side (``ghum-pipe sample``)."""
    from matplotlib.collections import PolyCollection

    plt = _plt()
    n = len(verts_list)
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 4), squeeze=False)
    for ax, v in zip(axes[0], verts_list):
        n_y = face_normals(v, faces)
        shade = np.clip(-n_y[:, 1], 0.05, 1.0)
        order = np.argsort(v[faces].mean(1)[:, 1])[::-1]
        pc = PolyCollection(v[:, [0, 2]][faces[order]], array=shade[order], cmap="bone", clim=(0, 1),
                            edgecolors="none")
        ax.add_collection(pc)
        ax.set_xlim(v[:, 0].min() - 0.05, v[:, 0].max() + 0.05)
        ax.set_ylim(v[:, 2].min() - 0.05, v[:, 2].max() + 0.05)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
