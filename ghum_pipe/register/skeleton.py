"""Skeleton fit: global similarity, joint rotations, shape and expression through LBS.

Model (internal metres, +Z up):  ``x = scale * LBS(shape, pose, expression) + translation``,
with the global rotation carried by the root joint (``pose[0]``).

Two phases, as in the GHUM registration (Xu et al., CVPR 2020, sec. 3.1):
1. landmarks only: sparse correspondences fix the arms and legs before any closest-point term
   can pull a limb onto the wrong body part (the local minimum of ICP on bodies);
2. landmarks + robust point-to-plane ICP both ways (template->scan and scan->template),
   correspondences recomputed every ``refresh_every`` steps and rejected by distance and
   normal angle.
Hands: finger joints are free only when hand landmarks are present; face: the 52 facial
actions are free only with face landmarks. Toes and eyes stay at rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ghum_pipe.register.backend import PointIndex, vertex_normals_torch
from ghum_pipe.register.landmark_pairs import LandmarkPairs
from ghum_pipe.register.losses import correspondence_mask, icp_loss, landmark_loss
from ghum_pipe.register.similarity import Similarity
from ghum_pipe.register.target import ScanTarget

CM2 = 1e4  # losses are evaluated in cm^2 so that the weights below read naturally


@dataclass(frozen=True)
class SkeletonConfig:
    n_shape: int = 16  # leading shape coefficients fitted
    landmark_iters: int = 120
    icp_iters: int = 100
    refresh_every: int = 5
    lr: float = 0.03
    # priors (per rad^2, per unit coefficient^2), relative to landmark/ICP terms in cm^2
    pose_prior: float = 0.5
    twist_prior: float = 5.0
    finger_prior: float = 0.2
    shape_prior: float = 0.05
    scale_prior: float = 100.0  # on log(scale): shape explains size first
    expression_prior: float = 0.05
    # per-kind landmark weights (each kind's weights sum to this)
    w_pose: float = 1.0
    w_hand: float = 0.5
    w_face: float = 0.5
    # ICP (phase 2)
    w_icp: float = 1.0
    icp_sigma_m: float = 0.02
    icp_max_dist_m: float = 0.08
    icp_max_angle_deg: float = 60.0
    n_icp_verts: int = 4000  # template vertices sampled per ICP refresh
    n_icp_scan: int = 4000  # scan points sampled per ICP refresh
    seed: int = 0


@dataclass(frozen=True)
class SkeletonFit:
    """Fitted parameters (numpy) and the posed vertices in the scan's internal frame."""

    pose: np.ndarray  # (J, 3) axis-angle, pose[0] = global rotation about the root joint
    shape: np.ndarray  # (S,)
    expression: np.ndarray  # (E,)
    scale: float
    translation: np.ndarray  # (3,) metres
    verts: np.ndarray  # (V, 3) metres
    landmark_rms_m: float
    iterations: int


_TWIST = ("upperarm02", "lowerarm02", "upperleg02", "lowerleg02")
_FIXED = ("toe", "eye.")


def joint_groups(template) -> dict[str, np.ndarray]:
    """(J,) bool masks: 'body' (fitted always, minus the root), 'fingers', 'twist', 'fixed'."""
    names = template.joint_names
    fingers = np.array([n.startswith(("finger", "metacarpal")) for n in names])
    fixed = np.array([n.startswith(_FIXED) for n in names])
    twist = np.array([n.startswith(_TWIST) for n in names])
    body = ~fingers & ~fixed
    body[0] = False
    return {"body": body, "fingers": fingers, "twist": twist, "fixed": fixed}


