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

from ghum_pipe.ops.diagonal import jacobi_step_sizes
from ghum_pipe.ops.lbfgs import minimize_lbfgs
from ghum_pipe.ops.normals import vertex_normals_torch
from ghum_pipe.register.backend import PointIndex
from ghum_pipe.register.landmark_pairs import LandmarkPairs
from ghum_pipe.register.losses import correspondence_mask, icp_loss, landmark_loss
from ghum_pipe.register.similarity import Similarity
from ghum_pipe.register.posing import SubsetPoser, full_poser
from ghum_pipe.register.target import ScanTarget
from ghum_pipe.template.anatomy import hinge_axes

CM2 = 1e4  # losses are evaluated in cm^2 so that the weights below read naturally


@dataclass(frozen=True)
class SkeletonConfig:
    n_shape: int = 32  # leading shape coefficients fitted (all: heavy bodies need them)
    landmark_iters: int = 200  # L-BFGS iterations, landmarks only
    icp_rounds: int = 5  # correspondence refreshes in the ICP phase
    icp_iters: int = 50  # L-BFGS iterations per round
    # in the last round: converged further, the same scan in m and mm lands closer (mean 0.14 ->
    # 0.09 mm apart) and the errors drop a little (recovery 1.95 -> 1.86 mm), for ~20 % more steps
    icp_final_iters: int = 150
    # Scans are metric (io converts units), so size is the shape's job; a free global scale
    # makes a flat valley with the height coefficient that Adam crawls along.
    fit_scale: bool = False
    # priors (per rad^2, per unit coefficient^2), relative to landmark/ICP terms in cm^2
    # stiff enough that limb twists and fingers (barely seen by landmarks or ICP) have one
    # clear optimum: with weaker priors the same scan in m and mm ended up to 17 mm apart
    pose_prior: float = 0.05
    twist_prior: float = 2.0
    # elbows and knees are hinges (ghum_pipe.template.anatomy): rotation off the hinge axis costs
    # this much; as a ball joint the elbow lets the upper arm's twist trade off against the
    # forearm's, which landmarks cannot tell apart (upper arms ended 18 mm off)
    hinge_prior: float = 2.0
    finger_prior: float = 0.1
    shape_prior: float = 0.005
    scale_prior: float = 100.0  # on log(scale): shape explains size first
    expression_prior: float = 0.05
    # per-kind landmark weights (each kind's weights sum to this)
    w_pose: float = 1.0
    w_hand: float = 0.5
    w_face: float = 0.5
    # ICP (phase 2)
    icp_landmark_scale: float = 0.05  # detected landmarks are ~1-2 cm noisy: dense data leads in phase 2
    w_icp: float = 1.0
    # annealed over the rounds, wide -> narrow: a heavy belly can be 10 cm out of the mean shape
    icp_sigma_m: tuple[float, float] = (0.05, 0.01)
    icp_max_dist_m: tuple[float, float] = (0.15, 0.05)
    icp_max_angle_deg: float = 60.0
    n_icp_verts: int = 2000  # template vertices sampled per ICP refresh (4000: same error, 1.6x the time)
    n_icp_scan: int = 2000  # scan points sampled per ICP refresh
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


@dataclass(frozen=True)
class FitVariable:
    """One block of the fit's free variables: the tensor L-BFGS moves, its box bounds (None =
    free) and the curvature of its quadratic prior (added to the Jacobi preconditioner's
    diag(J^T J); a scalar or an array of the tensor's shape)."""

    tensor: torch.Tensor
    bounds: tuple[float, float] | None = None
    prior_curvature: float | np.ndarray = 0.0


