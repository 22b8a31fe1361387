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
        from ghum_pipe.landmarks.render import SKIN_RGB, vertex_normals

        self.verts = np.asarray(verts, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        if colors is None:
            self.colors = np.broadcast_to(np.asarray(SKIN_RGB), self.verts.shape)
        else:
            c = np.asarray(colors)
            self.colors = c[:, :3] / 255.0 if c.dtype == np.uint8 else c[:, :3].astype(np.float64)
        self.normals = vertex_normals(self.verts, self.faces)
        self._colors32 = np.ascontiguousarray(self.colors, dtype=np.float32)
        self._normals32 = self.normals.astype(np.float32)
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
