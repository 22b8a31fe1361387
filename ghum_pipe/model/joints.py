"""Learning the joint-centre predictor C (Xu et al. 2020, Sec. 3.1: joint centres regressed from
the rest shape X~) in training step (b), from posed registrations.

C is linear in the rest shape: c(X~) = joint0 + sum_q coeff_q(X~) basis_q, with coeff the rest
shape's coefficients in the template's shape space (``networks.JointRegressor``), initialised
at the template's own shape->joint map. Training fits per-subject joint centres to the posed
data, one batch of whole subjects at a time (:func:`joint_batch_step`; memory and time per
batch, not per training set), and refits joint0 and basis to all of them
(:func:`refit_joint_regressor`, ``solvers.solve_joint_regressor``: a small ridge regression
over subjects); :func:`update_joint_regressor` does both in one process.
"""

from __future__ import annotations

import numpy as np
import torch

from ghum_pipe.model.config import TrainConfig
from ghum_pipe.model.data import RegistrationSet
from ghum_pipe.model.ghum import GHUM, blend_skin_dense, template_for
from ghum_pipe.model.networks import skinning_weights
from ghum_pipe.model.solvers import solve_joint_regressor
from ghum_pipe.model.state import TrainState, expand_face, model_rotmats, psd_all
from ghum_pipe.ops.diagonal import rademacher_vjps
from ghum_pipe.ops.lbfgs import minimize_lbfgs_torch
from ghum_pipe.template.lbs import batch_rigid_transform


def update_joint_regressor(model: GHUM, data: RegistrationSet, state: TrainState, cfg: TrainConfig,
                           batches=None) -> float:
    """C in step (b), in this process: :func:`joint_batch_step` on each subject batch (scan
    indices ``batches``, whole subjects; None: one batch of all scans), then C refitted to all
    batches' subjects (:func:`refit_joint_regressor`). The Dask schedule runs the same batches
    as tasks and the refit as their reduction, so both give the same C. Updates ``state.pose``
    and ``state.translation``; returns the mean joint move (mm) over subjects and joints."""
    parts = []
    row_of = {s: k for k, s in enumerate(data.subjects)}
    for idx in ([np.arange(len(data))] if batches is None else batches):
        idx = np.asarray(idx)
        sub = data.select(idx)
        rows = torch.as_tensor([row_of[s] for s in sub.subjects])
        part_state = TrainState(state.model, state.pose[idx].clone(), state.translation[idx].clone(),
                                state.rest[rows], state.expression[idx], [])
        parts.append(joint_batch_step(model, sub, part_state, cfg))
        state.pose[idx], state.translation[idx] = part_state.pose, part_state.translation
    return refit_joint_regressor(model, parts, cfg)


def template_joint_map(model: GHUM) -> tuple[torch.Tensor, torch.Tensor]:
    """The template's own shape->joint map, C's prior: joint0 (J, 3) and basis (Q, J, 3), float32
    (what ``networks.JointRegressor`` starts from)."""
    t = template_for(model.config.resolution, model.config.top_k)
    return (torch.as_tensor(t.rest_joints, dtype=torch.float32),
            torch.as_tensor(t.shape_joint_basis, dtype=torch.float32))


def refit_joint_regressor(model: GHUM, parts, cfg: TrainConfig) -> float:
    """The reduction of C's step: C refitted (in place) to the subjects' joint centres of every
    batch's :func:`joint_batch_step` result (``parts``, in batch order; None for a batch
    without a usable scan) by ridge regression towards the template's own shape->joint map
    (``solvers.solve_joint_regressor``: its basis with ``cfg.joint_prior``, its intercept worth
    ``cfg.joint_prior_subjects`` subjects). Returns the mean joint move (mm) over subjects and
    joints."""
    parts = [p for p in parts if p is not None and len(p["coeffs"])]
    if not parts:
        return 0.0
    reg = model.joint_regressor
    with torch.no_grad():
        joint0, basis = solve_joint_regressor(torch.cat([p["coeffs"] for p in parts]),
                                              torch.cat([p["joints"] for p in parts]),
                                              *template_joint_map(model), cfg.joint_prior, reg.coef_rms,
                                              cfg.joint_prior_subjects)
        reg.joint0.copy_(joint0)
        reg.joint_basis.copy_(basis)
    return 1000 * sum(p["move_m"] for p in parts) / sum(p["count"] for p in parts)


