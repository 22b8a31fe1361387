"""Optional PyTorch3D rasteriser backend (used by ``render.backend()`` only when pytorch3d and
CUDA are importable). It rasterises with PyTorch3D and shades with the same code as the open3d
path, so both backends return identical ``RenderResult`` conventions (OpenCV camera, z-depth,
pixel centres at +0.5).

Not exercised in CI (no pytorch3d/CUDA there): on a GPU machine, check it against open3d with
``tests/test_landmarks_render.py::test_backends_agree`` which runs only when CUDA is present.
"""

from __future__ import annotations

import numpy as np

from ghum_pipe.landmarks.render import Camera, Light, MeshRenderer, RenderResult


class _RasterisedMesh(MeshRenderer):
    """``MeshRenderer`` whose ``cast`` rasterises on the GPU instead of ray casting."""

    def __init__(self, verts, faces, colors=None):  # no BVH: skip open3d
        import torch

        self._set_surface(verts, faces, colors)
        self._device = torch.device("cuda")

    def cast(self, camera: Camera):
        import torch
        from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
        from pytorch3d.structures import Meshes
        from pytorch3d.utils import cameras_from_opencv_projection

        dev = self._device
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)[None]  # noqa: E731
        cams = cameras_from_opencv_projection(f(camera.R), f(camera.t), f(camera.K),
                                              f([camera.height, camera.width]))
        mesh = Meshes(f(self.verts), torch.as_tensor(self.faces, device=dev)[None])
        frags = MeshRasterizer(cams, RasterizationSettings((camera.height, camera.width), faces_per_pixel=1))(mesh)
        tri_id = frags.pix_to_face[0, ..., 0].cpu().numpy().astype(np.int64)
        bary = frags.bary_coords[0, ..., 0, :].cpu().numpy().astype(np.float64)
        depth = frags.zbuf[0, ..., 0].cpu().numpy().astype(np.float64)
        miss = tri_id < 0
        depth[miss], bary[miss] = np.inf, 0.0
        return depth, tri_id, bary


class PyTorch3DBackend:
    @staticmethod
    def render(verts, faces, colors, camera: Camera, light: Light) -> RenderResult:
        return _RasterisedMesh(verts, faces, colors).render(camera, light)