@dataclass
class IcpMatches:
    """Closest pairs both ways, fixed until the next refresh (:func:`icp_correspondences`).

    ``fwd_v`` template vertex ids -> scan points ``fwd_p`` with the scan's normals ``fwd_n``;
    ``bwd_v`` vertex ids <- scan points ``bwd_p``, with the vertices' (frozen) normals ``bwd_n``;
    ``ids`` all vertices involved. Tensors are on the fit's device. ``sigma`` (Geman-McClure
    scale, metres) and the ``*_local`` indices into a poser's subset are set by the fit.
    """

    ids: np.ndarray
    fwd_v: np.ndarray
    bwd_v: np.ndarray
    fwd_p: torch.Tensor
    fwd_n: torch.Tensor
    bwd_p: torch.Tensor
    bwd_n: torch.Tensor
    sigma: float = 0.0
    fwd_local: torch.Tensor | None = None
    bwd_local: torch.Tensor | None = None


def assemble_pose(root: torch.Tensor, joint_aa: torch.Tensor, free_idx: torch.Tensor, n_joints: int) -> torch.Tensor:
    """(1, J, 3) axis-angle pose: ``root`` (3,) at joint 0, ``joint_aa`` (n, 3) at the joints
    ``free_idx`` (n,) (on the same device), zero elsewhere."""
    pose = torch.zeros(1, n_joints, 3, dtype=root.dtype, device=root.device)
    pose = pose.index_put((torch.zeros_like(free_idx), free_idx), joint_aa)
    zero = torch.zeros(1, dtype=torch.long, device=root.device)
    return pose.index_put((zero, zero), root[None])


_TWIST = ("upperarm02", "lowerarm02", "upperleg02", "lowerleg02")
_FIXED = ("toe", "eye.", "pelvis.")  # pelvis.L/R only trade off against the hips: a null space


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
    config: SkeletonConfig = SkeletonConfig(), device: str | torch.device = "cpu", after_landmarks=None,
) -> SkeletonFit:
    """Fit pose, shape, expression and the global similarity to landmarks, then + ICP.

    Args:
        template: :class:`ghum_pipe.template.Template`.
        pairs: matched landmarks (targets in internal metres).
        init: similarity from :func:`ghum_pipe.register.similarity.umeyama` (template rest
            landmarks -> scan landmarks).
        target: the scan's oriented samples, or None to fit landmarks only.
        after_landmarks: optional check called with the (V, 3) vertices after phase 1 (it may
            raise, e.g. when the scan covers only part of the posed template).
    """
    cfg = config
    dt = torch.float64  # L-BFGS line searches need more than float32's 7 digits
    J, E = template.n_joints, template.n_expression
    groups = joint_groups(template)
    kinds = np.asarray(pairs.kinds)
    use_fingers = bool((kinds == "hand").sum() >= 6)
    use_face = bool((kinds == "face").sum() >= 10)
    free = groups["body"] | (groups["fingers"] if use_fingers else False)
    free_idx = torch.as_tensor(np.flatnonzero(free), device=device)
    prior_np = np.where(groups["twist"], cfg.twist_prior, np.where(groups["fingers"], cfg.finger_prior, cfg.pose_prior))
    prior_np = prior_np[free]
    prior_w = torch.as_tensor(prior_np, dtype=dt, device=device)
    hinge = np.zeros((J, 3))  # (J, 3) unit hinge axis, zero for other joints
    for name, axis in hinge_axes(template.joint_names, template.rest_joints).items():
        hinge[template.joint_index(name)] = axis
    is_hinge_np = np.abs(hinge[free]).sum(-1) > 0
    hinge = torch.as_tensor(hinge[free], dtype=dt, device=device)
    is_hinge = torch.as_tensor(is_hinge_np, device=device)

    if not cfg.fit_scale:  # keep the rotation, re-centre for unit scale
        body_lm = kinds == "pose"
        src = pairs.template_points(template.rest_verts)[body_lm].mean(0)
        init = Similarity(init.rotation, 1.0, pairs.targets[body_lm].mean(0) - init.rotation @ src)
    root = torch.tensor(_rotvec(init.rotation), dtype=dt, device=device, requires_grad=True)
    transl = torch.tensor(initial_translation(template, init), dtype=dt, device=device, requires_grad=True)
    log_scale = torch.tensor(float(np.log(init.scale)) if cfg.fit_scale else 0.0, dtype=dt, device=device,
                             requires_grad=cfg.fit_scale)
    joint_aa = torch.zeros(len(free_idx), 3, dtype=dt, device=device, requires_grad=True)
    shape = torch.zeros(1, cfg.n_shape, dtype=dt, device=device, requires_grad=True)
    expr = torch.zeros(1, E, dtype=dt, device=device, requires_grad=use_face)
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
    surface = np.flatnonzero(template.masks["surface"])
    rng = np.random.default_rng(cfg.seed)

    def forward(poser: SubsetPoser):
        """Scaled, translated posed vertices of the poser's subset (n, 3)."""
        pose = assemble_pose(root, joint_aa, free_idx, J)
        verts = poser(shape, pose, expr if use_face else None)
        return torch.exp(log_scale) * verts + transl

    def priors():
        p = (prior_w * (joint_aa**2).sum(-1)).sum() + cfg.shape_prior * (shape**2).sum()
        if cfg.hinge_prior:  # the component of a hinge joint's rotation off its axis
            off = joint_aa - (joint_aa * hinge).sum(-1, keepdim=True) * hinge
            p = p + cfg.hinge_prior * (off[is_hinge] ** 2).sum()
        if cfg.fit_scale:
            p = p + cfg.scale_prior * log_scale**2
        if use_face:
            p = p + cfg.expression_prior * (expr**2).sum()
        return p

    aa_diag = np.broadcast_to(prior_np[:, None], (len(prior_np), 3)) + cfg.hinge_prior * is_hinge_np[:, None]
    variables = [FitVariable(root), FitVariable(transl), FitVariable(joint_aa, None, aa_diag)]
    if cfg.fit_scale:
        variables.append(FitVariable(log_scale, None, cfg.scale_prior))
    if use_face:
        variables.append(FitVariable(expr, (0.0, 1.0), cfg.expression_prior))
    variables.append(FitVariable(shape, None, cfg.shape_prior))

    total = landmark_icp_fit(template, forward, priors, variables, pairs, lm_wts, lm_target, lm_w,
                             target, surface, cfg, rng, device, dt, cfg.icp_final_iters, after_landmarks)
    with torch.no_grad():
        verts = forward(full_poser(template, cfg.n_shape, device, dt))
        pose = assemble_pose(root, joint_aa, free_idx, J)[0]
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


