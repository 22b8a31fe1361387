"""A simulated multi-view depth scanner and the surface reconstruction a scanning booth runs.

Pure core: a triangle mesh (metres, +Z up) in, a noisy partial point cloud and a Poisson mesh
out. The model of the scanner:

1. Pinhole depth cameras (``ring_cameras``: a ring of level cameras at a few heights plus a
   top view, as in a structured-light booth; ``sphere_cameras`` for hand-held close-ups) cast
   one ray per pixel into an ``open3d.t.geometry.RaycastingScene``. A point counts only if
   the projector beside its camera (``projector_baseline_m``) also sees it (a shadow ray), so
   soles, the crotch, armpits and the gaps between fingers get holes as in real scans.
2. Each hit is displaced along its ray by Gaussian depth noise (``noise_m``).
3. Hits at grazing angles to the camera or the projector are dropped with a soft random ramp
   around ``grazing_cos`` (too little light returns there), as are back faces.
4. Samples of all views are merged on a voxel grid, normals are estimated from the samples and
   oriented towards the cameras that saw them, and screened Poisson reconstruction
   (Kazhdan & Hoppe 2013) builds a watertight surface, which is then cropped where it lies
   farther than ``crop_m`` from any sample, so holes stay holes instead of being bridged by
   blobs, and small islands are removed.
5. Colours are carried from the mesh's per-vertex colours to the samples (barycentric) and to
   the reconstructed vertices (mean of the nearest samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
from pykdtree.kdtree import KDTree


@dataclass(frozen=True)
class ScannerConfig:
    """Settings of the virtual scanner; lengths in metres, angles in degrees."""

    noise_m: float = 0.0015  # std of the depth noise along each ray
    grazing_cos: float = 0.25  # |cos(ray, normal)| below this is mostly dropped ...
    grazing_ramp: float = 0.08  # ... over a soft random ramp of this half-width
    image_px: tuple[int, int] = (200, 240)  # (width, height) of each depth image
    fov_deg: float = 40.0  # vertical field of view of each camera
    voxel_m: float = 0.0025  # merge samples on this grid before reconstruction
    poisson_depth: int = 9
    crop_m: float = 0.008  # drop reconstructed vertices farther than this from every sample
    min_island_frac: float = 0.02  # drop connected pieces with fewer faces than this fraction
    color_noise: float = 4.0  # std of per-sample colour noise (0-255 scale)
    # Structured light: a point is measured only if the projector beside the camera lights it
    # too, so folds (armpits, crotch, between fingers) are shadowed from some views.
    projector_baseline_m: float = 0.3


BODY_SCANNER = ScannerConfig()
CLOSEUP_SCANNER = ScannerConfig(
    noise_m=0.0005, image_px=(200, 200), fov_deg=40.0, voxel_m=0.001, poisson_depth=8, crop_m=0.004,
)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``eye`` (3,), ``target`` (3,), ``up`` hint (3,), metres."""

    eye: np.ndarray
    target: np.ndarray
    up: np.ndarray


@dataclass(frozen=True)
class ScanSamples:
    """The merged raw samples of all views (after noise and dropouts, before meshing).

    points (N, 3) metres; normals (N, 3) unit, facing the cameras; colors (N, 3) uint8;
    n_rays / n_hits: rays cast and rays that returned a sample (for reports).
    """

    points: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    n_rays: int
    n_hits: int


def ring_cameras(lo: np.ndarray, hi: np.ndarray, n_azimuths: int = 8, heights=(0.15, 0.5, 0.85),
                 distance_m: float = 1.9, top_view: bool = True, azimuth0: float = 0.0) -> list[Camera]:
    """A booth: ``n_azimuths`` cameras on a horizontal circle at each relative height (fraction
    of the bounding box ``lo``-``hi``, (3,) metres), all aimed at the vertical axis, plus one
    overhead camera looking down."""
    centre = (lo + hi) / 2
    cams = []
    for h in heights:
        z = lo[2] + h * (hi[2] - lo[2])
        for k in range(n_azimuths):
            a = azimuth0 + 2 * np.pi * k / n_azimuths
            eye = np.array([centre[0] + distance_m * np.cos(a), centre[1] + distance_m * np.sin(a), z])
            # level cameras, as on a booth's columns: the crotch, armpits and soles are seen
            # only at grazing angles or not at all
            target = np.array([centre[0], centre[1], z])
            cams.append(Camera(eye, target, np.array([0.0, 0.0, 1.0])))
    if top_view:
        eye = np.array([centre[0], centre[1] + 0.01, hi[2] + distance_m])
        cams.append(Camera(eye, centre.copy(), np.array([0.0, -1.0, 0.0])))
    return cams