def initial_translation(template, sim: Similarity) -> np.ndarray:
    """Translation such that ``scale * rotate-about-root(v) + t == sim.apply(v)``."""
    j0 = template.rest_joints[0]
    return sim.translation - sim.scale * (j0 - sim.rotation @ j0)


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def fit_skeleton(
    template, pairs: LandmarkPairs, init: Similarity, target: ScanTarget | None,
    config: SkeletonConfig = SkeletonConfig(), device: str | torch.device = "cpu",
) -> SkeletonFit:
    """Fit pose, shape, expression and the global similarity to landmarks, then + ICP.

    Args:
        template: :class:`ghum_pipe.template.Template`.
        pairs: matched landmarks (targets in internal metres).
        init: similarity from :func:`ghum_pipe.register.similarity.umeyama` (template rest
            landmarks -> scan landmarks).
        target: the scan's oriented samples, or None to fit landmarks only.
    """
    cfg = config
    dt = torch.float32
    J, E = template.n_joints, template.n_expression
    groups = joint_groups(template)
    kinds = np.asarray(pairs.kinds)
    use_fingers = bool((kinds == "hand").sum() >= 6)
    use_face = bool((kinds == "face").sum() >= 10)
    free = groups["body"] | (groups["fingers"] if use_fingers else False)
    free_idx = torch.as_tensor(np.flatnonzero(free))
    prior_w = np.where(groups["twist"], cfg.twist_prior, np.where(groups["fingers"], cfg.finger_prior, cfg.pose_prior))
    prior_w = torch.as_tensor(prior_w[free], dtype=dt, device=device)

    root = torch.tensor(_rotvec(init.rotation), dtype=dt, device=device, requires_grad=True)
    transl = torch.tensor(initial_translation(template, init), dtype=dt, device=device, requires_grad=True)
    log_scale0 = float(np.log(init.scale))
    log_scale = torch.tensor(log_scale0, dtype=dt, device=device, requires_grad=True)
    joint_aa = torch.zeros(len(free_idx), 3, dtype=dt, device=device, requires_grad=True)
    shape = torch.zeros(1, cfg.n_shape, dtype=dt, device=device, requires_grad=True)
    expr = torch.zeros(1, E, dtype=dt, device=device, requires_grad=use_face)
    params = [root, transl, log_scale, joint_aa, shape] + ([expr] if use_face else [])

    # landmark weights: each kind sums to its weight, confidence-weighted within
    kind_w = {"pose": cfg.w_pose, "hand": cfg.w_hand, "face": cfg.w_face}
    w = np.zeros(len(pairs))
    for k, kw in kind_w.items():
        m = kinds == k
        if m.any():
            c = np.clip(pairs.confidence[m], 1e-3, None)
            w[m] = kw * c / c.sum()
    lm_w = torch.as_tensor(w, dtype=dt, device=device)
    lm_target = torch.as_tensor(pairs.targets, dtype=dt, device=device)
    lm_ids = torch.as_tensor(pairs.vertex_ids, device=device)
    lm_wts = torch.as_tensor(pairs.weights, dtype=dt, device=device)
    faces_t = torch.as_tensor(template.faces, device=device)
    surface = np.flatnonzero(template.masks["surface"])
    rng = np.random.default_rng(cfg.seed)

    def forward():
        pose = torch.zeros(1, J, 3, dtype=dt, device=device)
        pose = pose.index_put((torch.zeros_like(free_idx), free_idx), joint_aa)
        pose = pose.index_put((torch.tensor([0]), torch.tensor([0])), root[None])
        verts, _ = template.pose(shape, pose, expr if use_face else None)
        verts = torch.exp(log_scale) * verts[0] + transl
        return verts, pose[0]

    def priors():
        p = (prior_w * (joint_aa**2).sum(-1)).sum() + cfg.shape_prior * (shape**2).sum()
        p = p + cfg.scale_prior * log_scale**2  # scans are metric (io converts units)
        if use_face:
            p = p + cfg.expression_prior * (expr**2).sum()
        return p

    opt = torch.optim.Adam(params, lr=cfg.lr)
    total = cfg.landmark_iters + (cfg.icp_iters if target is not None else 0)
    corr = None
    for it in range(total):
        icp_phase = it >= cfg.landmark_iters
        opt.zero_grad()
        verts, _ = forward()
        lm_pred = torch.einsum("lk,lkc->lc", lm_wts, verts[lm_ids])
        loss = CM2 * landmark_loss(lm_pred, lm_target, lm_w) + priors()
        if icp_phase:
            if corr is None or (it - cfg.landmark_iters) % cfg.refresh_every == 0:
                corr = _correspondences(verts.detach(), faces_t, target, surface, cfg, rng, device)
            loss = loss + cfg.w_icp * CM2 * _icp_term(verts, faces_t, target, corr, cfg)
        loss.backward()
        opt.step()
        if use_face:
            with torch.no_grad():
                expr.clamp_(0.0, 1.0)
    with torch.no_grad():
        verts, pose = forward()
        lm_pred = torch.einsum("lk,lkc->lc", lm_wts, verts[lm_ids])
        body = torch.as_tensor(kinds == "pose", device=device)
        rms = float(((lm_pred - lm_target)[body] ** 2).sum(-1).mean().sqrt()) if body.any() else float("nan")
    return SkeletonFit(
        pose=pose.detach().cpu().numpy().astype(np.float64),
        shape=shape.detach().cpu().numpy()[0].astype(np.float64),
        expression=expr.detach().cpu().numpy()[0].astype(np.float64),
        scale=float(torch.exp(log_scale.detach())), translation=transl.detach().cpu().numpy().astype(np.float64),
        verts=verts.detach().cpu().numpy().astype(np.float64), landmark_rms_m=rms, iterations=total,
    )


