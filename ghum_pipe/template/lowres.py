"""The GHUML template: a ~3,000-vertex version of the full template with fixed sparse maps.

GHUML (Xu et al. 2020) is the same model on a lower-resolution mesh (3,194 vertices in the
paper). Here the full template is decimated by quadric error (Garland & Heckbert 1997, via
``fast_simplification``), which keeps vertices where curvature is high (face, hands, feet).
Two fixed sparse maps tie the meshes, each row a barycentric combination of 3 vertices:

- ``full_to_low`` (Vl, V): every low vertex is the closest point of the full rest mesh;
- ``low_to_full`` (V, Vl): every full vertex is its closest point on the low rest mesh.

So a GHUML registration upsamples to full resolution with ``low_to_full @ verts_low`` and a
full one downsamples with ``full_to_low @ verts``; both commute with any smooth deformation,
and the round trip on the rest mesh stays under 3 mm mean (tests/test_template.py).

The low-resolution rig (skinning weights, shape and expression bases, part labels, keypoint
regressor) is transferred through the same maps, so ``load_lowres_template()`` is a full
:class:`Template` with the same skeleton and the same ``pose`` API.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.sparse as sp

from ghum_pipe.template.template import Template, atomic_save_npz, build_lock, cache_dir, load_template

LOWRES_VERSION = 1
DEFAULT_TARGET_VERTS = 3000


def closest_barycentric(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of each query on a triangle mesh, as barycentric coordinates.

    Args:
        points: (N, 3) queries; verts (V, 3), faces (F, 3) the mesh.
    Returns:
        vertex_ids (N, 3) int64 and weights (N, 3) float64 (non-negative, rows sum to 1).
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    ans = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    tri = ans["primitive_ids"].numpy().astype(np.int64)
    uv = ans["primitive_uvs"].numpy().astype(np.float64)  # weights of corners 1 and 2
    w = np.stack([1.0 - uv.sum(1), uv[:, 0], uv[:, 1]], 1).clip(0.0, 1.0)
    return faces[tri].astype(np.int64), w / w.sum(1, keepdims=True)


def apply_map(m: sp.spmatrix, x: np.ndarray, axis: int = -2) -> np.ndarray:
    """Apply a sparse vertex map (Vout, Vin) along the vertex ``axis`` of any array."""
    x = np.moveaxis(np.asarray(x), axis, 0)
    out = m @ x.reshape(x.shape[0], -1)
    return np.moveaxis(np.asarray(out).reshape((m.shape[0],) + x.shape[1:]), 0, axis)


def _bary_matrix(ids: np.ndarray, w: np.ndarray, n_cols: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(ids)), 3)
    return sp.csr_matrix((w.ravel(), (rows, ids.ravel())), shape=(len(ids), n_cols))


def build_lowres_arrays(full: Template, target_verts: int = DEFAULT_TARGET_VERTS) -> dict:
    """Decimate the full template and compute both sparse maps."""
    import fast_simplification

    # Euler: F ~ 2V for a closed mesh; ask for that many faces.
    reduction = 1.0 - (2.0 * target_verts) / len(full.faces)
    low_verts, low_faces = fast_simplification.simplify(
        full.rest_verts.astype(np.float32), full.faces.astype(np.int32), target_reduction=reduction
    )
    ids, w = closest_barycentric(low_verts, full.rest_verts, full.faces)
    full_to_low = _bary_matrix(ids, w, full.n_verts)
    low_rest = full_to_low @ full.rest_verts
    ids2, w2 = closest_barycentric(full.rest_verts, low_rest, low_faces)
    return dict(
        faces=low_faces.astype(np.int64),
        f2l_ids=ids, f2l_w=w, l2f_ids=ids2, l2f_w=w2,
        full_hash=np.array(full.hash),
    )


def _transfer(full: Template, arrays: dict, top_k: int) -> tuple[Template, sp.csr_matrix, sp.csr_matrix]:
    faces = arrays["faces"]
    f2l = _bary_matrix(arrays["f2l_ids"], arrays["f2l_w"], full.n_verts)
    n_low = f2l.shape[0]
    l2f = _bary_matrix(arrays["l2f_ids"], arrays["l2f_w"], n_low)
    per_vertex = lambda basis: apply_map(f2l, basis, axis=1)  # noqa: E731

    # Skinning: blend dense weights through the map, keep the top k, renormalise.
    dense = np.zeros((full.n_verts, full.n_joints))
    np.put_along_axis(dense, full.skin_indices, full.skin_weights, 1)
    low_dense = f2l @ dense
    order = np.argsort(-low_dense, 1)[:, :top_k]
    w = np.take_along_axis(low_dense, order, 1)
    w /= w.sum(1, keepdims=True)

    # Labels: the label of the dominant full vertex; faces: the majority of their corners.
    dominant = arrays["f2l_ids"][np.arange(n_low), arrays["f2l_w"].argmax(1)]
    vlabels = full.vertex_part_labels[dominant]
    flabels = np.array([np.bincount(vlabels[f]).argmax() for f in faces], dtype=full.face_part_labels.dtype)
    # UVs: each low corner takes the UV of the full face nearest to its vertex (seams approximate).
    corner_uv = _corner_uvs(full, arrays["f2l_ids"], arrays["f2l_w"], low_faces=faces)

    low = dataclasses.replace(
        full,
        rest_verts=f2l @ full.rest_verts,
        faces=faces,
        face_uvs=corner_uv,
        skin_indices=order.astype(np.int64),
        skin_weights=w,
        shape_basis=per_vertex(full.shape_basis),
        expression_basis=per_vertex(full.expression_basis),
        vertex_part_labels=vlabels,
        face_part_labels=flabels,
        coco_regressor=full.coco_regressor @ l2f,
        source=f"{full.source} (GHUML, {n_low} vertices)",
        _torch_cache={},
    )
    return low, f2l, l2f


def _corner_uvs(full: Template, ids: np.ndarray, w: np.ndarray, low_faces: np.ndarray) -> np.ndarray:
    # For each low vertex, find a full face containing its dominant full vertex and use that
    # corner's UV; adequate for colouring previews, not for texture baking across seams.
    dominant = ids[np.arange(len(ids)), w.argmax(1)]
    face_of_vertex = np.full(full.n_verts, -1)
    corner_of_vertex = np.zeros(full.n_verts, dtype=np.int64)
    for c in range(3):
        face_of_vertex[full.faces[:, c]] = np.arange(len(full.faces))
        corner_of_vertex[full.faces[:, c]] = c
    vuv = full.face_uvs[face_of_vertex[dominant], corner_of_vertex[dominant]]
    return vuv[low_faces].astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LowRes:
    """The GHUML template and the fixed maps to and from the full template."""

    template: Template
    full_to_low: sp.csr_matrix  # (Vl, V)
    low_to_full: sp.csr_matrix  # (V, Vl)

    def downsample(self, verts_full: np.ndarray) -> np.ndarray:
        """(..., V, 3) full-resolution vertices -> (..., Vl, 3)."""
        return apply_map(self.full_to_low, verts_full)

    def upsample(self, verts_low: np.ndarray) -> np.ndarray:
        """(..., Vl, 3) low-resolution vertices -> (..., V, 3)."""
        return apply_map(self.low_to_full, verts_low)


@functools.lru_cache(maxsize=2)
def load_lowres(top_k: int = 4, target_verts: int = DEFAULT_TARGET_VERTS) -> LowRes:
    """The GHUML template (cached in ``$GHUM_PIPE_CACHE``; built in a few seconds once)."""
    full = load_template(top_k)
    path = cache_dir() / f"ghuml-v{LOWRES_VERSION}-{full.hash}-{target_verts}.npz"
    if not path.exists():
        with build_lock(path):
            if not path.exists():
                atomic_save_npz(path, **build_lowres_arrays(full, target_verts))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    low, f2l, l2f = _transfer(full, arrays, top_k)
    return LowRes(low, f2l, l2f)


def load_lowres_template(top_k: int = 4) -> Template:
    """The GHUML template as a :class:`Template` (same skeleton and ``pose`` API)."""
    return load_lowres(top_k).template