def sphere_cameras(centre: np.ndarray, distance_m: float, n: int = 24, min_elevation: float = -0.6) -> list[Camera]:
    """``n`` cameras on a Fibonacci sphere around ``centre`` (3,), looking at it, skipping
    those below the elevation ``min_elevation`` (sine) - a hand-held close-up scanner."""
    cams = []
    golden = np.pi * (3.0 - np.sqrt(5.0))
    m = int(np.ceil(n / (1 - (min_elevation + 1) / 2)))  # oversample so ~n survive the cut
    for k in range(m):
        z = 1 - 2 * (k + 0.5) / m
        if z < min_elevation:
            continue
        r = np.sqrt(1 - z * z)
        d = np.array([r * np.cos(golden * k), r * np.sin(golden * k), z])
        up = np.array([0.0, 0.0, 1.0]) if abs(z) < 0.95 else np.array([0.0, 1.0, 0.0])
        cams.append(Camera(centre + distance_m * d, centre.copy(), up))
    return cams


def camera_rays(cam: Camera, width: int, height: int, fov_deg: float) -> np.ndarray:
    """(H*W, 6) float32 rays [origin, unit direction] of a pinhole camera, row-major."""
    fwd = cam.target - cam.eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, cam.up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    f = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
    u = np.arange(width) - (width - 1) / 2
    v = np.arange(height) - (height - 1) / 2
    uu, vv = np.meshgrid(u, v)
    d = fwd[None] * f + uu.reshape(-1, 1) * right[None] + vv.reshape(-1, 1) * down[None]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(cam.eye, d.shape)
    return np.concatenate([o, d], axis=1).astype(np.float32)


def projector_position(cam: Camera, baseline_m: float) -> np.ndarray:
    """(3,) the structured-light projector beside ``cam``, ``baseline_m`` to its right."""
    fwd = cam.target - cam.eye
    right = np.cross(fwd, cam.up)
    return cam.eye + baseline_m * right / np.linalg.norm(right)


