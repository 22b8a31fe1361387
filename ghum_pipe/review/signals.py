"""The signals a review reads from one registration (pure: arrays in, numbers out).

Every function takes the registration's vertices (V, 3) in metres, +Z up (template order), and
returns plain floats whose name says the unit. A larger value is worse unless the name says
otherwise (``observed_pct``). Groups:

- residuals both ways: scan -> registration (what the registration does not explain: clothing,
  objects, a second person) and registration -> scan (where it has no data: cut limbs, holes);
- landmarks per group (pose, hand, face), the registration's landmarks against the scan's;
- body-part consistency: the registration's limb nearest each sided landmark (a swap lands a
  "left wrist" on the right arm);
- skeleton plausibility: joint angles beyond a person's range, left/right bone lengths of the
  surface-regressed skeleton, how far the free-form surface left the skinned model;
- self-intersection: forearms and hands inside the torso, a lower leg inside the other leg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Coarse body groups from the joint that skins a vertex most (``register.evaluate.dominant_part``).
LIMB_PREFIXES = {
    "arm": ("shoulder01", "upperarm", "lowerarm", "wrist", "finger", "metacarpal"),
    "leg": ("upperleg", "lowerleg", "foot", "toe"),
}
TORSO_PREFIXES = ("root", "pelvis", "spine", "clavicle")
FOREARM_HAND = ("lowerarm", "wrist", "finger", "metacarpal")
LOWER_LEG = ("lowerleg", "foot", "toe")
LEG = ("upperleg", "lowerleg")

# Largest rotation (degrees) of a joint relative to its parent that a person reaches, by joint
# name prefix (Kapandji, The Physiology of the Joints, rounded up: a plausibility bound, not an
# average range). Elbows and knees are hinges, checked separately (HINGE_LIMITS_DEG).
JOINT_LIMITS_DEG = (
    ("spine", 35.0), ("neck", 45.0), ("head", 45.0), ("clavicle", 35.0), ("shoulder01", 45.0),
    ("upperarm01", 160.0), ("upperarm02", 110.0), ("lowerarm02", 110.0), ("wrist", 95.0),
    ("metacarpal", 35.0), ("finger", 115.0), ("pelvis", 30.0), ("upperleg01", 140.0),
    ("upperleg02", 70.0), ("lowerleg02", 50.0), ("foot", 65.0), ("toe", 70.0),
)
# (most extension (< 0), most flexion, most rotation off the hinge axis), degrees
HINGE_LIMITS_DEG = {"lowerarm01": (-20.0, 160.0, 30.0), "lowerleg01": (-15.0, 160.0, 30.0)}
# COCO joints (``template.coco_names``) whose left/right distances are compared
BONES = (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"))


@dataclass(frozen=True)
class BodyGroups:
    """Per-template lookups, built once (``body_groups``).

    vertex_group (V,) str: "torso" | "head" | "arm.L" | "arm.R" | "leg.L" | "leg.R";
    vertex_joint (V,) str: the dominant joint's name; surface (V,) bool;
    rest_normals (V, 3): unit normals of the rest template (the frame of the offsets);
    parts (V,) str: the groups with the hands apart (:func:`residual_parts`).
    """

    vertex_group: np.ndarray
    vertex_joint: np.ndarray
    surface: np.ndarray
    rest_normals: np.ndarray
    parts: np.ndarray


_GROUPS: dict[str, BodyGroups] = {}


def body_groups(template) -> BodyGroups:
    """The template's vertex groups (cached per template hash)."""
    if template.hash in _GROUPS:
        return _GROUPS[template.hash]
    from ghum_pipe.ops.normals import vertex_normals
    from ghum_pipe.register.evaluate import dominant_part

    joint = np.asarray(template.joint_names)[dominant_part(template)].astype(str)
    group = np.full(len(joint), "head", dtype=object)
    group[starts_with(joint, TORSO_PREFIXES)] = "torso"
    for limb, prefixes in LIMB_PREFIXES.items():
        m = starts_with(joint, prefixes)
        side = np.where(np.char.endswith(joint, ".L"), "L", "R")
        group[m] = np.char.add(f"{limb}.", side[m])
    group = group.astype(str)
    out = BodyGroups(group, joint, np.asarray(template.masks["surface"], bool),
                     vertex_normals(template.rest_verts, template.faces), _split_hands(group, joint))
    _GROUPS[template.hash] = out
    return out


