"""Hand stage of a body registration: each hand (and its arm) refitted to the hand alone.

In the body fit the fingers are a few mm of a loss that the whole body dominates: its landmark
term spreads the hands' share over 42 points and is scaled down in the ICP phase, its ICP puts
a few dozen of 2,000 samples on each finger, so the finger prior wins and the fingers stay near
rest (docs/register.md, "Hands"). This stage does for each hand with at least
``min_landmarks`` hand landmarks what a hand close-up's registration does (``region.py``),
keeping the rest of the body fit (shape, root, translation, every other joint):

1. that side's wrist, metacarpal and finger joints, and its arm's joints (the body fit leaves
   the wrist up to ~1 cm off), are fitted to the hand's landmarks, then + robust ICP both ways
   between the hand and arm surface and the scan near them, with the close-up's narrow
   correspondence windows and a looser finger prior; fingers bend about their anatomical axes
   (``template.anatomy.finger_axes``);
2. a hand's refit is kept only where it ends closer to the scan than the body fit's hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ghum_pipe.register.backend import PointIndex
from ghum_pipe.register.evaluate import dominant_part
from ghum_pipe.register.landmark_pairs import LandmarkPairs
from ghum_pipe.register.posing import full_poser
from ghum_pipe.register.skeleton import (FitVariable, IcpSchedule, LandmarkTerm, SkeletonFit, joint_groups,
                                         landmark_icp_fit, landmark_weights)
from ghum_pipe.register.target import ScanTarget
from ghum_pipe.template.anatomy import finger_axes

HAND_SCHEDULE = IcpSchedule(landmark_iters=60, icp_rounds=2, icp_iters=30, icp_final_iters=40,
                            icp_landmark_scale=0.1, sigma_m=(0.01, 0.003), max_dist_m=(0.03, 0.008),
                            n_verts=1500, n_scan=1500)


@dataclass(frozen=True)
class HandConfig:
    """Settings of the hand stage (metres; priors per rad^2 as in ``skeleton.Priors``, relative to
    the stage's landmark and ICP terms in cm^2, each averaged over both hands)."""

    enabled: bool = True
    min_landmarks: int = 10  # hand landmarks a hand needs to be refitted (MediaPipe finds 21)
    schedule: IcpSchedule = field(default_factory=lambda: HAND_SCHEDULE)
    finger: float = 0.01  # the close-up's 0.02, halved: the terms are averaged over two hands
    wrist: float = 0.05
    # finger joints off their anatomy (template.anatomy.finger_axes): a PIP/DIP joint's rotation
    # off its flexion axis, a knuckle's twist about its bone, cost this much per rad^2
    hinge: float = 2.0
    # the arm (upper arm, forearm, their twists) is refitted too, its prior on the change from
    # the body fit: the body fit leaves the wrist up to ~1 cm off, which fingers cannot make up
    arm: bool = True
    arm_prior: float = 0.1
    scan_radius_m: float = 0.04  # the scan within this of the body fit's hand and arm is their data
    # a hand's refit is kept only if its vertices end closer to the scan (mean distance, each
    # capped at this): on A-pose scans the body fit's straight fingers are already right, and
    # following the hand landmarks' few-mm noise made them worse
    accept_cap_m: float = 0.02


def hand_joints(template, side: str) -> np.ndarray:
    """(J,) bool: the wrist, metacarpal and finger joints of one side ("left" | "right")."""
    suffix = ".L" if side == "left" else ".R"
    return np.array([n.endswith(suffix) and n.startswith(("wrist", "finger", "metacarpal"))
                     for n in template.joint_names])


def arm_joints(template, side: str) -> np.ndarray:
    """(J,) bool: the upper arm, forearm and their twist joints of one side."""
    suffix = ".L" if side == "left" else ".R"
    return np.array([n.endswith(suffix) and n.startswith(("upperarm", "lowerarm")) for n in template.joint_names])


def hand_sides(pairs: LandmarkPairs, min_landmarks: int) -> list[str]:
    """The sides ("left", "right") with at least ``min_landmarks`` hand landmarks."""
    return [s for s in ("left", "right") if sum(n.startswith(f"{s}_hand_") for n in pairs.names) >= min_landmarks]


def near_points(target: ScanTarget, points: np.ndarray, radius_m: float) -> ScanTarget | None:
    """The scan's samples within ``radius_m`` of ``points`` (N, 3), as a target (its distances
    still to the whole scan); None when almost nothing is near."""
    keep = PointIndex(points).query(target.points, 1)[0][:, 0] < radius_m
    if keep.sum() < 50:
        return None
    p, n = target.points[keep], target.normals[keep]
    return ScanTarget(points=p, normals=n, index=PointIndex(p), mesh=target.mesh)


def fit_hands(template, pairs: LandmarkPairs, fit: SkeletonFit, target: ScanTarget | None,
              config: HandConfig = HandConfig(), n_shape: int = 32, device="cpu",
              seed: int = 0) -> tuple[SkeletonFit, dict]:
    """Refit the hands' joints of a body's skeleton fit (module docstring).

    Args:
        fit: the body's skeleton fit; target: the scan's samples (None: landmarks only, every
        refit kept).
    Returns:
        ``fit`` with the new pose and vertices, and per side refitted ``{"left": {"kept": bool,
        "scan_mm": [before, after] | None}, ...}``: the hand's mean distance to the scan (each
        vertex's capped at ``accept_cap_m``) before and after (empty when no hand has enough
        landmarks).
    """
    sides = hand_sides(pairs, config.min_landmarks)
    if not config.enabled or not sides:
        return fit, {}
    dt = torch.float64
    free = np.zeros(template.n_joints, dtype=bool)
    surface = np.zeros(template.n_verts, dtype=bool)
    keep_lm = np.zeros(len(pairs), dtype=bool)
    arm = np.zeros(template.n_joints, dtype=bool)
    main_joint = dominant_part(template)
    for s in sides:
        free |= hand_joints(template, s)
        surface |= template.masks[f"hand_{s}"]
        if config.arm:
            arm |= arm_joints(template, s)
            surface |= np.isin(main_joint, np.flatnonzero(arm_joints(template, s)))
        keep_lm |= np.array([n.startswith(f"{s}_hand_") for n in pairs.names])
    free |= arm
    surface &= template.masks["surface"]
    hand_pairs = pairs.subset(keep_lm)
    free_idx = torch.as_tensor(np.flatnonzero(free), device=device)
    fingers = joint_groups(template)["fingers"][free]
    is_arm = arm[free]
    prior_np = np.where(fingers, config.finger, np.where(is_arm, config.arm_prior, config.wrist))
    # (n, 3, 3) quadratic form of each free joint's prior: isotropic + the anatomy's off-axis part
    Q = prior_np[:, None, None] * np.eye(3)
    axes = finger_axes(template.joint_names, template.rest_joints)
    for i, j in enumerate(np.flatnonzero(free)):
        kind, a = axes.get(template.joint_names[j], (None, None))
        if kind == "hinge":
            Q[i] += config.hinge * (np.eye(3) - np.outer(a, a))
        elif kind == "twist":
            Q[i] += config.hinge * np.outer(a, a)
    Q_t = torch.as_tensor(Q, dtype=dt, device=device)

    base = torch.as_tensor(fit.pose[None], dtype=dt, device=device)
    joint_aa = base[0, free_idx].clone().requires_grad_(True)
    shape = torch.as_tensor(fit.shape[None, :n_shape], dtype=dt, device=device)
    expr = torch.as_tensor(fit.expression[None], dtype=dt, device=device)
    transl = torch.as_tensor(fit.translation, dtype=dt, device=device)
    zeros = torch.zeros_like(free_idx)
    start = joint_aa.detach().clone()
    rel = torch.as_tensor(is_arm, dtype=dt, device=device)[:, None]  # arm priors: on the change

    def pose_of(aa):
        return base.index_put((zeros, free_idx), aa)

    def forward(poser):
        return fit.scale * poser(shape, pose_of(joint_aa), expr) + transl

    def priors():
        d = joint_aa - rel * start
        return torch.einsum("ni,nij,nj->", d, Q_t, d)

    lm = LandmarkTerm.of(hand_pairs, landmark_weights(hand_pairs, None), device, dt)
    pool = np.flatnonzero(surface)
    hand_target = None
    if target is not None:
        hand_target = near_points(target, fit.verts[pool], config.scan_radius_m)
    variables = [FitVariable(joint_aa, None, np.diagonal(Q, axis1=1, axis2=2).copy())]
    n_eval = landmark_icp_fit(template, forward, priors, variables, lm, hand_target, pool, config.schedule, n_shape,
                              np.random.default_rng(seed + 1), device, dt, seed)
    poser = full_poser(template, n_shape, device, dt)
    with torch.no_grad():
        pose = pose_of(joint_aa)[0].cpu().numpy().astype(np.float64)
        verts = forward(poser).cpu().numpy().astype(np.float64)
    info = {}
    for s in sides:
        side_joints = hand_joints(template, s) | (arm_joints(template, s) if config.arm else False)
        if hand_target is None:
            info[s] = {"kept": True, "scan_mm": None}
            continue
        hand = template.masks[f"hand_{s}"] & template.masks["surface"]
        before, after = (float(np.minimum(hand_target.distance_to_scan(v[hand]), config.accept_cap_m).mean())
                         for v in (fit.verts, verts))
        info[s] = {"kept": after < before, "scan_mm": [before * 1e3, after * 1e3]}
        if after >= before:  # the body fit's hand stays; a side's joints move only its own vertices
            pose[side_joints] = fit.pose[side_joints]
    if not all(i["kept"] for i in info.values()):
        with torch.no_grad():
            verts = (fit.scale * poser(shape, torch.as_tensor(pose[None], dtype=dt, device=device), expr)
                     + transl).cpu().numpy().astype(np.float64)
    return replace(fit, pose=pose, verts=verts, iterations=fit.iterations + n_eval), info