def _correspondences(verts, faces_t, target: ScanTarget, surface, cfg: SkeletonConfig, rng, device):
    """Closest pairs both ways on random subsets (fixed until the next refresh)."""
    v_np = verts.cpu().numpy().astype(np.float64)
    vn = vertex_normals_torch(verts[None], faces_t)[0].cpu().numpy()
    tv = rng.choice(surface, size=min(cfg.n_icp_verts, len(surface)), replace=False)
    d, i = target.index.query(v_np[tv], 1)
    keep = correspondence_mask(torch.as_tensor(d[:, 0]), torch.as_tensor(vn[tv]),
                               torch.as_tensor(target.normals[i[:, 0]]), cfg.icp_max_dist_m, cfg.icp_max_angle_deg)
    fwd = (tv[keep.numpy()], i[keep.numpy(), 0])
    sp = rng.choice(len(target.points), size=min(cfg.n_icp_scan, len(target.points)), replace=False)
    tree = PointIndex(v_np[surface])
    d2, j = tree.query(target.points[sp], 1)
    jv = surface[j[:, 0]]
    keep2 = correspondence_mask(torch.as_tensor(d2[:, 0]), torch.as_tensor(target.normals[sp]),
                                torch.as_tensor(vn[jv]), cfg.icp_max_dist_m, cfg.icp_max_angle_deg)
    bwd = (jv[keep2.numpy()], sp[keep2.numpy()])
    as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return {
        "fwd_v": as_t(fwd[0]), "fwd_p": as_t(target.points[fwd[1]]).float(), "fwd_n": as_t(target.normals[fwd[1]]).float(),
        "bwd_v": as_t(bwd[0]), "bwd_p": as_t(target.points[bwd[1]]).float(),
    }


def _icp_term(verts, faces_t, target, corr, cfg: SkeletonConfig):
    fwd_v = verts[corr["fwd_v"]]
    ones = torch.ones(len(fwd_v), dtype=torch.bool, device=verts.device)
    loss_f = icp_loss(fwd_v, corr["fwd_p"], corr["fwd_n"], ones, cfg.icp_sigma_m)
    if len(corr["bwd_v"]):
        vn = vertex_normals_torch(verts[None], faces_t)[0][corr["bwd_v"]]
        ones_b = torch.ones(len(vn), dtype=torch.bool, device=verts.device)
        loss_b = icp_loss(corr["bwd_p"], verts[corr["bwd_v"]], vn, ones_b, cfg.icp_sigma_m)
    else:
        loss_b = verts.new_zeros(())
    return loss_f + loss_b


def rest_offsets(template, fit: SkeletonFit, verts: np.ndarray) -> np.ndarray:
    """Free-form offsets in the rest pose that reproduce ``verts`` exactly through the fit:
    ``verts == scale * t.pose(shape, pose, expression, offsets) + translation``.

    LBS is affine in the rest vertex for fixed joint transforms: x = A_v (r_v + o_v) + a_v, so
    o_v = A_v^-1 ((verts_v - translation) / scale - a_v) - r_v (A_v is a blend of rotations,
    invertible for any sensible pose). Returns (V, 3) float64, metres.
    """
    from ghum_pipe.template.lbs import as_rotmats, batch_rigid_transform

    dt = torch.float64
    tt = template.tensors("cpu", dt)
    shape = torch.as_tensor(fit.shape[None], dtype=dt)
    expr = torch.as_tensor(fit.expression[None], dtype=dt)
    rest, joints = template.shaped(shape, expr, 1, "cpu", dt)
    rot = as_rotmats(torch.as_tensor(fit.pose[None], dtype=dt))
    _, rel = batch_rigid_transform(rot, joints, tt["parents"], tt["levels"])
    T = torch.einsum("vi,vimn->vmn", tt["skin_weights"], rel[0][tt["skin_indices"]])  # (V, 4, 4)
    local = (torch.as_tensor(verts, dtype=dt) - torch.as_tensor(fit.translation, dtype=dt)) / fit.scale
    o = torch.linalg.solve(T[:, :3, :3], (local - T[:, :3, 3])[..., None])[..., 0] - rest[0]
    return o.numpy()
