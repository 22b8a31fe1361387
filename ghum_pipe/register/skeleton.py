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

from dataclasses import dataclass, field

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
class IcpSchedule:
    """The two phases' iterations and the ICP's correspondence windows (metres; defaults: a body)."""

    landmark_iters: int = 200  # L-BFGS iterations, landmarks only
    icp_rounds: int = 5  # correspondence refreshes in the ICP phase
    icp_iters: int = 50  # L-BFGS iterations per round
    # in the last round: converged further, the same scan in m and mm lands closer (mean 0.14 ->
    # 0.09 mm apart) and the errors drop a little (recovery 1.95 -> 1.86 mm), for ~20 % more steps
    icp_final_iters: int = 150
    icp_landmark_scale: float = 0.05  # detected landmarks are ~1-2 cm noisy: dense data leads in phase 2
    w_icp: float = 1.0
    # annealed over the rounds, wide -> narrow: a heavy belly can be 10 cm out of the mean shape
    sigma_m: tuple[float, float] = (0.05, 0.01)
    max_dist_m: tuple[float, float] = (0.15, 0.05)
    max_angle_deg: float = 60.0
    n_verts: int = 2000  # template vertices sampled per ICP refresh (4000: same error, 1.6x the time)
    n_scan: int = 2000  # scan points sampled per ICP refresh


@dataclass(frozen=True)
class Priors:
    """Quadratic priors (per rad^2, per unit coefficient^2), relative to landmark/ICP terms in cm^2.

    Stiff enough that limb twists and fingers (barely seen by landmarks or ICP) have one clear
    optimum: with weaker priors the same scan in m and mm ended up to 17 mm apart."""

    pose: float = 0.05
    twist: float = 2.0
    # elbows and knees are hinges (ghum_pipe.template.anatomy): rotation off the hinge axis costs
    # this much; as a ball joint the elbow lets the upper arm's twist trade off against the
    # forearm's, which landmarks cannot tell apart (upper arms ended 18 mm off)
    hinge: float = 2.0
    finger: float = 0.1
    shape: float = 0.005
    scale: float = 100.0  # on log(scale): shape explains size first
    expression: float = 0.05


@dataclass(frozen=True)
class SkeletonConfig:
    """Settings of the skeleton fit, a body's by default (a close-up's: ``region.RegionConfig``)."""

    n_shape: int = 32  # leading shape coefficients fitted (all: heavy bodies need them)
    # Scans are metric (io converts units), so size is the shape's job; a free global scale
    # makes a flat valley with the height coefficient that Adam crawls along.
    fit_scale: bool = False
    # landmark weights per kind (each kind's confidence-weighted weights sum to its weight);
    # None: one pool, weighted by confidence
    kind_weights: tuple[tuple[str, float], ...] | None = (("pose", 1.0), ("hand", 0.5), ("face", 0.5))
    schedule: IcpSchedule = field(default_factory=IcpSchedule)
    priors: Priors = field(default_factory=Priors)


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


