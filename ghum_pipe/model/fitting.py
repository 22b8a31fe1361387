"""Fitting a model to registrations (same topology): pose, translation and, at run time, latents.

The objective is the paper's data term: per-vertex squared Euclidean distance between the model
and the registration, weighted by the filter F (``mask``: 1 where the registration saw scan data),
plus a small Gaussian prior on the latents (they are N(0, I) under the VAEs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ghum_pipe.template.lbs import as_rotmats


def _as_batch(x, dtype=torch.float32) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=dtype)
    return x[None] if x.dim() == 2 else x


def masked_sq_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over scans of the F-weighted mean squared vertex distance; (B, V, 3) x2, mask (B, V)."""
    d2 = ((pred - target) ** 2).sum(-1)
    return ((d2 * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean()


def kabsch(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted rigid alignment per batch: R (B, 3, 3), t (B, 3) minimising |R src + t - dst|."""
    w = w / w.sum(1, keepdim=True).clamp_min(1e-9)
    cs, cd = (src * w[..., None]).sum(1), (dst * w[..., None]).sum(1)
    H = torch.einsum("bv,bvi,bvj->bij", w, src - cs[:, None], dst - cd[:, None])
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.transpose(1, 2) @ U.transpose(1, 2)))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = Vt.transpose(1, 2) @ D @ U.transpose(1, 2)
    return R, cd - torch.einsum("bij,bj->bi", R, cs)


def rotmat_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B, 3); fine away from 180 degrees, which is enough for an initial guess."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1 + 1e-6, 1 - 1e-6)
    angle = torch.acos(cos)
    v = torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1)
    return v / (2 * torch.sin(angle))[:, None].clamp_min(1e-6) * angle[:, None]


def rigid_init(model, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root rotation and translation aligning the mean rest shape to each target (B, V, 3)."""
    rest = model.mean_rest.expand(target.shape[0], -1, -1)
    R, t = kabsch(rest, target, mask)
    pose = torch.zeros(target.shape[0], model.n_joints, 3)
    pose[:, 0] = rotmat_to_axis_angle(R)
    # the root rotates about the root joint, not the origin: move the translation accordingly
    j0 = model.joint_regressor(rest)[:, 0]
    return pose, t + torch.einsum("bij,bj->bi", R, j0) - j0


def part_pose_init(model, target: torch.Tensor, mask: torch.Tensor, min_verts: int = 12,
                   min_weight: float = 0.6) -> torch.Tensor:
    """Pose (B, J, 3) from the parts of each target (B, V, 3): registrations share the model's
    topology, so every body part's rotation is the Kabsch rotation of its vertices (those a
    joint skins with weight >= ``min_weight``) from the mean rest shape to the target; a joint
    with fewer than ``min_verts`` such vertices (seen by ``mask``) turns with its parent; the
    root takes the whole body's rotation. Local rotations are ``G_parent^T G_j``. An initial
    guess for :func:`fit_model` when no registration pose is known."""
    B, J = target.shape[0], model.n_joints
    rest = model.mean_rest.expand(B, -1, -1)
    w = model.skin_weights.detach()
    best = w.argmax(1)
    dom = model.skin_indices[torch.arange(len(best)), best]
    strong = w.max(1).values >= min_weight
    parents = model.parents.tolist()
    G = [None] * J
    G[0] = kabsch(rest, target, mask)[0]
    for j in range(1, J):
        sel = torch.nonzero((dom == j) & strong).flatten()
        m = mask[:, sel]
        if len(sel) >= min_verts and bool((m.sum(1) >= min_verts).all()):
            G[j] = kabsch(rest[:, sel], target[:, sel], m)[0]
        else:
            G[j] = G[parents[j]]
    local = [G[0]] + [G[parents[j]].transpose(1, 2) @ G[j] for j in range(1, J)]
    return rotmat_to_axis_angle(torch.stack(local, 1).reshape(-1, 3, 3)).reshape(B, J, 3)


def fit_poses(model, target: torch.Tensor, mask: torch.Tensor, rest: torch.Tensor, expression: torch.Tensor | None,
              pose: torch.Tensor, translation: torch.Tensor, iters: int):
    """Step (a) of training: optimise pose (B, J, 3) and translation (B, 3) with everything else
    fixed, by L-BFGS (scale-aware, unlike Adam whose first steps move every joint by its
    learning rate). Returns the new pose and translation (detached)."""
    pose = pose.clone().requires_grad_(True)
    translation = translation.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([pose, translation], lr=1.0, max_iter=iters, history_size=10,
                            line_search_fn="strong_wolfe")
    for p in model.parameters():
        p.requires_grad_(False)

    def closure():
        opt.zero_grad()
        verts, _ = model.articulate(rest, pose, expression, translation)
        loss = masked_sq_error(verts, target, mask) * 1e4 * target.shape[0]  # cm^2, summed over scans
        loss.backward()
        return loss

    try:
        opt.step(closure)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return pose.detach(), translation.detach()


@dataclass
class FitResult:
    """Per registration: pose (B, J, 3), translation (B, 3), latents, fitted verts (B, V, 3),
    per-vertex error (B, V) metres."""

    pose: torch.Tensor
    translation: torch.Tensor
    shape_latent: torch.Tensor
    expression_latent: torch.Tensor
    verts: torch.Tensor
    vertex_error_m: torch.Tensor

    def mean_error_mm(self, mask=None) -> float:
        e = self.vertex_error_m if mask is None else self.vertex_error_m[torch.as_tensor(mask, dtype=torch.bool)]
        return float(e.mean() * 1000)


def lbfgs(params, objective, iters: int) -> None:
    """Minimise ``objective()`` over ``params`` by L-BFGS with a strong-Wolfe line search;
    tolerances at 0 so it runs its ``iters`` iterations unless the line search stalls."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


def fit_model(model, mesh_verts, mask=None, init_pose=None, init_translation=None, iters: int = 100,
              use_psd: bool = True, prior: float = 1e-4) -> FitResult:
    """Fit pose, translation, shape and expression latents to registrations.

    Staged, because a joint L-BFGS from the mean shape lets the pose absorb the shape
    difference and stalls (measured on a held-out GHUML subject: 13 mm where the model reaches
    under 4 mm). Fractions of ``iters`` L-BFGS iterations (strong-Wolfe line search):

    1. translation (10 %), 2. shape latent + translation (25 %), 3. + expression latent (20 %),
    with the pose held at ``init_pose``; 4. pose + translation (20 %); 5. everything (the rest).

    Args:
        mesh_verts: (B, V, 3) or (V, 3) metres, the model's topology.
        mask: (B, V) filter F (1 = use the vertex) or None for all.
        init_pose: (B, J, 3) e.g. the registration's pose; None = :func:`part_pose_init` (each body
            part's rotation from its vertices).
        prior: weight of |z|^2 (latents are N(0, I)) against the cm^2 data term.
    """
    target = _as_batch(mesh_verts)
    B = target.shape[0]
    mask = torch.ones(B, model.n_verts) if mask is None else _as_batch(mask).reshape(B, -1).float()
    with torch.no_grad():
        if init_pose is None:
            pose = part_pose_init(model, target, mask)
            init_translation = None
        else:
            pose = _as_batch(init_pose).reshape(B, model.n_joints, 3).clone()
        trans = torch.zeros(B, 3) if init_translation is None else _as_batch(init_translation).reshape(B, 3).clone()
        if init_translation is None:
            v, _ = model.articulate(model.rest_shape(torch.zeros(B, model.config.shape_latent), B), pose,
                                    use_psd=use_psd)
            trans = ((target - v) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pose, trans = pose.detach().requires_grad_(True), trans.detach().requires_grad_(True)
    zb = torch.zeros(B, model.config.shape_latent, requires_grad=True)
    zf = torch.zeros(B, model.config.expression_latent, requires_grad=True)

    def objective():
        rest = model.rest_shape(zb, B)
        verts, _ = model.articulate(rest, pose, model.expression_offsets(zf, B), trans, use_psd=use_psd)
        data = masked_sq_error(verts, target, mask) * 1e4 * B  # cm^2, summed over registrations
        return data + prior * ((zb**2).sum() + (zf**2).sum())

    n = [max(1, round(iters * f)) for f in (0.1, 0.25, 0.2, 0.2)]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        lbfgs([trans], objective, n[0])
        lbfgs([zb, trans], objective, n[1])
        lbfgs([zb, zf, trans], objective, n[2])
        lbfgs([pose, trans], objective, n[3])
        lbfgs([pose, trans, zb, zf], objective, max(1, iters - sum(n)))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    with torch.no_grad():
        rest = model.rest_shape(zb, B)
        verts, _ = model.articulate(rest, pose, model.expression_offsets(zf, B), trans, use_psd=use_psd)
        err = (verts - target).norm(dim=-1)
    return FitResult(pose.detach(), trans.detach(), zb.detach(), zf.detach(), verts, err)


def as_pose_tensor(pose) -> torch.Tensor:
    """Accept axis-angle or rotation matrices and return rotation matrices (B, J, 3, 3)."""
    return as_rotmats(_as_batch(pose) if not isinstance(pose, torch.Tensor) else pose)
