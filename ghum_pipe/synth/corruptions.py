"""The corruption suite of ``bench/review.py`` and tests/test_review_e2e.py: synthetic scans with known truth that fail the way
real scans do, built from ``ghum_pipe.synth`` (subjects, natural poses, the ring scanner).

Every case is ``(kind, index)``; ``make_case`` returns the scan (metres, +Z up: the file frame
is the internal one), the truth vertices and the landmarks to register with. Scans are the
scanner's merged, oriented point clouds, not Poisson meshes: screened Poisson costs 15-50 s a
scan on the shared 2-core machine, and registration takes clouds as they are (README: raw
clouds register at 4.1 mm vs 3.1 mm for meshes). Landmarks are
the template's landmark definitions applied to the truth vertices plus Gaussian noise of the
landmark stage's measured size (body 8 mm, hands 5 mm, face 2.5 mm per axis; README: 13 / 7 /
3.5 mm mean), instead of running MediaPipe on every scan (6 s a scan saved); landmark failures
are planted in them (``lr_swap_*``) the way the landmark stage fails (a whole-body or a
limb's left/right swap).

Kinds (what the scanner or the subject did):
- ``clean_apose``, ``clean_posed``: no corruption (the good registrations);
- ``lr_swap_all`` / ``lr_swap_arms`` / ``lr_swap_legs`` / ``lr_swap_hands``: left and right
  landmark names swapped on the whole body, the arms below the shoulders, the legs below the
  hips, or the hands;
- ``limb_cut``: a forearm+hand or a lower leg+foot outside the scanner's volume (no samples,
  no landmarks there);
- ``arms_fused``: the arms hang against the torso (in a cloud: touching samples, not one merged surface);
- ``crossed_arms``, ``crossed_legs``, ``sitting``: poses outside the natural sampler's range;
- ``curled_fingers``: both hands in fists (beyond the sampler's curl);
- ``noise_holes``: 6 mm depth noise and 8 missing patches of 6-12 cm;
- ``clothing``: a loose shell 2-4 cm off the torso and thighs (truth: the body under it);
- ``second_body``: a pole through a hand, a stool against the calves, or a second person
  (A-pose) beside the subject, hands overlapping by 3 cm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ghum_pipe.register.evaluate import dominant_part
from ghum_pipe.synth.generate import make_subject, pose_template
from ghum_pipe.synth.poses import PoseSampler
from ghum_pipe.synth.scanner import BODY_SCANNER, merge_samples, ring_cameras, scan_samples
from ghum_pipe.template.anatomy import MIRROR, elbow_axis

SEED = 77
LANDMARK_NOISE_M = {"pose": 0.008, "hand": 0.005, "face": 0.0025}
COUNTS = {  # cases per kind in a full run
    "clean_apose": 4, "clean_posed": 6, "lr_swap_all": 2, "lr_swap_arms": 2, "lr_swap_legs": 1, "lr_swap_hands": 1,
    "limb_cut": 3, "arms_fused": 3, "crossed_arms": 2, "crossed_legs": 1, "sitting": 2, "curled_fingers": 3,
    "noise_holes": 3, "clothing": 3, "second_body": 4,
}


@dataclass(frozen=True)
class Case:
    case_id: str
    kind: str
    scan_points: np.ndarray  # (N, 3) metres, +Z up: the scanner's merged point cloud
    scan_normals: np.ndarray  # (N, 3) unit, oriented towards the cameras
    truth_verts: np.ndarray  # (V, 3) metres: the body under any clothing
    landmarks: dict  # names, points (L, 3) metres, confidence (L,)
    observed: np.ndarray  # (V,) bool: truth vertices with scan samples within 5 mm


def _rot(pose: np.ndarray, joint: int, rotvec) -> None:
    pose[joint] = (Rotation.from_rotvec(rotvec) * Rotation.from_rotvec(pose[joint])).as_rotvec()


def _parts(t) -> np.ndarray:
    names = np.array(t.joint_names)
    return names[dominant_part(t)]


def _group_mask(t, prefixes, side: str | None = None) -> np.ndarray:
    """(V,) bool: vertices whose dominant joint starts with one of ``prefixes`` (and ends with side)."""
    parts = _parts(t)
    m = np.zeros(len(parts), bool)
    for p in prefixes:
        m |= np.char.startswith(parts.astype(str), p)
    if side:
        m &= np.char.endswith(parts.astype(str), side)
    return m


def _pose(t, kind: str, rng: np.random.Generator) -> np.ndarray:
    idx = {n: i for i, n in enumerate(t.joint_names)}
    X, Y, Z = np.eye(3)
    natural = PoseSampler(t.joint_names, t.rest_joints)
    if kind in ("clean_apose", "arms_fused") or (kind in ("clothing", "noise_holes", "second_body")
                                                  and rng.random() < 0.5):
        pose = np.zeros((t.n_joints, 3))
    else:
        pose = natural.sample(rng)
    if kind == "arms_fused":  # arms down against the sides: A-pose arms are ~45 deg out
        for s, m in (("L", np.ones(3)), ("R", MIRROR)):
            pose[idx[f"upperarm01.{s}"]] = m * (rng.uniform(0.62, 0.72) * Y)
            pose[idx[f"lowerarm01.{s}"]] = 0
    elif kind == "crossed_arms":  # forearms folded across the chest
        e = elbow_axis(t.joint_names, t.rest_joints)
        for s, m, h in (("L", np.ones(3), 0.0), ("R", MIRROR, 0.06)):
            pose[idx[f"upperarm01.{s}"]] = 0
            _rot(pose, idx[f"upperarm01.{s}"], m * (0.55 * Y))
            _rot(pose, idx[f"upperarm01.{s}"], m * (-0.5 * X))
            pose[idx[f"lowerarm01.{s}"]] = m * ((2.0 + h) * e)
    elif kind == "crossed_legs":  # one leg crossed in front of the other, standing
        pose[idx["upperleg01.L"]] = 0.32 * Y
        _rot(pose, idx["upperleg01.L"], -0.25 * X)
        pose[idx["lowerleg01.L"]] = 0.15 * X
        pose[idx["upperleg01.R"]] = 0
        pose[idx["lowerleg01.R"]] = 0
    elif kind == "sitting":  # thighs forward, knees bent 90 deg (as on a chair, none scanned)
        for s, m in (("L", np.ones(3)), ("R", MIRROR)):
            pose[idx[f"upperleg01.{s}"]] = m * (-rng.uniform(1.35, 1.6) * X)
            pose[idx[f"lowerleg01.{s}"]] = m * (rng.uniform(1.35, 1.6) * X)
    elif kind == "curled_fingers":  # fists: every finger joint beyond the natural curl
        for s, m in (("L", np.ones(3)), ("R", MIRROR)):
            for f in range(2, 6):
                for k in (1, 2, 3):
                    a = t.rest_joints[idx[f"finger{f}-{k}.L"]]
                    b = t.rest_joints[idx[f"finger{f}-{min(k + 1, 3)}.L"]] if k < 3 else a + (
                        a - t.rest_joints[idx[f"finger{f}-2.L"]])
                    bone = (b - a) / np.linalg.norm(b - a)
                    palm = natural.palm_normal
                    axis = np.cross(bone, palm)
                    pose[idx[f"finger{f}-{k}.{s}"]] = m * (rng.uniform(1.3, 1.6) * axis / np.linalg.norm(axis))
    return pose


def _landmarks(tl, verts: np.ndarray, rng, drop: np.ndarray | None = None) -> dict:
    pts = tl.points(verts)
    names = list(tl.names)
    kinds = ["face" if n.startswith("face_") else "hand" if "_hand_" in n else "pose" for n in names]
    sigma = np.array([LANDMARK_NOISE_M[k] for k in kinds])
    pts = pts + rng.normal(size=pts.shape) * sigma[:, None]
    keep = np.ones(len(names), bool) if drop is None else ~drop
    return {"names": [n for n, k in zip(names, keep) if k], "points": pts[keep], "confidence": np.full(int(keep.sum()), 0.9)}


def swap_names(names, which: str) -> list[str]:
    """Left/right swapped landmark names: which = all | arms | legs | hands."""
    # limbs below the shoulders and hips: a torso swap is refused by the register stage itself
    arm = ("elbow", "wrist", "pinky", "index", "thumb")
    leg = ("knee", "ankle", "heel", "foot_index")
    out = []
    for n in names:
        side = "left_" if n.startswith("left_") else "right_" if n.startswith("right_") else None
        if side is None:
            out.append(n)
            continue
        base = n[len(side):]
        hit = (which == "all" or (which == "arms" and (base.startswith(arm) or base.startswith("hand_")))
               or (which == "legs" and base.startswith(leg)) or (which == "hands" and base.startswith("hand_")))
        out.append(("right_" if side == "left_" else "left_") + base if hit else n)
    return out


def _scan(verts, faces, colors, scanner, rng, keep_faces=None):
    """The ring scanner's merged, oriented samples: points (N, 3), normals (N, 3), raw hits."""
    cams = ring_cameras(verts.min(0), verts.max(0), azimuth0=rng.uniform(0, 2 * np.pi))
    samples = scan_samples(verts, faces, colors, cams, scanner, rng, keep_faces)
    pcd = merge_samples(samples, scanner)
    return np.asarray(pcd.points).copy(), np.asarray(pcd.normals).copy(), samples.points