def landmark_icp_fit(template, forward, priors, variables: list[FitVariable], pairs: LandmarkPairs,
                     lm_wts: torch.Tensor, lm_target: torch.Tensor, lm_w: torch.Tensor, target: ScanTarget | None,
                     pool: np.ndarray, cfg, rng, device, dt, final_iters: int, after_landmarks=None) -> int:
    """The two phases of the body fit (:func:`fit_skeleton`) and the close-up fit
    (``region.fit_region_skeleton``), which differ only in their variables and priors.

    Phase 1: landmarks only, posing only the landmark vertices (~1-2k of 13.7k). Phase 2:
    ``cfg.icp_rounds`` rounds of landmarks + ICP both ways with the template vertices ``pool``,
    matches refreshed every round, ``sigma`` and the match distance annealed, ``cfg.icp_iters``
    L-BFGS iterations a round (``final_iters`` in the last). L-BFGS steps are scaled by a
    Jacobi preconditioner of the landmark + ICP least squares (a spine joint moves the whole
    body, a finger joint a few mm, a shape coefficient ~1 cm), estimated once per phase.

    Args:
        forward: ``forward(poser)`` -> the posed vertices (n, 3) of a ``SubsetPoser``'s subset;
        priors: ``priors()`` -> the scalar prior term; variables: the L-BFGS variables, their
        box bounds and their priors' Hessian diagonals;
        lm_wts/lm_target/lm_w: landmark barycentric weights, targets (metres) and weights;
        target: the scan (None: phase 1 only); after_landmarks: optional check of the (V, 3)
        vertices after phase 1 (it may raise).
    Returns:
        the number of objective evaluations.
    """
    faces_t = torch.as_tensor(template.faces, device=device)
    lm_verts = np.unique(pairs.vertex_ids)
    params = [v.tensor for v in variables]
    bounds = [v.bounds for v in variables]
    prior_diag = [v.prior_curvature for v in variables]

    def step_sizes(poser, lm_local, corr):
        def residuals():
            verts = forward(poser)
            lm_pred = torch.einsum("lk,lkc->lc", lm_wts, verts[lm_local])
            r = [((CM2 * lm_w / lm_w.sum()).sqrt()[:, None] * (lm_pred - lm_target)).ravel()]
            if corr is not None:
                fv = verts[corr.fwd_local]
                r.append((cfg.w_icp * CM2 / max(len(fv), 1)) ** 0.5 * ((fv - corr.fwd_p) * corr.fwd_n).sum(-1))
            return torch.cat(r)
        return jacobi_step_sizes(residuals, params, prior_diag, seed=cfg.seed)

    def objective(poser, lm_local, corr):
        lm_scale = 1.0 if corr is None else cfg.icp_landmark_scale

        def loss_fn():
            verts = forward(poser)
            lm_pred = torch.einsum("lk,lkc->lc", lm_wts, verts[lm_local])
            loss = lm_scale * CM2 * landmark_loss(lm_pred, lm_target, lm_w) + priors()
            if corr is not None:
                loss = loss + cfg.w_icp * CM2 * icp_both_ways(verts, corr)
            return loss
        return loss_fn

    def subset(ids, corr: IcpMatches | None = None):
        poser = SubsetPoser(template, ids, cfg.n_shape, device, dt)
        lm_local = torch.as_tensor(np.searchsorted(poser.ids, pairs.vertex_ids), device=device)
        if corr is not None:
            corr.fwd_local = torch.as_tensor(np.searchsorted(poser.ids, corr.fwd_v), device=device)
            corr.bwd_local = torch.as_tensor(np.searchsorted(poser.ids, corr.bwd_v), device=device)
        return poser, lm_local

    poser, lm_local = subset(lm_verts)
    scales = step_sizes(poser, lm_local, None)
    n_eval = minimize_lbfgs(params, objective(poser, lm_local, None), bounds, cfg.landmark_iters, scales)
    if after_landmarks is not None:
        with torch.no_grad():
            after_landmarks(forward(full_poser(template, cfg.n_shape, device, dt)).cpu().numpy())
    n_rounds = cfg.icp_rounds if target is not None else 0
    for r in range(n_rounds):
        a = r / max(n_rounds - 1, 1)
        with torch.no_grad():
            full = forward(full_poser(template, cfg.n_shape, device, dt))
        max_dist = cfg.icp_max_dist_m[0] ** (1 - a) * cfg.icp_max_dist_m[1] ** a
        corr = icp_correspondences(full, faces_t, target, pool, cfg, rng, max_dist)
        corr.sigma = cfg.icp_sigma_m[0] ** (1 - a) * cfg.icp_sigma_m[1] ** a
        poser, lm_local = subset(np.union1d(lm_verts, corr.ids), corr)
        if r == 0:
            scales = step_sizes(poser, lm_local, corr)
        iters = final_iters if r == n_rounds - 1 else cfg.icp_iters
        n_eval += minimize_lbfgs(params, objective(poser, lm_local, corr), bounds, iters, scales)
    return n_eval


