"""A registration's review verdict: ``ok``, ``look`` or ``failed``, with the reasons.

``review_registration`` computes the signals of ``signals.py`` from the registration's arrays
and applies the rules of a ``ReviewConfig``: a signal beyond its ``look`` bound makes the
verdict ``look`` (a person should check this one), beyond its ``fail`` bound ``failed`` (do not
train on it). The bounds are calibrated on the corruption suite of ``bench/review.py``; how,
and what they catch, is in docs/review.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import ghum_pipe.review.signals as sig

VERDICTS = ("ok", "look", "failed")


@dataclass(frozen=True)
class Rule:
    """One bound on one signal: ``look`` / ``fail`` thresholds (None = never) and a label.
    ``below`` = the signal is bad when it is *below* the thresholds (coverage)."""

    signal: str
    look: float | None
    fail: float | None
    label: str
    unit: str
    below: bool = False

    def level(self, value: float) -> int:
        """0 ok, 1 look, 2 failed."""
        beyond = (lambda b: b is not None and (value < b if self.below else value > b))
        return 2 if beyond(self.fail) else 1 if beyond(self.look) else 0


# Calibrated on bench/review.py (docs/review.md): each ``look`` bound sits above the worst value
# of the good registrations (true p95 <= 10 mm) of that run by the margin stated there; ``fail``
# bounds are values only clearly broken registrations reached. Re-run on 2026-12-01 with that
# day's register stage: bone asymmetry and the worst body landmark loosened (pose-dependent
# bones; real MediaPipe tails), the worst hand's offsets added (fists).
DEFAULT_RULES = (
    Rule("s2r_p95_mm", 6.0, 25.0, "scan->registration p95", "mm"),
    Rule("s2r_far_pct", 0.5, 10.0, "scan points > 20 mm from the registration", "%"),
    Rule("s2r_part_ratio", 1.25, 3.0, "worst part's scan->registration p95 over the body's", "x"),
    Rule("s2r_part_p95_mm", 10.0, 40.0, "worst part's scan->registration p95", "mm"),
    Rule("r2s_p95_mm", 15.0, 80.0, "registration->scan p95", "mm"),
    Rule("r2s_far_pct", 1.5, 10.0, "registration vertices > 30 mm from the scan", "%"),
    Rule("r2s_part_p95_mm", 40.0, 120.0, "worst part's registration->scan p95", "mm"),
    Rule("observed_pct", 90.0, 60.0, "surface with scan data within 10 mm", "%", below=True),
    Rule("lm_pose_rms_mm", 13.0, 40.0, "body landmark RMS", "mm"),
    Rule("lm_pose_max_mm", 50.0, 100.0, "worst body landmark", "mm"),
    Rule("lm_hand_rms_mm", 10.0, 40.0, "hand landmark RMS", "mm"),
    Rule("lm_hand_worst_rms_mm", 10.5, 40.0, "worst hand's landmark RMS", "mm"),
    Rule("lm_face_rms_mm", 8.0, 30.0, "face landmark RMS", "mm"),
    Rule("part_mismatch_pct", 5.0, 30.0, "limb landmarks on the wrong limb", "%"),
    Rule("joint_limit_excess_deg", 5.0, 30.0, "joint beyond its range by", "deg"),
    Rule("bone_asymmetry_pct", 15.0, 25.0, "left/right bone length difference", "%"),
    Rule("offset_p95_mm", 25.0, 50.0, "free-form offsets p95", "mm"),
    Rule("offset_torso_p75_mm", 5.0, 15.0, "torso surface off the body model (p75)", "mm"),
    Rule("offset_hand_p95_mm", 10.5, 30.0, "worst hand's surface off the body model (p95)", "mm"),
    Rule("arm_in_torso_mm", 10.0, 30.0, "forearm/hand inside the torso", "mm"),
    Rule("leg_in_leg_mm", 10.0, 30.0, "leg inside the other leg", "mm"),
)


@dataclass(frozen=True)
class ReviewConfig:
    rules: tuple[Rule, ...] = DEFAULT_RULES
    observed_dist_m: float = 0.01  # a surface vertex "has scan data" within this distance
    max_scan_points: int = 60000  # scan samples the residuals are computed on (seeded subset)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Review:
    """verdict: "ok" | "look" | "failed"; reasons: one line per rule broken, worst first;
    signals: {name: value} (units in the names)."""

    verdict: str
    reasons: tuple[str, ...]
    signals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "signals": dict(self.signals)}


def apply_rules(signals: dict, details: dict, rules=DEFAULT_RULES) -> Review:
    """The verdict and reasons from already computed signals (missing signals are skipped)."""
    hits = []
    for r in rules:
        v = signals.get(r.signal)
        if v is None or not np.isfinite(v):
            continue
        lvl = r.level(float(v))
        if lvl:
            bound = r.fail if lvl == 2 else r.look
            what = f" ({details[r.signal]})" if details.get(r.signal) else ""
            cmp = "<" if r.below else ">"
            hits.append((lvl, f"{r.label}{what} {v:.1f} {r.unit} {cmp} {bound:g}"))
    hits.sort(key=lambda h: -h[0])
    level = max((h[0] for h in hits), default=0)
    return Review(VERDICTS[level], tuple(h[1] for h in hits), {k: round(float(v), 3) for k, v in signals.items()})


def review_registration(
    verts_m: np.ndarray, scan_points_m: np.ndarray, landmarks: dict, template, template_landmarks,
    pose: np.ndarray | None = None, offsets_m: np.ndarray | None = None, kind: str = "body",
    config: ReviewConfig = ReviewConfig(),
) -> Review:
    """Review one registration (pure core: arrays in, a Review out).

    Args:
        verts_m: (V, 3) the registration, metres, +Z up, template order.
        scan_points_m: (N, 3) scan samples (vertices or cloud points), metres, +Z up.
        landmarks: ``{"names": [...], "points": (L, 3) metres}``: the scan's landmarks.
        template: :class:`ghum_pipe.template.Template`; template_landmarks: its landmark
            definitions (``load_template_landmark_set``).
        pose: (J, 3) fitted axis-angle (params.npz ``pose``); offsets_m: (V, 3) rest-pose
            free-form offsets (params.npz ``offsets``). Skeleton signals are skipped without them.
        kind: "body", or a close-up ("head", "hand_left", "hand_right"): close-ups get the
            residual (registration->scan over their region) and landmark signals only, with
            the body's bounds (not calibrated on close-ups).
    """
    from ghum_pipe.register.backend import MeshDistance, PointIndex
    from ghum_pipe.template.anatomy import hinge_axes

    verts_m = np.asarray(verts_m, dtype=np.float64)
    groups = sig.body_groups(template)
    region = template.surface_of(kind)
    faces = template.faces[groups.surface[template.faces].all(1)]  # a close-up's scan may reach past its region
    pts = np.asarray(scan_points_m, dtype=np.float64)
    if len(pts) > config.max_scan_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), config.max_scan_points, replace=False)]
    closest = MeshDistance(verts_m, faces).closest(pts)
    s2r = closest["dist"]
    r2s = PointIndex(pts).query(verts_m[region], 1)[0][:, 0]
    signals = sig.residual_signals(s2r, r2s, config.observed_dist_m)
    details: dict = {}
    if kind == "body":
        s2r_vertex = faces[closest["face"], np.argmax(closest["bary"], axis=1)]
        s, d = sig.part_residual_signals(s2r, s2r_vertex, r2s, np.flatnonzero(region), sig.residual_parts(groups))
        signals.update(s)
        details.update(d)

    names = [n for n in landmarks["names"] if n in set(template_landmarks.names)]
    keep = np.isin(np.asarray(landmarks["names"]), names)
    scan_lm = np.asarray(landmarks["points"], dtype=np.float64).reshape(-1, 3)[keep]
    if names:
        reg_lm = template_landmarks.subset(names).points(verts_m)
        s, d = sig.landmark_signals(reg_lm, scan_lm, names)
        signals.update(s)
        details.update(d)
    if kind == "body":
        if names:
            s, d = sig.part_signals(verts_m, scan_lm, sig.expected_landmark_groups(template, template_landmarks, names), groups)
            signals.update(s)
            details.update(d)
        if pose is not None:
            s, d = sig.joint_limit_signals(pose, template.joint_names, hinge_axes(template.joint_names, template.rest_joints))
            signals.update(s)
            details.update(d)
        s, d = sig.bone_signals(verts_m, template.coco_regressor, template.coco_names)
        signals.update(s)
        details.update(d)
        if offsets_m is not None:
            s, d = sig.offset_signals(offsets_m, groups)
            signals.update(s)
            details.update(d)
        signals.update(sig.intersection_signals(verts_m, template.faces, groups))
    return apply_rules(signals, details, config.rules)