@dataclass(frozen=True)
class LandmarkTerm:
    """The fit's landmark term, on the fit's device: each landmark is a barycentric blend
    (``bary`` (L, K)) of the template vertices ``vertex_ids`` (L, K) (numpy), pulled to
    ``targets`` (L, 3) metres with weight ``weights`` (L,) (:func:`landmark_weights`)."""

    vertex_ids: np.ndarray
    bary: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def of(cls, pairs: LandmarkPairs, weights: np.ndarray, device, dtype) -> "LandmarkTerm":
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return cls(np.asarray(pairs.vertex_ids), as_t(pairs.weights), as_t(pairs.targets), as_t(weights))

    def predict(self, verts: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
        """(L, 3) landmark positions on ``verts`` (n, 3), ``local_ids`` (L, K) indexing into them."""
        return torch.einsum("lk,lkc->lc", self.bary, verts[local_ids])


def landmark_weights(pairs: LandmarkPairs, kind_weights: tuple[tuple[str, float], ...] | None) -> np.ndarray:
    """(L,) landmark weights: confidence-weighted within a kind, each kind summing to its weight
    in ``kind_weights`` (kinds not listed: 0); ``kind_weights`` None: one pool summing to 1."""
    if kind_weights is None:
        c = np.clip(pairs.confidence, 1e-3, None)
        return c / c.sum()
    kinds = np.asarray(pairs.kinds)
    w = np.zeros(len(pairs))
    for k, kw in kind_weights:
        m = kinds == k
        if m.any():
            c = np.clip(pairs.confidence[m], 1e-3, None)
            w[m] = kw * c / c.sum()
    return w


def body_free_joints(template, pairs: LandmarkPairs) -> np.ndarray:
    """(J,) bool, the joints a body fit moves besides the root: the body's (not toes, eyes, the
    pelvis' side joints), and the fingers when at least 6 hand landmarks were found."""
    groups = joint_groups(template)
    use_fingers = bool((np.asarray(pairs.kinds) == "hand").sum() >= 6)
    return groups["body"] | (groups["fingers"] if use_fingers else False)


def fit_skeleton(
    template, pairs: LandmarkPairs, init: Similarity, target: ScanTarget | None,
    config: SkeletonConfig = SkeletonConfig(), device: str | torch.device = "cpu", after_landmarks=None,
    free_joints: np.ndarray | None = None, icp_vertices: np.ndarray | None = None,
    main_landmarks: np.ndarray | None = None, seed: int = 0,
) -> SkeletonFit:
    """Fit pose, shape, expression and the global similarity to landmarks, then + ICP: the body's
    and a close-up's fit, which differ in the arguments below only (``region.Region`` has them).

    Args:
        template: :class:`ghum_pipe.template.Template`.
        pairs: matched landmarks (targets in internal metres).
        init: similarity from :func:`ghum_pipe.register.similarity.umeyama` (template rest
            landmarks -> scan landmarks).
        target: the scan's oriented samples, or None to fit landmarks only.
        after_landmarks: optional check called with the (V, 3) vertices after phase 1 (it may
            raise, e.g. when the scan covers only part of the posed template).
        free_joints: (J,) bool, the joints moved besides the root (default :func:`body_free_joints`);
            the 52 facial actions are free when >= 10 face landmarks were found.
        icp_vertices: (n,) template vertex ids the ICP matches (default: the surface).
        main_landmarks: (L,) bool, the landmarks the fit is centred on and whose RMS it reports
            (default: the body ones, kind "pose").
        seed: of the ICP's samples and the preconditioner's probes.
    """
    cfg, pr = config, config.priors
    dt = torch.float64  # L-BFGS line searches need more than float32's 7 digits
    J = template.n_joints
    groups = joint_groups(template)
    kinds = np.asarray(pairs.kinds)
    use_face = bool((kinds == "face").sum() >= 10)
    free = body_free_joints(template, pairs) if free_joints is None else np.asarray(free_joints, dtype=bool)
    main = kinds == "pose" if main_landmarks is None else np.asarray(main_landmarks, dtype=bool)
    pool = np.flatnonzero(template.masks["surface"]) if icp_vertices is None else np.asarray(icp_vertices)
    free_idx = torch.as_tensor(np.flatnonzero(free), device=device)
    prior_np = np.where(groups["twist"], pr.twist, np.where(groups["fingers"], pr.finger, pr.pose))[free]
    prior_w = torch.as_tensor(prior_np, dtype=dt, device=device)
    hinge = np.zeros((J, 3))  # (J, 3) unit hinge axis, zero for other joints
    for name, axis in hinge_axes(template.joint_names, template.rest_joints).items():
        hinge[template.joint_index(name)] = axis
    is_hinge_np = np.abs(hinge[free]).sum(-1) > 0
    use_hinge = bool(pr.hinge and is_hinge_np.any())
    hinge = torch.as_tensor(hinge[free], dtype=dt, device=device)
    is_hinge = torch.as_tensor(is_hinge_np, device=device)

    if not cfg.fit_scale:  # keep the rotation, re-centre for unit scale
        src = pairs.template_points(template.rest_verts)[main].mean(0)
        init = Similarity(init.rotation, 1.0, pairs.targets[main].mean(0) - init.rotation @ src)
    root = torch.tensor(_rotvec(init.rotation), dtype=dt, device=device, requires_grad=True)
    transl = torch.tensor(initial_translation(template, init), dtype=dt, device=device, requires_grad=True)
    log_scale = torch.tensor(float(np.log(init.scale)) if cfg.fit_scale else 0.0, dtype=dt, device=device,
                             requires_grad=cfg.fit_scale)
    joint_aa = torch.zeros(len(free_idx), 3, dtype=dt, device=device, requires_grad=True)
    shape = torch.zeros(1, cfg.n_shape, dtype=dt, device=device, requires_grad=True)
    expr = torch.zeros(1, template.n_expression, dtype=dt, device=device, requires_grad=use_face)
    lm = LandmarkTerm.of(pairs, landmark_weights(pairs, cfg.kind_weights), device, dt)

    def forward(poser: SubsetPoser):
        """Scaled, translated posed vertices of the poser's subset (n, 3)."""
        pose = assemble_pose(root, joint_aa, free_idx, J)
        verts = poser(shape, pose, expr if use_face else None)
        return torch.exp(log_scale) * verts + transl

    def priors():
        p = (prior_w * (joint_aa**2).sum(-1)).sum() + pr.shape * (shape**2).sum()
        if use_hinge:  # the component of a hinge joint's rotation off its axis
            off = joint_aa - (joint_aa * hinge).sum(-1, keepdim=True) * hinge
            p = p + pr.hinge * (off[is_hinge] ** 2).sum()
        if cfg.fit_scale:
            p = p + pr.scale * log_scale**2
        if use_face:
            p = p + pr.expression * (expr**2).sum()
        return p

    aa_diag = np.broadcast_to(prior_np[:, None], (len(prior_np), 3))
    if use_hinge:
        aa_diag = aa_diag + pr.hinge * is_hinge_np[:, None]
    variables = [FitVariable(root), FitVariable(transl), FitVariable(joint_aa, None, aa_diag)]
    if cfg.fit_scale:
        variables.append(FitVariable(log_scale, None, pr.scale))
    if use_face:
        variables.append(FitVariable(expr, (0.0, 1.0), pr.expression))
    variables.append(FitVariable(shape, None, pr.shape))

    total = landmark_icp_fit(template, forward, priors, variables, lm, target, pool, cfg.schedule, cfg.n_shape,
                             np.random.default_rng(seed), device, dt, seed, after_landmarks)
    with torch.no_grad():
        verts = forward(full_poser(template, cfg.n_shape, device, dt))
        pose = assemble_pose(root, joint_aa, free_idx, J)[0]
        lm_pred = lm.predict(verts, torch.as_tensor(lm.vertex_ids, device=device))
        on = torch.as_tensor(main, device=device)
        rms = float(((lm_pred - lm.targets)[on] ** 2).sum(-1).mean().sqrt()) if main.any() else float("nan")
    return SkeletonFit(
        pose=pose.detach().cpu().numpy().astype(np.float64),
        shape=shape.detach().cpu().numpy()[0].astype(np.float64),
        expression=expr.detach().cpu().numpy()[0].astype(np.float64),
        scale=float(torch.exp(log_scale.detach())), translation=transl.detach().cpu().numpy().astype(np.float64),
        verts=verts.detach().cpu().numpy().astype(np.float64), landmark_rms_m=rms, iterations=total,
    )


def landmark_icp_fit(template, forward, priors, variables: list[FitVariable], lm: LandmarkTerm,
                     target: ScanTarget | None, pool: np.ndarray, schedule: IcpSchedule, n_shape: int, rng,
                     device, dt, seed: int = 0, after_landmarks=None) -> int:
    """The two phases of :func:`fit_skeleton`, given its variables, priors and landmark term.

    Phase 1: landmarks only, posing only the landmark vertices (~1-2k of 13.7k). Phase 2:
    ``schedule.icp_rounds`` rounds of landmarks + ICP both ways with the template vertices ``pool``,
    matches refreshed every round, ``sigma`` and the match distance annealed,
    ``schedule.icp_iters`` L-BFGS iterations a round (``icp_final_iters`` in the last). L-BFGS
    steps are scaled by a Jacobi preconditioner of the landmark + ICP least squares (a spine
    joint moves the whole body, a finger joint a few mm, a shape coefficient ~1 cm), estimated
    once per phase (its probes drawn with ``seed``).

    Args:
        forward: ``forward(poser)`` -> the posed vertices (n, 3) of a ``SubsetPoser``'s subset;
        priors: ``priors()`` -> the scalar prior term; variables: the L-BFGS variables, their
        box bounds and their priors' Hessian diagonals; lm: the landmark term;
        target: the scan (None: phase 1 only); n_shape: shape coefficients the posers use;
        rng: draws the ICP samples; after_landmarks: optional check of the (V, 3) vertices
        after phase 1 (it may raise).
    Returns:
        the number of objective evaluations.
    """
    sc = schedule
    faces_t = torch.as_tensor(template.faces, device=device)
    lm_verts = np.unique(lm.vertex_ids)
    params = [v.tensor for v in variables]
    bounds = [v.bounds for v in variables]
    prior_diag = [v.prior_curvature for v in variables]

    def step_sizes(poser, lm_local, corr):
        def residuals():
            verts = forward(poser)
            lm_pred = lm.predict(verts, lm_local)
            r = [((CM2 * lm.weights / lm.weights.sum()).sqrt()[:, None] * (lm_pred - lm.targets)).ravel()]
            if corr is not None:
                fv = verts[corr.fwd_local]
                r.append((sc.w_icp * CM2 / max(len(fv), 1)) ** 0.5 * ((fv - corr.fwd_p) * corr.fwd_n).sum(-1))
            return torch.cat(r)
        return jacobi_step_sizes(residuals, params, prior_diag, seed=seed)

    def objective(poser, lm_local, corr):
        lm_scale = 1.0 if corr is None else sc.icp_landmark_scale

        def loss_fn():
            verts = forward(poser)
            lm_pred = lm.predict(verts, lm_local)
            loss = lm_scale * CM2 * landmark_loss(lm_pred, lm.targets, lm.weights) + priors()
            if corr is not None:
                loss = loss + sc.w_icp * CM2 * icp_both_ways(verts, corr)
            return loss
        return loss_fn

    def subset(ids, corr: IcpMatches | None = None):
        poser = SubsetPoser(template, ids, n_shape, device, dt)
        lm_local = torch.as_tensor(np.searchsorted(poser.ids, lm.vertex_ids), device=device)
        if corr is not None:
            corr.fwd_local = torch.as_tensor(np.searchsorted(poser.ids, corr.fwd_v), device=device)
            corr.bwd_local = torch.as_tensor(np.searchsorted(poser.ids, corr.bwd_v), device=device)
        return poser, lm_local

    poser, lm_local = subset(lm_verts)
    scales = step_sizes(poser, lm_local, None)
    n_eval = minimize_lbfgs(params, objective(poser, lm_local, None), bounds, sc.landmark_iters, scales)
    if after_landmarks is not None:
        with torch.no_grad():
            after_landmarks(forward(full_poser(template, n_shape, device, dt)).cpu().numpy())
    n_rounds = sc.icp_rounds if target is not None else 0
    for r in range(n_rounds):
        a = r / max(n_rounds - 1, 1)
        with torch.no_grad():
            full = forward(full_poser(template, n_shape, device, dt))
        max_dist = sc.max_dist_m[0] ** (1 - a) * sc.max_dist_m[1] ** a
        corr = icp_correspondences(full, faces_t, target, pool, sc, rng, max_dist)
        corr.sigma = sc.sigma_m[0] ** (1 - a) * sc.sigma_m[1] ** a
        poser, lm_local = subset(np.union1d(lm_verts, corr.ids), corr)
        if r == 0:
            scales = step_sizes(poser, lm_local, corr)
        iters = sc.icp_final_iters if r == n_rounds - 1 else sc.icp_iters
        n_eval += minimize_lbfgs(params, objective(poser, lm_local, corr), bounds, iters, scales)
    return n_eval


def icp_correspondences(verts: torch.Tensor, faces_t: torch.Tensor, target: ScanTarget, pool: np.ndarray,
                        schedule: IcpSchedule, rng, max_dist: float) -> IcpMatches:
    """Closest pairs both ways between template vertices ``pool`` (surface, or a close-up's region)
    and the scan, on random subsets (``schedule.n_verts`` / ``schedule.n_scan``), rejected by
    distance and normal angle (``schedule.max_angle_deg``), fixed until the next refresh.

    verts: (V, 3) posed template (torch, metres). The matching runs on the CPU (KD-trees); the
    returned :class:`IcpMatches` holds tensors of ``verts``' dtype and device.
    """
    v_np = verts.cpu().numpy().astype(np.float64)
    vn = vertex_normals_torch(verts[None], faces_t)[0].cpu().numpy()
    tv = rng.choice(pool, size=min(schedule.n_verts, len(pool)), replace=False)
    d, i = target.index.query(v_np[tv], 1)
    cpu = lambda a: torch.as_tensor(a, device="cpu")  # noqa: E731 - matching is CPU work
    keep = correspondence_mask(cpu(d[:, 0]), cpu(vn[tv]), cpu(target.normals[i[:, 0]]), max_dist,
                               schedule.max_angle_deg).numpy()
    fwd_v, fwd_p = tv[keep], i[keep, 0]
    sp = rng.choice(len(target.points), size=min(schedule.n_scan, len(target.points)), replace=False)
    d2, j = PointIndex(v_np[pool]).query(target.points[sp], 1)
    jv = pool[j[:, 0]]
    keep2 = correspondence_mask(cpu(d2[:, 0]), cpu(target.normals[sp]), cpu(vn[jv]), max_dist,
                                schedule.max_angle_deg).numpy()
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
