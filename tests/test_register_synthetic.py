"""Known-geometry subjects for the registration tests: the template deformed by a known shape,
pose, smooth offset field and global similarity (imported by the other test_register files)."""

from __future__ import annotations

import numpy as np
import torch

from ghum_pipe.ops.normals import vertex_normals
from ghum_pipe.template.anatomy import hinge_axes

POSES = {
    "apose": {},
    "posed": {  # axis-angle (rad) in world-aligned joint frames; +X = character's left
        "upperarm01.L": (0.0, 0.9, 0.0), "upperarm01.R": (0.5, -0.6, 0.0),
        "lowerarm01.L": ("elbow", 0.9), "lowerarm01.R": ("elbow", 1.2),  # hinge flexion (rad)
        "upperleg01.L": (-0.5, 0.0, 0.0), "lowerleg01.L": (0.9, 0.0, 0.0),
        "upperleg01.R": (0.2, 0.0, 0.1), "spine03": (0.0, 0.0, 0.3), "spine01": (0.15, 0.0, 0.0),
        "neck02": (0.0, 0.0, -0.4), "head": (0.2, 0.0, 0.0),
    },
}


def make_subject(template, pose_name="posed", seed=0, offset_mm=8.0, rot_z=0.4, scale=1.0):
    """Truth vertices (V, 3) in metres, +Z up, and the generating parameters."""
    rng = np.random.default_rng(seed)
    t = template
    betas = t.phenotype_bank_betas[seed % len(t.phenotype_bank_betas)]
    pose = np.zeros((t.n_joints, 3))
    hinges = hinge_axes(t.joint_names, t.rest_joints)
    for name, aa in POSES[pose_name].items():
        pose[t.joint_index(name)] = aa[1] * hinges[name] if aa[0] == "elbow" else aa
    pose[0] = (0.0, 0.0, rot_z)
    # smooth offsets: a few Gaussian bumps along the rest normals
    rest = t.rest_verts + np.einsum("s,svc->vc", betas, t.shape_basis)
    n = vertex_normals(rest, t.faces)
    centres = rest[rng.choice(np.flatnonzero(t.masks["surface"]), 12, replace=False)]
    amp = rng.uniform(-1, 1, 12) * offset_mm * 1e-3
    d2 = ((rest[:, None] - centres[None]) ** 2).sum(-1)
    field = (amp * np.exp(-d2 / (2 * 0.06**2))).sum(1)
    field[~t.masks["surface"]] = 0.0
    offsets = field[:, None] * n
    with torch.no_grad():
        v, _ = t.pose(torch.tensor(betas[None], dtype=torch.float32), torch.tensor(pose[None], dtype=torch.float32),
                      None, torch.tensor(offsets[None], dtype=torch.float32))
    transl = np.array([0.1, -0.2, 1.0])
    verts = scale * v[0].numpy().astype(np.float64) + transl
    return {"verts": verts, "betas": betas, "pose": pose, "offsets": offsets, "transl": transl}


def scan_faces(template, verts, holes=True, seed=0):
    """Faces of the visible surface (no interior parts), optionally with the soles and a few
    round holes cut out, as a scanner would leave them."""
    t = template
    keep_v = t.masks["surface"].copy()
    if holes:
        rng = np.random.default_rng(seed + 1)
        feet = t.masks["feet"]
        z = verts[:, 2]
        keep_v &= ~(feet & (z < z[feet].min() + 0.015))  # soles
        surf = np.flatnonzero(keep_v)
        for c in verts[rng.choice(surf, 4, replace=False)]:
            keep_v &= np.linalg.norm(verts - c, axis=1) > 0.03
    f = t.faces[keep_v[t.faces].all(1)]
    return f


def subject_landmarks(tl, verts, noise_m=0.0, seed=0):
    """Template landmark definitions applied to the truth vertices, plus Gaussian noise."""
    rng = np.random.default_rng(seed + 2)
    pts = tl.points(verts)
    return list(tl.names), pts + rng.normal(0, noise_m, pts.shape), np.ones(len(pts))
