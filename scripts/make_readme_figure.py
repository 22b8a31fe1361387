"""Make docs/pipeline.png, the README's picture, from a work dir that `ghum-pipe run` filled.

    python scripts/make_readme_figure.py W SCAN_ID docs/pipeline.png

Panels: the raw scan, its 3D landmarks reprojected, the registered template (coloured by body
part, to show the correspondence) and the scan -> registration distance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from ghum_pipe.io import load_scan  # noqa: E402
from ghum_pipe.landmarks.render import Camera, render_mesh  # noqa: E402
from ghum_pipe.template import load_template  # noqa: E402


def main(work: Path, scan_id: str, out: Path) -> None:
    d = work / "scans" / scan_id
    scan_path = Path(json.loads((d / "scan.json").read_text())["path"])
    scan = load_scan(scan_path)
    reg = trimesh.load(d / "registration.ply", process=False)
    reg_m = scan.frame.to_internal(np.asarray(reg.vertices))
    lm = json.loads((d / "landmarks.json").read_text())
    pts = scan.frame.to_internal(np.asarray(lm["points"]))
    t = load_template()

    # A camera in front of the body: the landmarks give the facing direction.
    names = lm["names"]
    ls, rs = pts[names.index("left_shoulder")], pts[names.index("right_shoulder")]
    left = (ls - rs) / np.linalg.norm(ls - rs)
    front = np.cross(left, np.array([0, 0, 1.0]))  # facing direction, Z up
    lo, hi = scan.verts.min(0), scan.verts.max(0)
    c = (lo + hi) / 2
    cam = Camera.look_at(c + front * 3.2, c, up=np.array([0, 0, 1.0]), fov_deg=36, size=640)

    parts = plt.get_cmap("tab20")(t.vertex_part_labels % 20)[:, :3] * 0.6 + 0.35
    panels = [
        ("raw scan", render_mesh(scan.verts, scan.faces, scan.colors, cam).rgb, None),
        ("3D landmarks", render_mesh(scan.verts, scan.faces, None, cam).rgb, cam.project(pts)[0]),
        ("registered template", render_mesh(reg_m, t.faces, (parts * 255).astype(np.uint8), cam).rgb, None),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 5.2))
    for ax, (title, img, uv) in zip(axes, panels):
        ax.imshow(img)
        if uv is not None:
            ax.scatter(uv[:, 0], uv[:, 1], s=2, c="lime")
        ax.set_title(title)
    axes[3].imshow(plt.imread(d / "residuals.png"))
    axes[3].set_title("scan -> registration distance")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