def _occluded(scene, origins: np.ndarray, dirs: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(N,) bool: something lies between each origin and the point ``dist`` along ``dirs``."""
    if len(origins) == 0:
        return np.zeros(0, bool)
    rays = np.concatenate([origins, dirs], 1).astype(np.float32)
    t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return t < dist - 1e-3


def scan_samples(verts: np.ndarray, faces: np.ndarray, vertex_colors: np.ndarray, cameras: list[Camera],
                 config: ScannerConfig, rng: np.random.Generator, keep_faces: np.ndarray | None = None) -> ScanSamples:
    """Cast every camera's rays at the mesh and return the surviving noisy samples.

    Args:
        verts: (V, 3) metres; faces: (F, 3) int; vertex_colors: (V, 3) uint8 or float 0-255.
        keep_faces: optional (F,) bool; hits on other faces are discarded (they still occlude),
            used to crop a close-up to a body region.
    """
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    w, h = config.image_px
    rays = np.concatenate([camera_rays(c, w, h, config.fov_deg) for c in cameras])
    projectors = np.repeat(np.stack([projector_position(c, config.projector_baseline_m) for c in cameras]), w * h, 0)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hit["t_hit"].numpy()
    ok = np.isfinite(t_hit)
    prim = hit["primitive_ids"].numpy()[ok].astype(np.int64)
    uv = hit["primitive_uvs"].numpy()[ok].astype(np.float64)
    normal = hit["primitive_normals"].numpy()[ok].astype(np.float64)
    origin, direction, t = rays[ok, :3].astype(np.float64), rays[ok, 3:].astype(np.float64), t_hit[ok].astype(np.float64)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    cos = -np.einsum("ij,ij->i", direction, normal)  # > 0: the face looks at the camera
    # The projector must light the point too: a shadow ray towards it, and its own angle.
    surface = origin + t[:, None] * direction
    to_proj = projectors[ok] - surface
    dist_proj = np.linalg.norm(to_proj, axis=1)
    to_proj /= dist_proj[:, None]
    cos = np.minimum(cos, np.einsum("ij,ij->i", to_proj, normal))
    shadow = _occluded(scene, surface + 2e-4 * normal, to_proj, dist_proj)
    # Soft grazing dropout: keep probability ramps from 0 to 1 across grazing_cos +- ramp.
    p_keep = np.clip((cos - config.grazing_cos + config.grazing_ramp) / (2 * config.grazing_ramp), 0.0, 1.0)
    keep = (rng.random(cos.shape[0]) < p_keep) & ~shadow
    if keep_faces is not None:
        keep &= keep_faces[prim]
    t = t[keep] + rng.normal(0.0, config.noise_m, keep.sum())
    points = origin[keep] + t[:, None] * direction[keep]
    # barycentric colour: open3d's uv are the weights of the triangle's 2nd and 3rd corner
    tri = faces[prim[keep]]
    u, v = uv[keep, 0:1], uv[keep, 1:2]
    col = np.asarray(vertex_colors, dtype=np.float64)
    colors = (1 - u - v) * col[tri[:, 0]] + u * col[tri[:, 1]] + v * col[tri[:, 2]]
    colors += rng.normal(0.0, config.color_noise, colors.shape)
    return ScanSamples(points, -direction[keep], np.clip(colors, 0, 255).round().astype(np.uint8),
                       n_rays=len(rays), n_hits=int(keep.sum()))


def merge_samples(samples: ScanSamples, config: ScannerConfig) -> o3d.geometry.PointCloud:
    """Voxel-merge the samples and give them oriented normals (estimated from the points,
    flipped towards the averaged viewing direction), as a scanner's software does."""
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(samples.points)
    pcd.normals = o3d.utility.Vector3dVector(samples.normals)  # viewing directions for now
    pcd.colors = o3d.utility.Vector3dVector(samples.colors / 255.0)
    pcd = pcd.voxel_down_sample(config.voxel_m)
    view = np.asarray(pcd.normals).copy()
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=6 * config.voxel_m, max_nn=24))
    n = np.asarray(pcd.normals)
    flip = np.einsum("ij,ij->i", n, view) < 0
    n[flip] *= -1
    pcd.normals = o3d.utility.Vector3dVector(n)
    return pcd


def reconstruct(pcd: o3d.geometry.PointCloud, config: ScannerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screened Poisson surface of the merged samples, cropped to where there is data.

    Returns verts (N, 3) metres, faces (F, 3) int64, colors (N, 3) uint8 (mean of the 4
    nearest samples). Single-threaded so the result is the same bytes on every run.
    """
    mesh, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
        pcd, depth=config.poisson_depth, scale=1.1, linear_fit=False, n_threads=1)
    verts = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.triangles).astype(np.int64)
    pts = np.asarray(pcd.points)
    tree = KDTree(pts)
    dist, _ = tree.query(verts, k=1)
    keep_v = dist <= config.crop_m
    faces = faces[keep_v[faces].all(1)]
    faces = drop_islands(faces, len(verts), config.min_island_frac)
    used = np.unique(faces)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    verts, faces = verts[used], remap[faces]
    _, idx = tree.query(verts, k=4)
    colors = np.asarray(pcd.colors)[idx.astype(np.int64)].mean(1) * 255.0
    return verts, faces, np.clip(colors, 0, 255).round().astype(np.uint8)


def drop_islands(faces: np.ndarray, n_verts: int, min_frac: float) -> np.ndarray:
    """Keep the connected pieces (faces joined through shared edges, so pieces that only touch
    at a vertex count as separate) with at least ``min_frac`` of the largest piece's faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return faces
    F = len(faces)
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, edge_id = np.unique(edges[:, 0] * n_verts + edges[:, 1], return_inverse=True)
    edge_id = edge_id.ravel()
    # bipartite graph: face f -- edge e for each of its three edges; a non-manifold edge (more
    # than two faces, e.g. a Poisson sliver stuck to a fingertip) joins nothing
    manifold = np.bincount(edge_id)[edge_id] <= 2
    face_id = np.repeat(np.arange(F), 3)[manifold]
    n_nodes = F + edge_id.max() + 1
    graph = coo_matrix((np.ones(len(face_id)), (face_id, F + edge_id[manifold])), shape=(n_nodes, n_nodes))
    _, label = connected_components(graph, directed=False)
    face_label = label[:F]
    sizes = np.bincount(face_label)
    return faces[sizes[face_label] >= min_frac * sizes.max()]
