"""The scan as a registration target: oriented sample points, a KD-tree and (for meshes) a BVH.

Built once per scan and queried every ICP iteration. Internal frame: metres, +Z up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.ops.normals import face_cross, face_normals, vertex_normals
from ghum_pipe.register.backend import MeshDistance, PointIndex


@dataclass(eq=False)
class ScanTarget:
    """Oriented samples of the scan surface.

    points: (N, 3) metres; normals: (N, 3) unit, outward; index: KD-tree over ``points``;
    mesh: exact point-to-surface distances when the scan has faces (else None: distances are
    to the nearest sample).
    """

    points: np.ndarray
    normals: np.ndarray
    index: PointIndex
    mesh: MeshDistance | None
    face_normals: np.ndarray | None = None  # (F, 3) for meshes
    boundary_faces: np.ndarray | None = None  # (F,) bool: faces touching a hole's rim

    def distance_to_scan(self, query: np.ndarray) -> np.ndarray:
        """(Q, 3) -> (Q,) distance to the scan surface (mesh) or nearest sample (cloud)."""
        if self.mesh is not None:
            return self.mesh.closest(query)["dist"]
        return self.index.query(query, 1)[0][:, 0]


def build_target(
    verts: np.ndarray, faces: np.ndarray | None, normals: np.ndarray | None = None,
    max_points: int = 60000, seed: int = 0,
) -> ScanTarget:
    """Sample up to ``max_points`` oriented points on the scan (all vertices of a small scan,
    area-uniform surface samples of a dense mesh, a random subset of a dense cloud).

    Args:
        verts: (N, 3) metres, +Z up; faces: (F, 3) or None for a point cloud;
        normals: (N, 3) per-vertex normals of a cloud (estimated with Open3D when missing).
    """
    rng = np.random.default_rng(seed)
    verts = np.asarray(verts, dtype=np.float64)
    mesh = None
    if faces is not None and len(faces):
        faces = np.asarray(faces, dtype=np.int64)
        mesh = MeshDistance(verts, faces)
        fn = face_normals(verts, faces)
        used = np.unique(faces)
        if len(used) <= max_points:  # vertices no face uses have no normal: leave them out
            pts, nrm = verts[used], vertex_normals(verts, faces)[used]
        else:
            area = 0.5 * np.linalg.norm(
                face_cross(verts, faces), axis=1)
            f = rng.choice(len(faces), size=max_points, p=area / area.sum())
            r1, r2 = rng.random(max_points), rng.random(max_points)
            s = np.sqrt(r1)
            b = np.stack([1 - s, s * (1 - r2), s * r2], 1)
            pts = np.einsum("nk,nkc->nc", b, verts[faces[f]])
            nrm = fn[f]
    else:
        if len(verts) > max_points:
            keep = np.sort(rng.choice(len(verts), size=max_points, replace=False))
        else:
            keep = np.arange(len(verts))
        pts = verts[keep]
        nrm = None if normals is None else np.asarray(normals, dtype=np.float64)[keep]
        if nrm is None or not np.isfinite(nrm).all():
            nrm = estimate_normals(pts)
    nrm = nrm / np.clip(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12, None)
    bf = boundary_face_mask(faces) if mesh is not None else None
    return ScanTarget(points=pts, normals=nrm, index=PointIndex(pts), mesh=mesh,
                      face_normals=fn if mesh is not None else None, boundary_faces=bf)


def boundary_face_mask(faces: np.ndarray) -> np.ndarray:
    """(F,) bool: faces with a vertex on a boundary edge (an edge used by one face only).
    Closest points there are usually the rim of a hole, not the true match (Turk & Levoy 1994)."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, inv, cnt = np.unique(e, axis=0, return_inverse=True, return_counts=True)
    rim_v = np.zeros(f.max() + 1, dtype=bool)
    rim_v[uniq[cnt == 1].ravel()] = True
    return rim_v[f].any(1)


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unoriented PCA normals (Open3D), oriented away from the vertical body axis (a body
    is roughly a union of vertical-ish cylinders around its centroid line)."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
    n = np.asarray(pc.normals)
    axis_pt = np.array([points[:, 0].mean(), points[:, 1].mean(), 0.0])
    out = points - axis_pt
    out[:, 2] = 0.0
    flip = (n * out).sum(1) < 0
    n[flip] *= -1
    return n
