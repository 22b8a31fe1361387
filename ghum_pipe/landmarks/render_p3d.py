"""PyTorch3D rasteriser for the landmark renders (opt-in: ``LandmarkConfig.renderer="pytorch3d"``,
``ghum-pipe landmark --renderer pytorch3d``; needs pytorch3d and CUDA).

It rasterises with PyTorch3D and shades with the same code as the open3d path, so both return
identical ``RenderResult`` conventions (OpenCV camera, z-depth, pixel centres at +0.5); the
occlusion and closest-point queries stay on open3d's BVH. Not exercised in CI (no CUDA there):
on a GPU machine ``scripts/gpu_check.py`` compares the landmarks of both renderers and
``tests/test_landmarks_render.py::test_backends_agree`` their images.
"""

from __future__ import annotations

import numpy as np

from ghum_pipe.landmarks.render import Camera, MeshRenderer


class RasterisedMeshRenderer(MeshRenderer):
    """``MeshRenderer`` whose ``cast`` rasterises on a CUDA device instead of ray casting."""

    def __init__(self, verts, faces, colors=None, device="cuda"):
        import torch

        super().__init__(verts, faces, colors)
        self._device = torch.device(device)

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
