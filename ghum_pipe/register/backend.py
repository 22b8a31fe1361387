"""The one place registration chooses how neighbours and distances are computed.

* ``knn``: k nearest neighbours. On CPU a KD-tree (pykdtree, C/OpenMP; scipy's cKDTree if
  pykdtree is missing); chunked ``torch.cdist`` on CUDA tensors; PyTorch3D ``knn_points`` only
  when asked (``use_pytorch3d=True``): no backend switches itself on before it is proven on a
  GPU (``scripts/gpu_check.py``).
* ``PointIndex``: a KD-tree built once over a fixed point set (the scan) and queried many
  times (every ICP iteration), so the build is not repeated.
* ``MeshDistance``: exact closest points on a triangle mesh (Open3D's ``RaycastingScene``,
  an Embree BVH), returning the face and barycentric coordinates: used for the scan->reg
  correspondences and the metrics, where nearest *vertex* distances would overstate the error
  by ~half an edge length.

Everything here takes and returns metres; it does not know about bodies.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # optional: CUDA machines with PyTorch3D installed
    from pytorch3d.ops import knn_points as _p3d_knn_points  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _p3d_knn_points = None

try:
    from pykdtree.kdtree import KDTree as _KDTree
except Exception:  # noqa: BLE001
    _KDTree = None


def single_threaded_blas(fn):
    """Decorator: run ``fn`` with OpenBLAS/MKL limited to one thread (threadpoolctl).

    Registration makes thousands of tiny numpy/scipy calls (scipy's L-BFGS-B steps on ~300
    variables, 3x3 solves); a threaded BLAS spins its threads up for each and costs more than
    the maths (measured: skeleton fit 10.4 -> 5.1 s CPU, and worse on a loaded machine).
    Torch's own threads are not affected.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def has_pytorch3d() -> bool:
    return _p3d_knn_points is not None


def knn(query: torch.Tensor, ref: torch.Tensor, k: int = 1, use_pytorch3d: bool = False):
    """k nearest neighbours of every query point among ``ref``.

    Args:
        query: (N, 3) float tensor, metres.
        ref: (M, 3) float tensor, metres, M >= k.
        k: neighbours per query.
        use_pytorch3d: use PyTorch3D's ``knn_points`` (it must be importable); default: never.
    Returns:
        dist (N, k) Euclidean distances (metres, ascending) and idx (N, k) long indices into ref,
        on the device of ``query``.
    """
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != 3 or ref.shape[1] != 3:
        raise ValueError(f"knn expects (N, 3) and (M, 3), got {tuple(query.shape)} and {tuple(ref.shape)}")
    if ref.shape[0] < k:
        raise ValueError(f"knn needs at least k={k} reference points, got {ref.shape[0]}")
    if query.shape[0] == 0:
        return query.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=query.device)
    if use_pytorch3d:
        if not has_pytorch3d():
            raise RuntimeError("use_pytorch3d=True but pytorch3d is not importable")
        out = _p3d_knn_points(query[None].float(), ref[None].float(), K=k, return_sorted=True)
        return out.dists[0].clamp_min(0).sqrt().to(query.dtype), out.idx[0]
    if query.is_cuda:
        return _knn_cdist(query, ref, k)
    dist, idx = PointIndex(ref.detach().cpu().numpy()).query(query.detach().cpu().numpy(), k)
    return torch.as_tensor(dist, dtype=query.dtype), torch.as_tensor(idx, dtype=torch.long)


def _knn_cdist(query: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 8192):
    """Brute force in chunks of queries, so (chunk, M) distances fit in memory."""
    dists, idxs = [], []
    for q in query.split(chunk):
        d, i = torch.cdist(q, ref).topk(k, dim=1, largest=False)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


class PointIndex:
    """KD-tree over a fixed (M, 3) point set, queried with numpy arrays (metres)."""

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        if _KDTree is not None:
            self._tree = _KDTree(self.points)
            self._pykd = True
        else:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.points)
            self._pykd = False

    def query(self, query: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) -> dist (N, k) float64, idx (N, k) int64."""
        q = np.ascontiguousarray(query, dtype=np.float64)
        if self._pykd:
            d, i = self._tree.query(q, k=k)
        else:
            d, i = self._tree.query(q, k=k, workers=-1)
        d = np.asarray(d, dtype=np.float64).reshape(len(q), k)
        i = np.asarray(i, dtype=np.int64).reshape(len(q), k)
        return d, i


class MeshDistance:
    """Exact closest points on a fixed triangle mesh (Open3D RaycastingScene / Embree)."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray):
        import open3d as o3d

        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(verts, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
        )

    def closest(self, query: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3) query points -> dict with ``points`` (N, 3) closest surface points,
        ``dist`` (N,), ``face`` (N,) int64 triangle index and ``bary`` (N, 3) barycentric
        coordinates of ``points`` in that triangle (w.r.t. its vertices 0, 1, 2)."""
        q = self._o3d.core.Tensor(np.ascontiguousarray(query, dtype=np.float32))
        ans = self.scene.compute_closest_points(q)
        pts = ans["points"].numpy().astype(np.float64)
        face = ans["primitive_ids"].numpy().astype(np.int64)
        uv = ans["primitive_uvs"].numpy().astype(np.float64)
        # Open3D's uv: point = (1 - u - v) * a + u * b + v * c
        bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
        dist = np.linalg.norm(pts - np.asarray(query, dtype=np.float64), axis=1)
        return dict(points=pts, dist=dist, face=face, bary=bary)


def closest_points_on_mesh(query: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """One-shot :meth:`MeshDistance.closest` (builds the BVH each call)."""
    return MeshDistance(verts, faces).closest(query)
