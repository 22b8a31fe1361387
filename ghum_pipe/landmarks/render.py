"""Headless CPU renderer for scans and meshes: pinhole cameras and skin-shaded ray casting.

The landmark stage renders every scan from virtual cameras and runs 2D detectors on the images
(GHUM, Xu et al. 2020, Sec. 3.1: "we render the scan from multiple viewpoints and detect
2D keypoints"). Registration and the report reuse the same two pieces for heat maps and
turntables:

>>> cam = Camera.look_at(eye=(0, -3, 1), target=(0, 0, 1), fov_deg=40, size=512)
>>> renderer = MeshRenderer(verts, faces)          # builds the ray-casting BVH once
>>> img = renderer.render(cam)                     # RenderResult: rgb, depth, tri_id, bary
>>> uv, depth = cam.project(points)                # (N, 2) px, (N,) metres along the view axis
>>> img = render_mesh(verts, faces, camera=cam)    # one-shot form

Conventions: world = metres, +Z up (the package frame). Cameras follow OpenCV: x right, y down,
z forward; pixel ``(col, row)`` covers ``[col, col+1) x [row, row+1)``, so its centre is at
``(col + 0.5, row + 0.5)`` -- the same continuous coordinates MediaPipe's normalised output
maps to when multiplied by width/height. ``depth`` is z-depth in camera space (not ray length),
identical to the depth ``Camera.project`` returns, so a visibility test is a direct comparison.

open3d's ``RaycastingScene`` (Embree) renders a 512^2 view of a 14k-triangle body in ~10 ms on
one core; there is no rasteriser to install and no display needed. A PyTorch3D rasteriser on
CUDA is opt-in (``render_p3d``, chosen by ``renderers.make_renderer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ghum_pipe.ops.normals import vertex_normals

# A mid skin tone (sRGB 0-1): MediaPipe's person detectors were trained on photos and find
# skin-shaded bodies far more reliably than flat grey ones.
SKIN_RGB = (0.86, 0.67, 0.55)
# Neutral, light, non-black background: a black background makes the pose detector miss
# dark-shaded limbs at silhouettes.
BACKGROUND_RGB = (0.80, 0.82, 0.85)


@dataclass(frozen=True)
class Light:
    """Simple lighting: ambient + Lambert from a key light + Blinn-Phong specular.

    ``key_dir_cam`` is the direction *towards* the light in camera coordinates (x right, y down,
    z forward), so the light moves with the camera and every view is lit the same way.
    """

    ambient: float = 0.35
    diffuse: float = 0.65
    specular: float = 0.12
    shininess: float = 24.0
    key_dir_cam: tuple[float, float, float] = (0.3, -0.5, -1.0)  # up-left of the camera, towards it


@dataclass(frozen=True, eq=False)
class Camera:
    """Pinhole camera, OpenCV convention. World point ``X`` maps to ``K @ (R @ X + t)``.

    K: (3, 3) intrinsics in pixels; R: (3, 3) world->camera rotation; t: (3,) world->camera
    translation in metres; width, height: image size in pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates, metres."""
        return -self.R.T @ self.t

    @property
    def P(self) -> np.ndarray:
        """(3, 4) projection matrix ``K [R | t]``."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)

    @property
    def forward(self) -> np.ndarray:
        """(3,) unit viewing direction in world coordinates."""
        return self.R[2]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) world points -> (N, 2) pixel coordinates and (N,) z-depth in metres.

        Points behind the camera get depth <= 0 and meaningless pixel coordinates.
        """
        cam = np.asarray(points, dtype=np.float64) @ self.R.T + self.t
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[:, :2] / z[:, None]) * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, z

    @property
    def K_inv(self) -> np.ndarray:
        """(3, 3) inverse intrinsics, in closed form for an upper-triangular K (np.linalg.inv on
        a 3x3 costs milliseconds when LAPACK threads compete for the cores)."""
        (fx, sk, cx), (_, fy, cy) = self.K[0], self.K[1]
        return np.array([[1 / fx, -sk / (fx * fy), (sk * cy - cx * fy) / (fx * fy)],
                         [0.0, 1 / fy, -cy / fy], [0.0, 0.0, 1.0]])

    def rays(self) -> np.ndarray:
        """(H, W, 6) float32 rays ``[origin, direction]`` through the pixel centres.

        Directions are scaled so their camera-space z is 1: the ray parameter at a hit is then
        the z-depth.
        """
        Ki = self.K_inv.astype(np.float32)
        cols = np.arange(self.width, dtype=np.float32) + 0.5
        rows = np.arange(self.height, dtype=np.float32) + 0.5
        dirs_cam = np.empty((self.height, self.width, 3), dtype=np.float32)
        dirs_cam[..., 0] = Ki[0, 0] * cols[None, :] + Ki[0, 1] * rows[:, None] + Ki[0, 2]
        dirs_cam[..., 1] = (Ki[1, 1] * rows + Ki[1, 2])[:, None]
        dirs_cam[..., 2] = 1.0
        out = np.empty((self.height, self.width, 6), dtype=np.float32)
        out[..., :3] = self.center.astype(np.float32)
        out[..., 3:] = dirs_cam @ self.R.astype(np.float32)  # camera -> world: R^T d, row-vector form
        return out

    def to_dict(self) -> dict:
        return {"K": self.K.tolist(), "R": self.R.tolist(), "t": self.t.tolist(),
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        return cls(np.asarray(d["K"], float), np.asarray(d["R"], float), np.asarray(d["t"], float),
                   int(d["width"]), int(d["height"]))

    @classmethod
    def look_at(
        cls,
        eye,
        target,
        up=(0.0, 0.0, 1.0),
        fov_deg: float = 40.0,
        size: int | tuple[int, int] = 512,
    ) -> "Camera":
        """Camera at ``eye`` (3,) looking at ``target`` (3,), metres, with ``up`` (3,) pointing
        up in the image. ``fov_deg``: vertical field of view; ``size``: side or (width, height).
        """
        width, height = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, up)
        if np.linalg.norm(x) < 1e-8:  # looking along ``up``: pick any perpendicular
            x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)  # image down
        R = np.stack([x, y, z])
        f = 0.5 * height / np.tan(np.deg2rad(fov_deg) / 2)
        K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        return cls(K=K, R=R, t=-R @ eye, width=width, height=height)


@dataclass(frozen=True, eq=False)
class RenderResult:
    """One rendered view. H x W pixels.

    rgb: (H, W, 3) uint8; depth: (H, W) float64 z-depth in metres, inf on background;
    tri_id: (H, W) int64 triangle index, -1 on background; bary: (H, W, 3) float64 barycentric
    weights of the hit point over the triangle's three vertices (0 on background).
    """

    rgb: np.ndarray
    depth: np.ndarray
    tri_id: np.ndarray
    bary: np.ndarray
    camera: Camera = field(repr=False, default=None)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: pixels that hit the mesh."""
        return self.tri_id >= 0

    def depth_at(self, uv: np.ndarray) -> np.ndarray:
        """(N,) rendered depth at (N, 2) pixel coordinates (nearest pixel; inf outside)."""
        uv = np.asarray(uv, dtype=np.float64)
        cols = np.floor(uv[:, 0]).astype(np.int64)
        rows = np.floor(uv[:, 1]).astype(np.int64)
        h, w = self.depth.shape
        ok = np.isfinite(uv).all(1) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        out = np.full(len(uv), np.inf)
        out[ok] = self.depth[rows[ok], cols[ok]]
        return out