def joint_batch_step(model: GHUM, data: RegistrationSet, state: TrainState, cfg: TrainConfig) -> dict | None:
    """C's step on one batch of whole subjects (``data``, ``state``: that batch only): every
    subject's joint centres, jointly with small corrections of every scan's pose and translation
    and the skinning logits of the vertices used; then returns what C's refit needs from it.

    Centres and poses move together because a pose fitted with wrong centres bends to hide
    them; free skinning logits keep wrong weights from biasing the centres (they are discarded:
    the closed-form skinning solve follows; each batch has its own). L-BFGS minimises the
    F-masked squared vertex error over per-subject joint shifts d_s (J, 3), per-scan
    pose/translation increments and logits, on at most ``cfg.joint_verts`` vertices of the scans
    that saw at least half the body, with a ridge towards the template's shape->joint map along
    the directions the data barely sees (:func:`_shift_ridge`), a Gaussian prior on the pose
    corrections (``cfg.joint_pose_prior``, cm^2 per rad^2: clavicle + shoulder rotations can
    mimic a shoulder-centre shift), the root centre fixed (the translation plays its part) and,
    in later passes (``cfg.joint_passes``), Cauchy weights (robust scale of this batch) so that
    local pose correctives do not lean the centres. Everything but the logits and that scale is
    separable by subject, so batches are independent. Each pass stops at ``cfg.joint_iters``
    iterations or once 25 of them lower the objective by less than ``cfg.joint_rtol`` of it (a
    relative test: a batch's objective grows with its scans; the decision depends on the batch
    alone, so every schedule stops at the same iteration). What each choice measured: docs/model.md,
    "Why C's step is built this way". Updates ``state.pose`` and ``state.translation``; returns
    {coeffs (s, Q) shape coefficients and joints (s, J, 3) fitted centres of the s subjects with
    a usable scan, move_m: sum of their joint moves (m), count: s x J}, or None without one."""
    V, S = model.n_verts, len(data.subjects)
    # scans that saw most of the body (close-ups add cost, not information on the limb joints)
    scans = np.nonzero(data.mask.mean(1) >= 0.5)[0]
    if len(scans) == 0:
        return None
    sc = torch.as_tensor(scans)
    present = torch.as_tensor(np.unique(data.subject_index[scans]))
    sub = torch.as_tensor(np.unique(np.linspace(0, V - 1, min(V, cfg.joint_verts)).round().astype(np.int64)))
    subj = torch.as_tensor(data.subject_index[scans])
    target = torch.as_tensor(data.verts[scans][:, sub.numpy()])
    mask = torch.as_tensor(data.mask[scans][:, sub.numpy()])
    pose0, trans0 = state.pose[sc], state.translation[sc]
    reg = model.joint_regressor
    with torch.no_grad():
        rest = state.rest[subj]
        x = (rest + expand_face(model, state.expression[sc]) + psd_all(model, pose0))[:, sub]
        joints0 = reg(state.rest)  # (S, J, 3)
        # the prior: the template's own shape->joint map (a ridge towards the current value
        # instead lets repeated updates walk along directions the poses can compensate)
        joint0_t, basis_t = template_joint_map(model)
        prior = joint0_t + torch.einsum("bs,sjc->bjc", reg.coefficients(state.rest), basis_t)
        prior_cm = (prior - joints0) * 100
    idx = model.skin_indices[sub]
    free = torch.ones(model.n_joints, 1)
    free[0] = 0.0  # root centre: interchangeable with the translation
    sqrt_m = mask.sqrt()[..., None]
    robust = torch.ones_like(sqrt_m)  # Cauchy weights of the later passes

    logits0 = model.skin_logits[sub].detach()
    allowed = model.skin_allowed[sub]

    def residual(dpose, dtrans, dj_cm, dlogits):  # (N, v, 3) cm, F-weighted
        joints = joints0 + 0.01 * dj_cm * free
        _, rel = batch_rigid_transform(model_rotmats(pose0 + dpose), joints[subj], model.parents, model.levels)
        w = skinning_weights(logits0 + dlogits, allowed)
        verts = blend_skin_dense(x, rel, idx, w) + (trans0 + dtrans)[:, None]  # a batch of scans: dense is faster
        return (verts - target) * 100 * sqrt_m * robust

    # Joint shifts move few vertices by little, pose angles move many by much: L-BFGS needs the
    # variables scaled by the Gauss-Newton diagonal diag(J^T J), estimated with random probes
    # (Hutchinson: E[(J^T z)^2] = diag(J^T J) for z = +-1).
    zeros = [torch.zeros_like(pose0), torch.zeros_like(trans0), torch.zeros(S, model.n_joints, 3),
             torch.zeros_like(logits0)]
    diag = [torch.zeros_like(z) for z in zeros]
    block = torch.zeros(S, model.n_joints, 3, 3)  # Gauss-Newton 3x3 block of each joint shift
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        args = [z.clone().requires_grad_(True) for z in zeros]
        for grads in rademacher_vjps(lambda: residual(*args), args, cfg.joint_probes, gen):
            for d, g in zip(diag, grads):
                d += g**2 / cfg.joint_probes
            block += grads[2][..., :, None] * grads[2][..., None, :] / cfg.joint_probes
        ridge = _shift_ridge(block, cfg)  # (S, J, 3, 3)
        diag[2] += torch.diagonal(ridge, dim1=-2, dim2=-1)
        diag[0] += cfg.joint_pose_prior
        diag[3] += 1e-2
        scale = [1.0 / (d + 1e-6 * d.max()).sqrt() for d in diag]
        q = [z.clone().requires_grad_(True) for z in zeros]

        def physical(qs):  # the optimiser's variables -> (dpose, dtrans, dj_cm, dlogits)
            return [qi * si for qi, si in zip(qs, scale)]

        def objective():
            dpose, dtrans, dj_cm, dlogits = physical(q)
            dev = dj_cm - prior_cm
            return ((residual(dpose, dtrans, dj_cm, dlogits) ** 2).sum() + torch.einsum("sja,sjab,sjb->", dev, ridge, dev)
                    + cfg.joint_pose_prior * (dpose**2).sum()
                    + 1e-2 * (dlogits**2).sum())  # logits: only a weak pull, they are nuisance here

        minimize_lbfgs_torch(q, objective, cfg.joint_iters, rtol=cfg.joint_rtol)
        for _ in range(1, cfg.joint_passes):
            # Pose correctives (a biceps bulging with the elbow bent) are local residuals that
            # no joint centre explains; least squares still leans the centres towards them
            # (measured: elbows 2 mm off with the planted corrective, 0.6 mm without). So the
            # later passes weigh each (scan, vertex) by Cauchy weights 1 / (1 + (r / k sigma)^2)
            # of its residual r after the pass before (sigma: robust scale, 1.4826 x median).
            with torch.no_grad():
                robust.fill_(1.0)
                r = residual(*physical(q)).norm(dim=-1)
                sigma = 1.4826 * r[mask > 0].median().clamp_min(1e-3)
                robust.copy_((1.0 / (1.0 + (r / (cfg.joint_robust_k * sigma)) ** 2)).sqrt()[..., None])
            minimize_lbfgs_torch(q, objective, cfg.joint_iters, rtol=cfg.joint_rtol)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    dpose, dtrans, dj_cm, _ = (x.detach() for x in physical(q))
    with torch.no_grad():
        shifts = 0.01 * dj_cm * free
        state.pose[sc] = pose0 + dpose
        state.translation[sc] = trans0 + dtrans
        moves = shifts[present].norm(dim=-1)
        return dict(coeffs=reg.coefficients(state.rest[present]), joints=(joints0 + shifts)[present],
                    move_m=float(moves.sum()), count=moves.numel())


