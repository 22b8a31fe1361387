"""A registration as a rigged avatar: pure numpy arrays, already in glTF's conventions.

The template poses a rest mesh with linear blend skinning in world-aligned joint frames
(``ghum_pipe.template.lbs``): joint j's local transform is ``[R_j | J_j - J_parent(j)]`` and a
vertex moves with ``sum_j w_j G_j [I | -J_j] v``. A glTF skin computes exactly that when each
joint node carries ``rotation = R_j``, ``translation = J_j - J_parent(j)`` and its inverse bind
matrix is the translation by ``-J_j`` (rest frames are world-aligned, so no rotation in it).

Registration parameters (``params.npz``) give ``verts = scale * pose(shape, pose, expr, offsets)
+ translation``. LBS commutes with a uniform scale and a translation of the whole rest geometry,
so both are baked into the rest mesh and joints: the avatar opens where the scan was, at its size.

Frames: inside ghum-pipe +Z is up and the body faces -Y; glTF wants +Y up and the front facing
+Z. ``Z_UP_TO_GLTF`` maps one to the other, (x, y, z) -> (x, z, -y), a proper rotation, applied
to positions as ``C p``, to rotations as ``C R C^T`` and to axis-angle vectors as ``C a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from ghum_pipe.ops.normals import vertex_normals

# internal (+Z up, facing -Y) -> glTF (+Y up, facing +Z): rotation of -90 degrees about X
Z_UP_TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MAX_INFLUENCES = 4  # glTF's JOINTS_0/WEIGHTS_0 hold 4 per vertex; more sets are poorly supported


@dataclass(frozen=True, eq=False)
class Avatar:
    """Everything a skinned glTF needs, in glTF's frame (metres, +Y up, facing +Z).

    V' = vertices after splitting at UV seams, J joints, E morph targets.
    """

    name: str
    rest_verts: np.ndarray  # (V', 3) float64, the subject's rest mesh (no expression)
    normals: np.ndarray  # (V', 3) unit rest-pose normals
    faces: np.ndarray  # (F, 3) into rest_verts
    uvs: np.ndarray  # (V', 2) texture coordinates, origin at the image's bottom-left (OBJ convention)
    vertex_map: np.ndarray  # (V',) int: the template vertex each split vertex came from
    joint_names: tuple[str, ...]
    parents: np.ndarray  # (J,) int, -1 for the root
    rest_joints: np.ndarray  # (J, 3) joint centres of the rest mesh
    rotations: np.ndarray  # (J, 3, 3) local joint rotations of the scan's pose (glTF frame)
    skin_joints: np.ndarray  # (V', 4) int joint indices
    skin_weights: np.ndarray  # (V', 4) float, rows sum to 1
    morph_names: tuple[str, ...]
    morph_deltas: np.ndarray  # (E, V', 3) rest-pose offsets at weight 1
    morph_weights: np.ndarray  # (E,) the scan's expression
    extras: dict = field(default_factory=dict)  # JSON-able: frame back to the scan, ids, units

    @property
    def local_translations(self) -> np.ndarray:
        """(J, 3) joint node translations: offset from the parent (the root: its position)."""
        t = self.rest_joints.copy()
        t[1:] = self.rest_joints[1:] - self.rest_joints[self.parents[1:]]
        return t

    @property
    def quaternions_xyzw(self) -> np.ndarray:
        """(J, 4) local rotations as glTF quaternions (x, y, z, w), w >= 0."""
        q = Rotation.from_matrix(self.rotations).as_quat()
        return q * np.where(q[:, 3:] < 0, -1.0, 1.0)

    @property
    def inverse_bind_matrices(self) -> np.ndarray:
        """(J, 4, 4): translation by -J_j (rest joint frames are world-aligned)."""
        ibm = np.tile(np.eye(4), (len(self.joint_names), 1, 1))
        ibm[:, :3, 3] = -self.rest_joints
        return ibm


def split_uv_seams(faces: np.ndarray, face_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, UV) pair, as glTF and game engines need.

    Args: faces (F, 3) int, face_uvs (F, 3, 2) per-corner UVs.
    Returns: vertex_map (V',) original vertex of each new vertex (ascending), new faces (F, 3),
    uvs (V', 2).
    """
    corners_v = faces.reshape(-1).astype(np.int64)
    uv = face_uvs.reshape(-1, 2).astype(np.float32)
    key = np.column_stack([corners_v, uv.view(np.int32)])  # exact float bits: equal UVs only
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return corners_v[first], inverse.reshape(faces.shape), uv[first].astype(np.float64)


def gltf_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals (``ops.vertex_normals``), +Z where a vertex is in
    no face: glTF requires every normal to be of unit length."""
    n = vertex_normals(verts, faces)
    return np.where(np.linalg.norm(n, axis=1, keepdims=True) > 0.5, n, np.array([0.0, 0.0, 1.0]))


def top_influences(indices: np.ndarray, weights: np.ndarray, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest skinning weights per vertex and renormalise them to sum to 1.

    indices, weights: (V, I) -> (V, k) each (zero-padded when I < k)."""
    order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    idx = np.take_along_axis(indices, order, 1)
    w = np.take_along_axis(weights, order, 1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)))
        w = np.pad(w, ((0, 0), (0, pad)))
    w = np.where(w > 0, w, 0.0)
    return idx.astype(np.int64), w / np.clip(w.sum(1, keepdims=True), 1e-12, None)


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """(J, 3) axis-angle -> (J, 3, 3) rotation matrices."""
    return Rotation.from_rotvec(np.asarray(axis_angle, dtype=np.float64).reshape(-1, 3)).as_matrix()


