"""Face and vertex normals of triangle meshes.

Vertex normals are area-weighted: each face adds its unnormalised normal (length = twice its
area) to its three vertices, and the sums are normalised. Written here rather than taken from
trimesh: ``Trimesh.vertex_normals`` is angle-weighted (a different normal), and its
area-weighted sum (``geometry.mean_vertex_normals`` over a sparse incidence matrix) took 220 ms
on the 13,718-vertex template against 13 ms for the ``bincount`` below. The torch version is
batched and differentiable (PyTorch3D's ``Meshes.verts_normals`` is the same sum, but needs
PyTorch3D).
A vertex in no face, or only in degenerate ones, gets the zero vector.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12  # below this length a summed normal is treated as zero


def face_cross(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) verts, (F, 3) int faces -> (F, 3) unnormalised face normals, length = 2 x area."""
    v = np.asarray(verts, dtype=np.float64)
    return np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) verts, (F, 3) int faces -> (F, 3) unit face normals (right-hand rule, float64)."""
    fn = face_cross(verts, faces)
    return fn / np.clip(np.linalg.norm(fn, axis=1, keepdims=True), EPS, None)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) verts, (F, 3) int faces -> (V, 3) area-weighted unit vertex normals (float64)."""
    fn = face_cross(verts, faces)
    idx = np.asarray(faces).reshape(-1)
    summed = np.stack([np.bincount(idx, weights=np.repeat(fn[:, c], 3), minlength=len(verts)) for c in range(3)], 1)
    return summed / np.clip(np.linalg.norm(summed, axis=1, keepdims=True), EPS, None)


def vertex_normals_torch(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) verts, (F, 3) long faces -> (B, V, 3) area-weighted unit normals (differentiable)."""
    a, b, c = verts[:, faces[:, 0]], verts[:, faces[:, 1]], verts[:, faces[:, 2]]
    fn = torch.cross(b - a, c - a, dim=-1)
    n = torch.zeros_like(verts)
    for col in range(3):
        n = n.index_add(1, faces[:, col], fn)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(EPS)
