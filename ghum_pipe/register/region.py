"""Register one region of the template (head, or one hand) to a close-up scan.

GHUM (Xu et al., CVPR 2020, sec. 3.1) adds close-up head and hand scans to the whole-body ones;
each registration then constrains the model only where its scan has data (the filter F). The
same three steps as a body registration (stage.py), restricted to the region
``template.masks[kind]``:

1. similarity from the region's landmarks (Umeyama): the face (all FaceMesh points) or the palm
   (wrist, thumb base and the four knuckles, which a finger curl does not move);
2. an LBS fit of only what shapes the region: root rotation + translation, the neck/head
   joints, the 52 facial actions and the shape for a head; the wrist and finger joints and the
   shape for a hand. Landmarks first, then + robust point-to-plane ICP both ways (losses.py)
   with the template side restricted to the region's surface vertices;
3. ACAP non-rigid refinement (nonrigid.py) on a sub-mesh: the region grown by ``data_rings``
   rings takes scan data, ``pin_rings`` further rings are pinned to the LBS fit (as stiff point
   constraints), the rest of the template is the LBS fit unchanged.

Output as a body registration: all V template vertices (outside the region: the fitted
template), params with ``vertex_mask`` = region surface vertices with scan data within
``observed_dist_m`` (the model learns only the region from a close-up) and ``kind``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ghum_pipe.errors import RegistrationError
from ghum_pipe.register.landmark_pairs import LandmarkPairs, match_landmarks
from ghum_pipe.register.nonrigid import NonrigidConfig, refine_nonrigid
from ghum_pipe.register.posing import full_poser
from ghum_pipe.register.result import RegistrationResult, observed_vertices, registration_metrics
from ghum_pipe.register.similarity import Similarity, umeyama
from ghum_pipe.register.skeleton import (FitVariable, SkeletonFit, assemble_pose, initial_translation, landmark_icp_fit,
                                         rest_offsets)
from ghum_pipe.register.target import ScanTarget, build_target

HEAD_JOINTS = ("neck01", "neck02", "neck03", "head")
PALM_POINTS = (0, 1, 5, 9, 13, 17)  # MediaPipe hand: wrist, thumb CMC, index/middle/ring/pinky MCP
HINT = "Re-run `ghum-pipe landmark` for this scan and check its contact sheet"


@dataclass(frozen=True)
class RegionConfig:
    """Settings of a close-up registration (metres; losses in cm^2 like skeleton.py)."""

    n_shape: int = 32
    landmark_iters: int = 150
    icp_rounds: int = 4
    icp_iters: int = 40
    icp_landmark_scale: float = 0.1  # detected landmarks are mm-noisy: the dense data leads in the ICP rounds
    w_icp: float = 1.0
    # a close-up is ~10x smaller than a body: narrower correspondence windows than skeleton.py's
    icp_sigma_m: tuple[float, float] = (0.01, 0.003)
    icp_max_dist_m: tuple[float, float] = (0.03, 0.008)
    icp_max_angle_deg: float = 60.0
    n_icp_verts: int = 3000  # region vertices sampled per correspondence refresh
    n_icp_scan: int = 3000  # scan samples likewise
    pose_prior: float = 0.05  # per rad^2 (neck, head, wrist)
    finger_prior: float = 0.02
    shape_prior: float = 0.005
    expression_prior: float = 0.05
    min_face_landmarks: int = 50
    min_hand_landmarks: int = 10
    min_coverage: float = 0.5  # share of the region within coverage_dist_m of the scan after the landmark fit
    coverage_dist_m: float = 0.02
    data_rings: int = 2  # the region grown by this many rings takes scan data in the non-rigid step
    pin_rings: int = 2  # then this many rings pinned to the LBS fit
    pin_weight: float = 50.0  # x nonrigid.w_landmark per pinned vertex
    nonrigid: NonrigidConfig = field(default_factory=lambda: NonrigidConfig(max_dist_m=(0.02, 0.006), sigma_m=0.004))
    seed: int = 0


def region_landmarks(pairs: LandmarkPairs, kind: str) -> LandmarkPairs:
    """The pairs that belong to the region: face points (and Pose's face names) for a head, that
    side's hand points for a hand."""
    if kind == "head":
        keep = [k in ("face",) or n in _POSE_FACE for n, k in zip(pairs.names, pairs.kinds)]
    else:
        side = "left" if kind == "hand_left" else "right"
        keep = [n.startswith(f"{side}_hand_") for n in pairs.names]
    return pairs.subset(np.asarray(keep, dtype=bool))


_POSE_FACE = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
              "right_eye_outer", "mouth_left", "mouth_right")