def build_avatar(
    template,
    shape: np.ndarray,
    pose: np.ndarray,
    expression: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    scale: float = 1.0,
    translation: np.ndarray | None = None,
    name: str = "avatar",
    extras: dict | None = None,
    skin_indices: np.ndarray | None = None,
    skin_weights: np.ndarray | None = None,
    rest_verts: np.ndarray | None = None,
    rest_joints: np.ndarray | None = None,
) -> Avatar:
    """The avatar of one registration (or of a model's mean body).

    Args:
        template: a ``Template`` (faces, UVs, joint names and parents, bases, skinning).
        shape (S',), pose (J, 3) axis-angle, expression (E,), offsets (V, 3) rest-pose metres,
            scale, translation (3,) metres: the registration's parameters (internal frame).
        skin_indices/skin_weights (V, I), rest_verts (V, 3), rest_joints (J, 3): override the
            template's (a trained model's learned skinning and mean body); rest_* are then used
            as the unshaped rest geometry.
    Returns: an :class:`Avatar` whose skinned, morphed mesh is ``scale * t.pose(...) + translation``
    mapped into glTF's frame.
    """
    t = template
    V, J = t.n_verts, t.n_joints
    verts = np.array(t.rest_verts if rest_verts is None else rest_verts, dtype=np.float64)
    joints = np.array(t.rest_joints if rest_joints is None else rest_joints, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.float64).reshape(-1)
    if shape.size:
        s = shape.size
        verts = verts + np.einsum("s,svk->vk", shape, t.shape_basis[:s])
        joints = joints + np.einsum("s,sjk->jk", shape, t.shape_joint_basis[:s])
    expression = np.zeros(t.n_expression) if expression is None else np.asarray(expression, dtype=np.float64)
    # the skeleton must be the one the scan was posed with: its joints include the expression's
    # joint offsets (zero for Anny's facial actions, kept for correctness); the mesh does not,
    # the expression is carried by the morph targets and their weights
    joints = joints + np.einsum("e,ejk->jk", expression, t.expression_joint_basis)
    if offsets is not None:
        verts = verts + np.asarray(offsets, dtype=np.float64).reshape(V, 3)
    translation = np.zeros(3) if translation is None else np.asarray(translation, dtype=np.float64).reshape(3)
    C = Z_UP_TO_GLTF
    to_gltf = lambda p: (scale * p + translation) @ C.T  # noqa: E731  (N, 3) internal -> glTF
    rot = rodrigues(np.asarray(pose, dtype=np.float64).reshape(J, 3))
    rot = np.einsum("ab,jbc,dc->jad", C, rot, C)  # C R C^T

    vmap, faces, uvs = split_uv_seams(t.faces, t.face_uvs)
    rest = to_gltf(verts)
    normals = gltf_normals(rest, t.faces)[vmap]
    si = t.skin_indices if skin_indices is None else skin_indices
    sw = t.skin_weights if skin_weights is None else skin_weights
    idx, w = top_influences(np.asarray(si), np.asarray(sw, dtype=np.float64))
    morphs = scale * np.einsum("evk,lk->evl", t.expression_basis[:, vmap], C)
    return Avatar(
        name=name, rest_verts=rest[vmap], normals=normals, faces=faces, uvs=uvs, vertex_map=vmap,
        joint_names=tuple(t.joint_names), parents=np.asarray(t.parents, dtype=np.int64),
        rest_joints=to_gltf(joints), rotations=rot, skin_joints=idx[vmap], skin_weights=w[vmap],
        morph_names=tuple(t.expression_names), morph_deltas=morphs, morph_weights=expression,
        extras=dict(extras or {}),
    )


def forward_kinematics(parents: np.ndarray, local_translations: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """(J, 4, 4) world matrices of joints from local rotations (J, 3, 3) and translations (J, 3)."""
    J = len(parents)
    local = np.tile(np.eye(4), (J, 1, 1))
    local[:, :3, :3] = rotations
    local[:, :3, 3] = local_translations
    world = local.copy()
    for j in range(1, J):  # parents[j] < j
        world[j] = world[parents[j]] @ local[j]
    return world


def skin_mesh(avatar: Avatar, rotations: np.ndarray | None = None, morph_weights: np.ndarray | None = None) -> np.ndarray:
    """(V', 3) the avatar posed by glTF's skinning equation, in numpy (the reference the
    exported file is checked against): morph, then sum_i w_i (world_i @ IBM_i) v."""
    rot = avatar.rotations if rotations is None else rotations
    mw = avatar.morph_weights if morph_weights is None else morph_weights
    v = avatar.rest_verts + np.einsum("e,evk->vk", mw, avatar.morph_deltas)
    joint_mats = forward_kinematics(avatar.parents, avatar.local_translations, rot) @ avatar.inverse_bind_matrices
    A = np.einsum("vi,vikl->vkl", avatar.skin_weights, joint_mats[avatar.skin_joints])  # (V', 4, 4)
    return np.einsum("vkl,vl->vk", A[:, :3, :3], v) + A[:, :3, 3]