def _box(lo, hi):
    import trimesh

    b = trimesh.creation.box(bounds=np.array([lo, hi]))
    return np.asarray(b.vertices), np.asarray(b.faces)


def _cylinder(centre, radius, height):
    import trimesh

    c = trimesh.creation.cylinder(radius=radius, height=height, sections=32)
    v = np.asarray(c.vertices) + centre
    return v, np.asarray(c.faces)


def _append(verts, faces, colors, v2, f2, c2):
    return (np.vstack([verts, v2]), np.vstack([faces, f2 + len(verts)]),
            np.vstack([colors, np.broadcast_to(c2, (len(v2), 3))]))


def make_case(t, tl, kind: str, index: int, seed: int = SEED) -> Case:
    """Case ``index`` of ``kind``: deterministic in (seed, kind, index)."""
    from pykdtree.kdtree import KDTree

    kind_no = list(COUNTS).index(kind)
    rng = np.random.default_rng([seed, kind_no, index])
    subject = make_subject(t, seed, 1000 * kind_no + index)
    pose = _pose(t, kind, rng)
    verts, _ = pose_template(t, subject.betas, pose, np.zeros(t.n_expression))
    truth = verts.copy()
    faces = t.faces[t.masks["surface"][t.faces].all(1)]
    colors = subject.colors
    scanner = BODY_SCANNER
    keep = None
    drop = None
    lm_rng = np.random.default_rng([seed, kind_no, index, 1])
    landmarks = _landmarks(tl, truth, lm_rng)
    if kind == "limb_cut":
        side = "L" if index % 2 == 0 else "R"
        if index // 2 % 2 == 0:
            cut = _group_mask(t, ("lowerarm", "wrist", "finger", "metacarpal"), side)
            words = ("elbow", "wrist", "pinky", "index", "thumb", "hand_")
        else:
            cut = _group_mask(t, ("lowerleg", "foot", "toe"), side)
            words = ("knee", "ankle", "heel", "foot_index")
        keep = ~cut[faces].any(1)
        pre = "left_" if side == "L" else "right_"
        names = tl.names
        drop = np.array([n.startswith(pre) and n[len(pre):].startswith(words) for n in names])
        landmarks = _landmarks(tl, truth, np.random.default_rng([seed, kind_no, index, 1]), drop)
    elif kind.startswith("lr_swap_"):
        landmarks["names"] = swap_names(landmarks["names"], kind[len("lr_swap_"):])
    elif kind == "noise_holes":
        scanner = replace(BODY_SCANNER, noise_m=0.006)
        centres = verts[rng.choice(np.flatnonzero(t.masks["surface"]), 8, replace=False)]
        radii = rng.uniform(0.06, 0.12, 8)
        fc = verts[faces].mean(1)
        keep = np.ones(len(faces), bool)
        for c, r in zip(centres, radii):
            keep &= np.linalg.norm(fc - c, axis=1) > r
    elif kind == "clothing":
        from ghum_pipe.ops.normals import vertex_normals

        shell = _group_mask(t, ("spine", "pelvis", "root", "upperleg", "clavicle"))
        n = vertex_normals(verts, t.faces)
        off = rng.uniform(0.02, 0.04)
        verts = verts + (shell * off)[:, None] * n
    elif kind == "second_body":
        what = ("pole", "stool", "person", "person")[index % 4]
        if what == "pole":  # a pole through the right hand, floor to above the head
            hand = truth[_group_mask(t, ("wrist", "metacarpal"), "R")].mean(0)
            v2, f2 = _cylinder(np.array([hand[0], hand[1], truth[:, 2].min() + 1.0]), 0.02, 2.0)
            verts, faces, colors = _append(verts, faces, colors, v2, f2, (150.0, 120.0, 90.0))
        elif what == "stool":  # a box touching the back of the calves
            lo, hi = truth.min(0), truth.max(0)
            back = truth[:, 1].max()
            v2, f2 = _box([lo[0] + 0.05, back - 0.01, lo[2]], [hi[0] - 0.05, back + 0.35, lo[2] + 0.45])
            verts, faces, colors = _append(verts, faces, colors, v2, f2, (80.0, 80.0, 80.0))
        else:  # another subject standing beside, shoulders touching
            other = make_subject(t, seed + 1, 1000 * kind_no + index)
            ov, _ = pose_template(t, other.betas, np.zeros((t.n_joints, 3)), np.zeros(t.n_expression))
            # its left hand overlaps the subject's right hand by 3 cm (the scan joins them)
            ov = ov + np.array([truth[:, 0].min() + 0.03 - ov[:, 0].max(), 0.0, 0.0])
            verts, faces, colors = _append(verts, faces, colors, ov, faces, other.colors)
    sv, sn, samples = _scan(verts, faces, colors, scanner, rng, keep)
    observed = KDTree(samples).query(truth, k=1)[0] < 0.005
    return Case(f"{kind}-{index}", kind, sv, sn, truth, landmarks, observed)


def write_case(case: Case, d: Path) -> Path:
    """d/scan.ply (oriented point cloud, metres, +Z up), d/landmarks.json, d/truth.npz; returns
    the scan's path. ``d`` is a scan's folder of a work dir (the register stage's inputs)."""
    import open3d as o3d

    from ghum_pipe.io.atomic import atomic_path, write_json, write_npz

    d.mkdir(parents=True, exist_ok=True)
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(case.scan_points)
    pcd.normals = o3d.utility.Vector3dVector(case.scan_normals)
    scan_path = d / "scan.ply"
    with atomic_path(scan_path) as tmp:
        o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False)
    lm = case.landmarks
    write_json(d / "landmarks.json", {"names": list(lm["names"]), "points": np.asarray(lm["points"]).tolist(),
                                      "confidence": np.asarray(lm["confidence"]).tolist(), "scan_kind": "body"})
    write_npz(d / "truth.npz", verts_m=case.truth_verts, observed=case.observed, kind=np.array(case.kind))
    return scan_path