def starts_with(names: np.ndarray, prefixes) -> np.ndarray:
    """(N,) bool: which strings of ``names`` start with one of ``prefixes``."""
    names = np.asarray(names, dtype=str)
    out = np.zeros(names.shape, bool)
    for p in prefixes:
        out |= np.char.startswith(names, p)
    return out


def _mask(groups: BodyGroups, prefixes, side: str | None = None) -> np.ndarray:
    m = starts_with(groups.vertex_joint, prefixes) & groups.surface
    return m & np.char.endswith(groups.vertex_joint, f".{side}") if side else m


def residual_signals(scan_to_reg_m: np.ndarray, reg_to_scan_m: np.ndarray, observed_dist_m: float = 0.01) -> dict:
    """scan_to_reg_m (N,): each scan sample's distance to the registration's surface;
    reg_to_scan_m (Vs,): each surface vertex's distance to the scan."""
    s2r, r2s = np.asarray(scan_to_reg_m) * 1e3, np.asarray(reg_to_scan_m) * 1e3
    return dict(
        s2r_p95_mm=float(np.percentile(s2r, 95)), s2r_p99_mm=float(np.percentile(s2r, 99)),
        s2r_far_pct=float(100 * (s2r > 20).mean()),
        r2s_p95_mm=float(np.percentile(r2s, 95)), r2s_far_pct=float(100 * (r2s > 30).mean()),
        observed_pct=float(100 * (r2s < observed_dist_m * 1e3).mean()),
    )


HAND = ("wrist", "finger", "metacarpal")


def residual_parts(groups: BodyGroups) -> np.ndarray:
    """(V,) str: the groups of ``body_groups`` with the hands apart from the arms ("hand.L"),
    the parts whose residuals are compared one by one (built once, with the groups)."""
    return groups.parts


def _split_hands(vertex_group: np.ndarray, vertex_joint: np.ndarray) -> np.ndarray:
    part = vertex_group.astype("<U8")  # room for "hand.L" (the groups' own dtype is "<U5")
    hand = starts_with(vertex_joint, HAND)
    part[hand] = np.char.add("hand.", np.where(np.char.endswith(vertex_joint[hand], ".L"), "L", "R"))
    return part


def part_residual_signals(s2r_m: np.ndarray, s2r_vertex: np.ndarray, r2s_m: np.ndarray, r2s_vertex: np.ndarray,
                          parts: np.ndarray, min_count: int = 50) -> tuple[dict, dict]:
    """The worst body part's p95 residual each way (mm) and which part: a hand fitted to the
    wrong curl or a foot turned the wrong way hides in the whole body's p95; and the scan ->
    registration one over the whole body's (``s2r_part_ratio``).

    s2r_m (N,) with s2r_vertex (N,) the registration vertex each scan sample is closest to;
    r2s_m (M,) with r2s_vertex (M,) the vertex each distance belongs to; parts (V,) str.
    Parts with fewer than ``min_count`` values are skipped."""
    out, detail = {}, {}
    for name, dist, vert in (("s2r_part_p95_mm", s2r_m, s2r_vertex), ("r2s_part_p95_mm", r2s_m, r2s_vertex)):
        p = parts[vert]
        worst, which = 0.0, ""
        for part in np.unique(p):
            d = dist[p == part]
            if len(d) >= min_count and np.percentile(d, 95) * 1e3 > worst:
                worst, which = float(np.percentile(d, 95) * 1e3), str(part)
        out[name] = worst
        detail[name] = which
    # the same against the whole body's p95: a scale-free version (the scanner's noise sets
    # the whole body's p95, a misfitted part stands out of it)
    out["s2r_part_ratio"] = out["s2r_part_p95_mm"] / max(float(np.percentile(s2r_m, 95)) * 1e3, 1e-3)
    detail["s2r_part_ratio"] = detail["s2r_part_p95_mm"]
    return out, detail


def landmark_kind(name: str) -> str:
    return "face" if name.startswith("face_") else "hand" if "_hand_" in name else "pose"