def _shift_ridge(block: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(S, J, 3, 3) ridge matrices of the joint shifts (cm^-2): ``cfg.joint_ridge`` along the
    directions the data barely sees, only ``cfg.joint_ridge_seen`` along the others. Weak: an
    eigenvalue of the shift's Gauss-Newton block below ``cfg.joint_weak_ratio`` of its own
    largest (a hinge's axis) or below ``cfg.joint_weak_global`` of the largest of any joint of
    the subject (a joint that barely rotates, whose block is tiny in every direction).

    One isotropic ridge cannot serve both: strong enough to hold a knee on its hinge axis (a
    shift along it changes no vertex), it also pulls the observed directions towards the
    template (measurements: docs/model.md, "Why C's step is built this way")."""
    evals, evecs = torch.linalg.eigh(block)
    own = evals[..., -1:]
    every = own.amax(dim=1, keepdim=True)  # the subject's best-seen joint
    weak = (evals <= cfg.joint_weak_ratio * own.clamp_min(1e-12)) | (evals <= cfg.joint_weak_global * every)
    lam = torch.where(weak, torch.tensor(cfg.joint_ridge), torch.tensor(cfg.joint_ridge_seen))
    return torch.einsum("sjak,sjk,sjbk->sjab", evecs, lam, evecs)