def free_joints(template, kind: str) -> np.ndarray:
    """(J,) bool: the joints that shape the region (root excluded: it carries the global rotation)."""
    names = template.joint_names
    if kind == "head":
        return np.array([n in HEAD_JOINTS for n in names])
    suffix = ".L" if kind == "hand_left" else ".R"
    return np.array([n.endswith(suffix) and n.startswith(("wrist", "finger", "metacarpal")) for n in names])


def grow(template, mask: np.ndarray, rings: int) -> np.ndarray:
    """(V,) bool: ``mask`` grown by ``rings`` rings of the template's faces."""
    m = mask.copy()
    for _ in range(rings):
        m[template.faces[m[template.faces].any(1)].ravel()] = True
    return m


def register_region(
    scan_verts: np.ndarray, scan_faces: np.ndarray | None, scan_normals: np.ndarray | None,
    landmarks: dict, template, kind: str, config: RegionConfig = RegionConfig(), template_landmarks=None,
    path: str | None = None, max_scan_points: int = 60000, min_confidence: float = 0.3,
    observed_dist_m: float = 0.01, max_scan_to_reg_mm: float = 10.0, device: str = "cpu",
):
    """Register the template's ``kind`` region to a close-up scan (pure core: arrays in and out).

    Args:
        scan_verts: (N, 3) metres, +Z up (a hand may be in any orientation); scan_faces (F, 3) or
            None; scan_normals (N, 3) or None.
        landmarks: ``{"names", "points" (L, 3) metres, "confidence" (L,)}``.
        template: :class:`ghum_pipe.template.Template`; kind: "head" | "hand_left" | "hand_right".
        template_landmarks: definitions on the template (default: the landmark stage's).
    Returns:
        :class:`~ghum_pipe.register.result.RegistrationResult` (all V vertices, metres). Raises
        RegistrationError.
    """
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set

    cfg = config
    seconds = {}
    t0 = time.perf_counter()
    tl = template_landmarks if template_landmarks is not None else load_template_landmark_set(template)
    pairs = match_landmarks(list(landmarks["names"]), np.asarray(landmarks["points"], dtype=np.float64).reshape(-1, 3),
                            landmarks.get("confidence"), tl, min_confidence)
    pairs = region_landmarks(pairs, kind)
    need = cfg.min_face_landmarks if kind == "head" else cfg.min_hand_landmarks
    what = "face" if kind == "head" else kind.replace("hand_", "") + " hand"
    if len(pairs) < need:
        raise RegistrationError(f"{len(pairs)} usable {what} landmarks, a {kind.replace('_', ' ')} close-up needs "
                                f"at least {need}", path, HINT + " (and the scan's kind)")
    init = _initial_similarity(template, pairs, kind, path)
    target = build_target(scan_verts, scan_faces, scan_normals, max_points=max_scan_points, seed=cfg.seed)
    region = template.masks[kind] & template.masks["surface"]
    seconds["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    coverage = {}

    def check_coverage(verts):
        near = target.index.query(verts[region], 1)[0][:, 0] < cfg.coverage_dist_m
        coverage["after_landmarks"] = float(near.mean())
        if near.mean() < cfg.min_coverage:
            raise RegistrationError(
                f"only {near.mean():.0%} of the template's {kind.replace('_', ' ')} is within "
                f"{cfg.coverage_dist_m * 100:.0f} cm of the scan after the landmark fit", path,
                HINT + "; check the scan's kind (a left hand given as hand_right?)")

    fit = fit_region_skeleton(template, pairs, init, target, kind, cfg, device, after_landmarks=check_coverage)
    seconds["skeleton"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    verts, nr = refine_region(template, fit.verts, target, kind, pairs, cfg, device)
    seconds["nonrigid"] = time.perf_counter() - t0
    if not np.isfinite(verts).all():
        raise RegistrationError("registration diverged (non-finite vertices)", path, "Check the scan's landmarks")

    t0 = time.perf_counter()
    offsets = rest_offsets(template, fit, verts)
    metrics, scan_pts, s2r = registration_metrics(template, verts, target, pairs, fit.landmark_rms_m, region)
    seconds["metrics"] = time.perf_counter() - t0
    metrics.update(
        kind=kind, similarity_scale=init.scale, coverage=coverage, matched_fraction=nr.matched_fraction,
        iterations={"skeleton": fit.iterations, "nonrigid": nr.iterations}, seconds=seconds,
        seconds_total=float(sum(seconds.values())),
    )
    if metrics["scan_to_reg_mean_mm"] > max_scan_to_reg_mm:
        raise RegistrationError(f"registration diverged: mean scan->registration distance "
                                f"{metrics['scan_to_reg_mean_mm']:.1f} mm (limit {max_scan_to_reg_mm} mm)", path, HINT)
    observed = observed_vertices(target, verts, region, observed_dist_m)
    metrics["observed_fraction"] = float(observed[region].mean())
    params = dict(pose=fit.pose, shape=fit.shape, expression=fit.expression, scale=np.float64(fit.scale),
                  translation=fit.translation, offsets=offsets, vertex_mask=observed, kind=np.array(kind),
                  region_mask=template.masks[kind].copy())
    return RegistrationResult(verts=verts, params=params, metrics=metrics, scan_points=scan_pts, scan_to_reg_m=s2r)


def _initial_similarity(template, pairs: LandmarkPairs, kind: str, path) -> Similarity:
    """Umeyama from the template's rest landmarks to the scan's: all face points, or the palm."""
    use = np.ones(len(pairs), dtype=bool)
    if kind != "head":
        use = np.array([int(n.rsplit("_", 1)[1]) in PALM_POINTS for n in pairs.names])
        if use.sum() < 3:
            use[:] = True
    rest = pairs.template_points(template.rest_verts)
    try:
        sim = umeyama(rest[use], pairs.targets[use], pairs.confidence[use])
    except ValueError:
        raise RegistrationError("degenerate landmarks (all on a line)", path, HINT) from None
    if not 0.5 < sim.scale < 2.0:
        raise RegistrationError(f"inconsistent landmarks (similarity scale {sim.scale:.2f} to the template)", path,
                                HINT + "; check --units")
    return sim


def fit_region_skeleton(template, pairs: LandmarkPairs, init: Similarity, target: ScanTarget | None, kind: str,
                        config: RegionConfig = RegionConfig(), device="cpu", after_landmarks=None) -> SkeletonFit:
    """LBS fit of the region (see the module docstring, step 2). Returns a ``skeleton.SkeletonFit``
    (scale 1: size is the shape's job, as in skeleton.py)."""
    cfg = config
    dt = torch.float64
    J, E = template.n_joints, template.n_expression
    free = free_joints(template, kind)
    free_idx = torch.as_tensor(np.flatnonzero(free), device=device)
    is_finger = np.array([n.startswith(("finger", "metacarpal")) for n in template.joint_names])
    prior_np = np.where(is_finger, cfg.finger_prior, cfg.pose_prior)[free]
    prior_w = torch.as_tensor(prior_np, dtype=dt, device=device)
    use_face = kind == "head"
    src = pairs.template_points(template.rest_verts).mean(0)
    init = Similarity(init.rotation, 1.0, pairs.targets.mean(0) - init.rotation @ src)
    from scipy.spatial.transform import Rotation

    root = torch.tensor(Rotation.from_matrix(init.rotation).as_rotvec(), dtype=dt, device=device, requires_grad=True)
    transl = torch.tensor(initial_translation(template, init), dtype=dt, device=device, requires_grad=True)
    joint_aa = torch.zeros(len(free_idx), 3, dtype=dt, device=device, requires_grad=True)
    shape = torch.zeros(1, cfg.n_shape, dtype=dt, device=device, requires_grad=True)
    expr = torch.zeros(1, E, dtype=dt, device=device, requires_grad=use_face)
    variables = [FitVariable(root), FitVariable(transl),
                 FitVariable(joint_aa, None, np.broadcast_to(prior_np[:, None], (len(prior_np), 3)))]
    if use_face:
        variables.append(FitVariable(expr, (0.0, 1.0), cfg.expression_prior))
    variables.append(FitVariable(shape, None, cfg.shape_prior))
    c = np.clip(pairs.confidence, 1e-3, None)
    lm_w = torch.as_tensor(c / c.sum(), dtype=dt, device=device)
    lm_target = torch.as_tensor(pairs.targets, dtype=dt, device=device)
    lm_wts = torch.as_tensor(pairs.weights, dtype=dt, device=device)
    region_idx = np.flatnonzero(template.masks[kind] & template.masks["surface"])
    rng = np.random.default_rng(cfg.seed)

    def forward(poser):
        return poser(shape, assemble_pose(root, joint_aa, free_idx, J), expr if use_face else None) + transl

    def priors():
        p = (prior_w * (joint_aa**2).sum(-1)).sum() + cfg.shape_prior * (shape**2).sum()
        return p + cfg.expression_prior * (expr**2).sum() if use_face else p

    # the body fit's two phases (landmarks, then + ICP on the region); all ICP rounds equally long
    n_eval = landmark_icp_fit(template, forward, priors, variables, pairs, lm_wts, lm_target, lm_w,
                              target, region_idx, cfg, rng, device, dt, cfg.icp_iters, after_landmarks)
    with torch.no_grad():
        verts = forward(full_poser(template, cfg.n_shape, device, dt))
        lm_pred = torch.einsum("lk,lkc->lc", lm_wts, verts[torch.as_tensor(pairs.vertex_ids, device=device)])
        rms = float(((lm_pred - lm_target) ** 2).sum(-1).mean().sqrt())
        pose = assemble_pose(root, joint_aa, free_idx, J)[0]
    return SkeletonFit(
        pose=pose.cpu().numpy().astype(np.float64), shape=shape.detach().cpu().numpy()[0].astype(np.float64),
        expression=expr.detach().cpu().numpy()[0].astype(np.float64), scale=1.0,
        translation=transl.detach().cpu().numpy().astype(np.float64), verts=verts.cpu().numpy().astype(np.float64),
        landmark_rms_m=rms, iterations=n_eval,
    )


def refine_region(template, posed: np.ndarray, target: ScanTarget, kind: str, pairs: LandmarkPairs,
                  config: RegionConfig = RegionConfig(), device="cpu"):
    """ACAP refinement of the region on a sub-mesh (module docstring, step 3). Returns the (V, 3)
    vertices (outside the sub-mesh: ``posed``) and the ``nonrigid.NonrigidResult``."""
    cfg = config
    region = template.masks[kind]
    data = grow(template, region, cfg.data_rings) & template.masks["surface"]
    inner = grow(template, region, cfg.data_rings)
    sub = grow(template, inner, cfg.pin_rings)
    sub_ids = np.flatnonzero(sub)
    local = np.full(template.n_verts, -1)
    local[sub_ids] = np.arange(len(sub_ids))
    faces = local[template.faces[sub[template.faces].all(1)]]
    pins = np.flatnonzero(sub & ~inner)
    # pinned ring vertices as stiff one-vertex "landmarks" at their LBS positions
    K = pairs.vertex_ids.shape[1]
    pin_ids = np.zeros((len(pins), K), dtype=np.int64)
    pin_ids[:, :] = local[pins][:, None]
    pin_w = np.zeros((len(pins), K))
    pin_w[:, 0] = 1.0
    lm = pairs if kind != "head" else pairs.subset(np.zeros(len(pairs), dtype=bool))  # face: dense data leads
    inside = np.isin(lm.vertex_ids, sub_ids).all(1)
    lm = lm.subset(inside)
    constraints = LandmarkPairs(
        names=tuple(lm.names) + tuple(f"pin_{v}" for v in pins), kinds=tuple(lm.kinds) + ("pose",) * len(pins),
        vertex_ids=np.concatenate([local[lm.vertex_ids], pin_ids]), weights=np.concatenate([lm.weights, pin_w]),
        targets=np.concatenate([lm.targets, posed[pins]]),
        confidence=np.concatenate([lm.confidence, np.full(len(pins), cfg.pin_weight)]),
    )
    nr_cfg = replace(cfg.nonrigid, w_landmark_face=0.0)
    nr = refine_nonrigid(posed[sub_ids], faces, data[sub_ids], target, nr_cfg, landmarks=constraints, device=device)
    verts = posed.copy()
    verts[sub_ids] = nr.verts
    return verts, nr