def landmark_signals(reg_landmarks_m: np.ndarray, scan_landmarks_m: np.ndarray, names) -> tuple[dict, dict]:
    """RMS per group (pose, hand, face) and the worst body landmark, in mm; and the detail
    {worst pose landmark name}. Both (L, 3) arrays in the same order as ``names``."""
    d = np.linalg.norm(np.asarray(reg_landmarks_m) - np.asarray(scan_landmarks_m), axis=1) * 1e3
    kinds = np.array([landmark_kind(n) for n in names])
    out, detail = {}, {}
    for k in ("pose", "hand", "face"):
        if (kinds == k).any():
            out[f"lm_{k}_rms_mm"] = float(np.sqrt((d[kinds == k] ** 2).mean()))
    hands = {side: np.char.startswith(np.asarray(names, dtype=str), f"{side}_hand_") for side in ("left", "right")}
    worst_hand = [(float(np.sqrt((d[m] ** 2).mean())), side) for side, m in hands.items() if m.any()]
    if worst_hand:
        out["lm_hand_worst_rms_mm"], detail["lm_hand_worst_rms_mm"] = max(worst_hand)
    if (kinds == "pose").any():
        i = np.flatnonzero(kinds == "pose")[np.argmax(d[kinds == "pose"])]
        out["lm_pose_max_mm"] = float(d[i])
        detail["lm_pose_max_mm"] = names[i]
    return out, detail


def part_signals(verts_m: np.ndarray, scan_landmarks_m: np.ndarray, expected_groups, groups: BodyGroups) -> tuple[dict, dict]:
    """Share (%) of sided limb landmarks whose nearest registration surface vertex is on another
    limb (the other side, or arm vs leg) than the template puts them on.

    expected_groups (L,) str: each landmark's group on the template ("" = not a limb landmark:
    torso, head, or on a boundary). Landmarks nearest to the torso or head are not counted as
    mismatches (shoulders and hips sit on the boundary)."""
    from pykdtree.kdtree import KDTree

    expected = np.asarray(expected_groups, dtype=str)
    use = starts_with(expected, ("arm.", "leg."))
    if not use.any():
        return {}, {}
    surf = np.flatnonzero(groups.surface)
    idx = KDTree(np.ascontiguousarray(verts_m[surf])).query(np.ascontiguousarray(scan_landmarks_m[use]), k=1)[1]
    found = groups.vertex_group[surf[idx.astype(np.int64)]]
    wrong = starts_with(found, ("arm.", "leg.")) & (found != expected[use])
    detail = {}
    if wrong.any():
        pairs = sorted({f"{e}->{f}" for e, f in zip(expected[use][wrong], found[wrong])})
        detail["part_mismatch_pct"] = ", ".join(pairs)
    return {"part_mismatch_pct": float(100 * wrong.mean())}, detail


def expected_landmark_groups(template, template_landmarks, names) -> np.ndarray:
    """(L,) each named landmark's group on the rest template ("" for torso/head ones)."""
    from pykdtree.kdtree import KDTree

    g = body_groups(template)
    pts = template_landmarks.subset(list(names)).points(template.rest_verts)
    surf = np.flatnonzero(g.surface)
    idx = KDTree(np.ascontiguousarray(template.rest_verts[surf])).query(np.ascontiguousarray(pts), k=1)[1]
    grp = g.vertex_group[surf[idx.astype(np.int64)]]
    return np.where(starts_with(grp, ("arm.", "leg.")), grp, "")


def joint_limit_signals(pose: np.ndarray, joint_names, hinge_axes: dict) -> tuple[dict, dict]:
    """Largest excess (degrees, 0 = all within range) of a fitted joint rotation over
    JOINT_LIMITS_DEG / HINGE_LIMITS_DEG. pose (J, 3) axis-angle, joint 0 (global) skipped."""
    pose = np.asarray(pose, dtype=np.float64)
    worst, name = 0.0, ""
    for j, jn in enumerate(joint_names):
        if j == 0:
            continue
        r = pose[j]
        base = jn.split(".")[0]
        if base in HINGE_LIMITS_DEG:
            lo, hi, off = HINGE_LIMITS_DEG[base]
            axis = hinge_axes[jn]
            flex = np.degrees(r @ axis)
            off_deg = np.degrees(np.linalg.norm(r - (r @ axis) * axis))
            excess = max(lo - flex, flex - hi, off_deg - off)
        else:
            limit = next((lim for p, lim in JOINT_LIMITS_DEG if jn.startswith(p)), None)
            if limit is None:
                continue
            excess = np.degrees(np.linalg.norm(r)) - limit
        if excess > worst:
            worst, name = float(excess), jn
    return {"joint_limit_excess_deg": worst}, ({"joint_limit_excess_deg": name} if name else {})