def icp_correspondences(verts: torch.Tensor, faces_t: torch.Tensor, target: ScanTarget, pool: np.ndarray, cfg, rng,
                        max_dist: float) -> IcpMatches:
    """Closest pairs both ways between template vertices ``pool`` (surface, or a close-up's region)
    and the scan, on random subsets (``cfg.n_icp_verts`` / ``cfg.n_icp_scan``), rejected by
    distance and normal angle (``cfg.icp_max_angle_deg``), fixed until the next refresh.

    verts: (V, 3) posed template (torch, metres). The matching runs on the CPU (KD-trees); the
    returned :class:`IcpMatches` holds tensors of ``verts``' dtype and device.
    """
    v_np = verts.cpu().numpy().astype(np.float64)
    vn = vertex_normals_torch(verts[None], faces_t)[0].cpu().numpy()
    tv = rng.choice(pool, size=min(cfg.n_icp_verts, len(pool)), replace=False)
    d, i = target.index.query(v_np[tv], 1)
    cpu = lambda a: torch.as_tensor(a, device="cpu")  # noqa: E731 - matching is CPU work
    keep = correspondence_mask(cpu(d[:, 0]), cpu(vn[tv]), cpu(target.normals[i[:, 0]]), max_dist,
                               cfg.icp_max_angle_deg).numpy()
    fwd_v, fwd_p = tv[keep], i[keep, 0]
    sp = rng.choice(len(target.points), size=min(cfg.n_icp_scan, len(target.points)), replace=False)
    d2, j = PointIndex(v_np[pool]).query(target.points[sp], 1)
    jv = pool[j[:, 0]]
    keep2 = correspondence_mask(cpu(d2[:, 0]), cpu(target.normals[sp]), cpu(vn[jv]), max_dist,
                                cfg.icp_max_angle_deg).numpy()
    bwd_v, bwd_p = jv[keep2], sp[keep2]
    as_t = lambda a: torch.as_tensor(a, dtype=verts.dtype, device=verts.device)  # noqa: E731
    return IcpMatches(ids=np.union1d(fwd_v, bwd_v), fwd_v=fwd_v, bwd_v=bwd_v,
                      fwd_p=as_t(target.points[fwd_p]), fwd_n=as_t(target.normals[fwd_p]),
                      bwd_p=as_t(target.points[bwd_p]), bwd_n=as_t(vn[bwd_v]))