class MeshRenderer:
    """A mesh prepared for many views: the ray-casting BVH and normals are built once.

    verts: (V, 3) metres; faces: (F, 3) int; colors: optional (V, 3) uint8 or float in [0, 1]
    per-vertex colours (textures are baked to vertex colours by ``ghum_pipe.io``); without
    colours the mesh is shaded with ``SKIN_RGB``.
    """

    def __init__(self, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None):
        import open3d as o3d

        self._set_surface(verts, faces, colors)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(self.verts.astype(np.float32)), o3d.core.Tensor(self.faces.astype(np.uint32))
        )

    def cast(self, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray-cast one view: depth (H, W), tri_id (H, W) (-1 = miss), bary (H, W, 3)."""
        import open3d as o3d

        hit = self._scene.cast_rays(o3d.core.Tensor(camera.rays()))
        depth = hit["t_hit"].numpy().astype(np.float64)
        miss = ~np.isfinite(depth)
        tri_id = hit["primitive_ids"].numpy().astype(np.int64)
        tri_id[miss] = -1
        uv = hit["primitive_uvs"].numpy().astype(np.float64)
        bary = np.stack([1.0 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], axis=-1)
        bary[miss] = 0.0
        depth[miss] = np.inf
        return depth, tri_id, bary

    def render(self, camera: Camera, light: Light = Light(), use_colors: bool = True) -> RenderResult:
        """Render one view with ``light``; see ``RenderResult`` for the outputs.
        ``use_colors=False`` shades with ``SKIN_RGB`` even when the mesh has colours."""
        depth, tri_id, bary = self.cast(camera)
        hit = tri_id >= 0
        rgb = np.empty((camera.height, camera.width, 3), dtype=np.float32)
        rgb[:] = BACKGROUND_RGB
        if hit.any():
            # Shading in float32 (it is most of a view's cost besides the ray cast).
            corners = self.faces[tri_id[hit]]  # (P, 3)
            w = bary[hit].astype(np.float32)  # (P, 3)
            if use_colors:
                albedo = np.einsum("pkc,pk->pc", self._colors32[corners], w)
            else:
                albedo = np.broadcast_to(np.asarray(SKIN_RGB, dtype=np.float32), (len(w), 3))
            R = camera.R.astype(np.float32)
            normal = np.einsum("pkc,pk->pc", self._normals32[corners], w) @ R.T  # camera frame
            normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
            rows, cols = np.nonzero(hit)
            Kinv = camera.K_inv.astype(np.float32)
            view = -(np.stack([cols + 0.5, rows + 0.5, np.ones(len(cols))], 1).astype(np.float32) @ Kinv.T)
            view /= np.linalg.norm(view, axis=1, keepdims=True)  # unit, towards the camera
            # Scans are often not consistently oriented: shade both sides (face the camera).
            normal *= np.where(np.einsum("pc,pc->p", normal, view) < 0, -1.0, 1.0).astype(np.float32)[:, None]
            key = np.asarray(light.key_dir_cam, dtype=np.float32)
            key /= np.linalg.norm(key)
            lam = np.clip(normal @ key, 0.0, None)
            half = key + view
            half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
            spec = np.clip(np.einsum("pc,pc->p", normal, half), 0.0, None) ** light.shininess
            rgb[hit] = albedo * (light.ambient + light.diffuse * lam)[:, None] + (light.specular * spec)[:, None]
        rgb = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return RenderResult(rgb=rgb, depth=depth, tri_id=tri_id, bary=bary, camera=camera)

    def unoccluded(self, eyes: np.ndarray, target: np.ndarray, slack_m: float = 0.05) -> np.ndarray:
        """(N,) bool: whether the segment from each of (N, 3) camera centres to ``target`` (3,)
        is free of the mesh until ``slack_m`` before the target (the target's own surface)."""
        import open3d as o3d

        eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
        dirs = np.asarray(target, dtype=np.float64) - eyes
        dist = np.linalg.norm(dirs, axis=1)
        rays = np.concatenate([eyes, dirs / dist[:, None]], axis=1).astype(np.float32)
        t_hit = self._scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        return t_hit >= dist - slack_m

    def closest_points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points to (N, 3) query points: (N, 3) points (float64, metres), (N,)
        triangle ids and (N, 3) barycentric weights over those triangles' vertices."""
        import open3d as o3d

        q = o3d.core.Tensor(np.asarray(points, dtype=np.float32).reshape(-1, 3))
        res = self._scene.compute_closest_points(q)
        tri = res["primitive_ids"].numpy().astype(np.int64)
        uv = res["primitive_uvs"].numpy().astype(np.float64)
        bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=-1)
        pts = (self.verts[self.faces[tri]] * bary[..., None]).sum(1)  # float64, on the mesh
        return pts, tri, bary

    def surface_points(self, result: RenderResult, uv: np.ndarray, search_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """3D surface points under (N, 2) pixel coordinates of a view: (N, 3) metres (nan where
        the pixel is background) and (N,) triangle ids (-1 there). With ``search_px`` > 0 a
        background pixel takes the nearest (then front-most) body pixel within that radius."""
        uv = np.asarray(uv, dtype=np.float64)
        h, w = result.depth.shape
        cols = np.clip(np.floor(uv[:, 0]).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor(uv[:, 1]).astype(np.int64), 0, h - 1)
        tri = result.tri_id[rows, cols]
        if search_px > 0 and (tri < 0).any():
            offsets = [(dr, dc) for dr in range(-search_px, search_px + 1) for dc in range(-search_px, search_px + 1)
                       if 0 < dr * dr + dc * dc <= search_px * search_px]
            offsets.sort(key=lambda o: o[0] ** 2 + o[1] ** 2)
            for i in np.flatnonzero(tri < 0):
                for dr, dc in offsets:
                    r, c = rows[i] + dr, cols[i] + dc
                    if 0 <= r < h and 0 <= c < w and result.tri_id[r, c] >= 0:
                        rows[i], cols[i], tri[i] = r, c, result.tri_id[r, c]
                        break
        pts = np.full((len(uv), 3), np.nan)
        ok = tri >= 0
        pts[ok] = (self.verts[self.faces[tri[ok]]] * result.bary[rows[ok], cols[ok]][..., None]).sum(1)
        return pts, tri

    def _set_surface(self, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None) -> None:
        """Geometry, shading colours (skin without colours) and normals; shared by backends."""
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



def render_mesh(
    verts: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None = None,
    camera: Camera | None = None,
    light: Light = Light(),
) -> RenderResult:
    """One-shot render of a mesh (see ``MeshRenderer`` to render many views of one mesh).

    verts (V, 3) metres, faces (F, 3), colors optional (V, 3); ``camera`` defaults to a 512 px
    front view (from -Y) framing the mesh's bounding box.
    """
    if camera is None:
        lo, hi = np.min(verts, 0), np.max(verts, 0)
        c = (lo + hi) / 2
        dist = 1.3 * np.max(hi - lo) / (2 * np.tan(np.deg2rad(20)))
        camera = Camera.look_at(c - np.array([0, dist, 0]), c, fov_deg=40, size=512)
    return MeshRenderer(verts, faces, colors).render(camera, light)
