"""Which renderer draws the landmark stage's views: open3d ray casting (the default, on every
machine) or PyTorch3D rasterisation on CUDA, only when asked for (``LandmarkConfig.renderer``,
``--renderer``): no backend switches itself on because a GPU happens to be there."""

from __future__ import annotations

import numpy as np

from ghum_pipe.errors import LandmarkError
from ghum_pipe.landmarks.render import MeshRenderer

RENDERERS = ("open3d", "pytorch3d")


def pytorch3d_unavailable() -> str | None:
    """Why the PyTorch3D renderer cannot run here (None when it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import pytorch3d  # noqa: F401
    except ImportError:
        return "pytorch3d is not installed (pip install '.[gpu]')"
    return None


def make_renderer(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
                  renderer: str = "open3d", source="scan") -> MeshRenderer:
    """A ``MeshRenderer`` of ``renderer`` (one of :data:`RENDERERS`) for one mesh; ``source``
    names the scan in errors. Raises ``LandmarkError`` when PyTorch3D is asked for but cannot run."""
    if renderer == "open3d":
        return MeshRenderer(verts, faces, colors)
    if renderer != "pytorch3d":
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    why = pytorch3d_unavailable()
    if why:
        raise LandmarkError(f"the pytorch3d renderer cannot run: {why}", source, "Use --renderer open3d")
    from ghum_pipe.landmarks.render_p3d import RasterisedMeshRenderer

    return RasterisedMeshRenderer(verts, faces, colors)