def icp_both_ways(verts: torch.Tensor, corr: IcpMatches) -> torch.Tensor:
    """Point-to-plane Geman-McClure ICP (metres^2), template->scan plus scan->template; ``verts``
    are a poser's subset, indexed by ``corr.fwd_local`` / ``corr.bwd_local``."""
    fv = verts[corr.fwd_local]
    loss = icp_loss(fv, corr.fwd_p, corr.fwd_n, torch.ones(len(fv), dtype=torch.bool, device=fv.device), corr.sigma)
    if len(corr.bwd_v):
        bv = verts[corr.bwd_local]
        loss = loss + icp_loss(corr.bwd_p, bv, corr.bwd_n, torch.ones(len(bv), dtype=torch.bool, device=bv.device),
                               corr.sigma)
    return loss


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
    shape = torch.as_tensor(fit.shape[None], dtype=dt, device="cpu")
    expr = torch.as_tensor(fit.expression[None], dtype=dt, device="cpu")
    rest, joints = template.shaped(shape, expr, 1, "cpu", dt)
    rot = as_rotmats(torch.as_tensor(fit.pose[None], dtype=dt, device="cpu"))
    _, rel = batch_rigid_transform(rot, joints, tt["parents"], tt["levels"])
    T = torch.einsum("vi,vimn->vmn", tt["skin_weights"], rel[0][tt["skin_indices"]])  # (V, 4, 4)
    local = (torch.as_tensor(verts, dtype=dt, device="cpu") - torch.as_tensor(fit.translation, dtype=dt, device="cpu")) / fit.scale
    o = torch.linalg.solve(T[:, :3, :3], (local - T[:, :3, 3])[..., None])[..., 0] - rest[0]
    return o.numpy()