def bone_signals(verts_m: np.ndarray, coco_regressor, coco_names) -> tuple[dict, dict]:
    """Largest left/right length difference (%) of the upper arm, forearm, thigh and shin of
    the skeleton regressed from the registration's surface (``template.coco_regressor``)."""
    j = np.asarray(coco_regressor @ verts_m)
    idx = {n: i for i, n in enumerate(coco_names)}
    worst, name = 0.0, ""
    for a, b in BONES:
        ll = np.linalg.norm(j[idx[f"left_{a}"]] - j[idx[f"left_{b}"]])
        lr = np.linalg.norm(j[idx[f"right_{a}"]] - j[idx[f"right_{b}"]])
        asym = 100 * abs(ll - lr) / max(min(ll, lr), 1e-6)
        if asym > worst:
            worst, name = float(asym), f"{a}-{b}"
    return {"bone_asymmetry_pct": worst}, {"bone_asymmetry_pct": name}


def offset_signals(offsets_m: np.ndarray, groups: BodyGroups) -> tuple[dict, dict]:
    """How far the free-form surface left the skinned model: p95 / p99 of the rest-pose
    offsets' length over surface vertices, the p75 of their normal component over the torso,
    and the worst hand's p95 (mm); and the detail {worst hand}. Skin lies on the shape model's
    torso within a few mm; loose clothing is a shell centimetres off it that the shape
    coefficients cannot make. A hand whose finger pose was not found (a fist fitted with open
    fingers) is pulled onto the scan by the offsets alone: ~1 cm over the hand's surface where
    a well-posed hand needs a few mm (docs/review.md)."""
    offsets_m = np.asarray(offsets_m)
    length = np.linalg.norm(offsets_m, axis=1) * 1e3
    n = length[groups.surface]
    torso = groups.surface & (groups.vertex_group == "torso")
    normal = np.abs(np.einsum("ij,ij->i", offsets_m[torso], groups.rest_normals[torso])) * 1e3
    out = {"offset_p95_mm": float(np.percentile(n, 95)), "offset_p99_mm": float(np.percentile(n, 99)),
           "offset_torso_p75_mm": float(np.percentile(normal, 75))}
    parts = residual_parts(groups)
    hands = [(float(np.percentile(length[m], 95)), side) for side in ("hand.L", "hand.R")
             if (m := (parts == side) & groups.surface).any()]
    detail = {}
    if hands:
        out["offset_hand_p95_mm"], detail["offset_hand_p95_mm"] = max(hands)
    return out, detail


def penetration_depth_m(verts_m: np.ndarray, faces: np.ndarray, part_faces: np.ndarray, test_verts: np.ndarray,
                        rank: int = 10) -> float:
    """How deep the vertices ``test_verts`` (indices) are inside the body part made of
    ``faces[part_faces]``: the ``rank``-th largest depth (robust to a few stray vertices), m.

    Depth is the distance to the part's closest point, counted when the point lies behind
    that face (against its outward normal). Faces near the part's open boundary (where it
    is cut from the rest of the body) are left out, since behind them is not inside."""
    from ghum_pipe.ops.normals import face_normals
    from ghum_pipe.register.backend import MeshDistance

    f = faces[part_faces]
    if len(f) == 0 or len(test_verts) == 0:
        return 0.0
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    rim = np.zeros(len(verts_m), bool)
    rim[uniq[counts == 1].ravel()] = True
    for _ in range(2):  # two rings of faces around the rim
        near = rim[f].any(1)
        rim[f[near].ravel()] = True
    inner = ~rim[f].any(1)
    if not inner.any():
        return 0.0
    mesh = MeshDistance(verts_m, f)
    c = mesh.closest(verts_m[test_verts])
    n = face_normals(verts_m, f)[c["face"]]
    behind = np.einsum("ij,ij->i", verts_m[test_verts] - c["points"], n)
    depth = np.where((behind < 0) & inner[c["face"]], c["dist"], 0.0)
    return float(np.sort(depth)[-min(rank, len(depth))])


def intersection_signals(verts_m: np.ndarray, faces: np.ndarray, groups: BodyGroups, step: int = 2) -> dict:
    """Forearms and hands inside the torso; a lower leg inside the other leg (mm)."""
    surf_faces = groups.surface[faces].all(1)

    def part_faces(prefixes, side=None):
        m = _mask(groups, prefixes, side)
        return surf_faces & m[faces].all(1)

    torso = part_faces(TORSO_PREFIXES)
    arms = np.flatnonzero(_mask(groups, FOREARM_HAND))[::step]
    leg = max(penetration_depth_m(verts_m, faces, part_faces(LEG, s), np.flatnonzero(_mask(groups, LOWER_LEG, o))[::step])
              for s, o in (("L", "R"), ("R", "L")))
    return {"arm_in_torso_mm": 1e3 * penetration_depth_m(verts_m, faces, torso, arms), "leg_in_leg_mm": 1e3 * leg}
