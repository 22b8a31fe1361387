"""The landmark core: a mesh in, named 3D landmarks out (metres, +Z up). No files.

Recipe (GHUM, Xu et al. 2020, Sec. 3.1, with MediaPipe detectors):

1. Render the body from a two-height ring of cameras (``cameras.body_ring``).
2. Detect the 33 Pose landmarks in every view.
3. Resolve per-view left/right swaps, triangulate (DLT + RANSAC over views), drop observations
   the render shows to be occluded (projected depth behind the depth buffer) and triangulate
   again; fix the global left/right labeling from body chirality.
4. Place close-up cameras on the head and each hand from those 3D points; FaceMesh on the head
   views, Hands on the hand views (a detected hand belongs to the side whose wrist the close-up
   was aimed at, and must have its wrist near that wrist's projection).
5. Triangulate face and hand points the same way; snap surface landmarks (face, eyes, ears,
   mouth, heels, toes, fingertips) to the mesh, keep interior ones (joint centres) as
   triangulated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ghum_pipe.errors import LandmarkError
from ghum_pipe.landmarks import cameras as camera_rig
from ghum_pipe.landmarks.detect import (
    HAND_TIPS, N_FACE, N_HAND, POSE_MIRROR, POSE_NAMES, FaceDetector, HandDetector, PoseDetector,
)
from ghum_pipe.landmarks.render import Camera, MeshRenderer, RenderResult
from ghum_pipe.landmarks.triangulate import confidence, is_mirrored, ransac_triangulate, resolve_swaps

# Pose landmarks on the skin (snapped to the surface); the rest are joint centres.
SURFACE_POSE = frozenset({
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
})
# How far behind the rendered surface a landmark may lie and still count as visible (metres):
# surface points sit on it; joint centres lie up to a limb radius inside.
SURFACE_DEPTH_TOL_M = 0.03
INTERIOR_DEPTH_TOL_M = 0.15


@dataclass
class View:
    """One rendered view and what was detected in it (for the contact sheet)."""

    group: str  # "body", "head", "left_hand", "right_hand"
    camera: Camera
    rgb: np.ndarray
    names: tuple[str, ...] = ()
    uv: np.ndarray | None = None  # (K, 2) detected, after swap resolution
    flipped: bool = False


@dataclass(frozen=True, eq=False)
class FoundLandmarks:
    """Landmarks found on one mesh. L landmarks, metres, +Z up (the package frame).

    points (L, 3); confidence (L,) in [0, 1]; kinds (L,) surface|interior; views_used (L,) int;
    reproj_error_px (L,) RMS over inlier views; tri_ids (L,) mesh triangle of a snapped point
    (-1 for interior points) and bary (L, 3) its barycentric weights.
    """

    names: tuple[str, ...]
    points: np.ndarray
    confidence: np.ndarray
    kinds: tuple[str, ...]
    views_used: np.ndarray
    reproj_error_px: np.ndarray
    tri_ids: np.ndarray
    bary: np.ndarray
    views: list = field(repr=False, default_factory=list)
    person_views: int = 0
    body_views: int = 0
    swapped_views: int = 0
    timings: dict = field(default_factory=dict)

    def point(self, name: str) -> np.ndarray:
        return self.points[self.names.index(name)]


class _Group:
    """Observations of one landmark group across its views, triangulated together."""

    def __init__(self, names, kinds, thr_px):
        self.names, self.kinds, self.thr_px = tuple(names), tuple(kinds), thr_px
        self.cams: list[Camera] = []
        self.renders: list[RenderResult] = []
        self.uv: list[np.ndarray] = []
        self.score: list[np.ndarray] = []

    def add(self, render: RenderResult, uv=None, score=None):
        L = len(self.names)
        self.cams.append(render.camera)
        self.renders.append(render)
        self.uv.append(np.full((L, 2), np.nan) if uv is None else uv)
        self.score.append(np.zeros(L) if score is None else score)

    def arrays(self):
        P = np.stack([c.P for c in self.cams])
        return P, np.stack(self.uv, 1), np.stack(self.score, 1)  # (V,3,4), (L,V,2), (L,V)

    def visible(self, X: np.ndarray) -> np.ndarray:
        """(L, V) bool: X (L, 3) not hidden behind the rendered surface in each view."""
        tol = np.array([SURFACE_DEPTH_TOL_M if k == "surface" else INTERIOR_DEPTH_TOL_M for k in self.kinds])
        out = np.zeros((len(X), len(self.cams)), dtype=bool)
        for v, (cam, r) in enumerate(zip(self.cams, self.renders)):
            uv, z = cam.project(np.nan_to_num(X))
            out[:, v] = (z > 0) & (z <= r.depth_at(uv) + tol)
        return out & np.isfinite(X).all(1)[:, None]

    def triangulate(self, min_score: float):
        P, uv, score = self.arrays()
        h = self.cams[0].height
        inside = np.isfinite(uv).all(-1) & (uv[..., 0] >= 0) & (uv[..., 1] >= 0)
        inside &= (uv[..., 0] < self.cams[0].width) & (uv[..., 1] < h)
        valid = inside & (score >= min_score)
        X, inl, rms = ransac_triangulate(P, uv, valid, self.thr_px, score)
        # Second pass without observations of points the render shows to be hidden.
        valid2 = valid & (self.visible(X) | ~np.isfinite(X).all(1)[:, None])
        X, inl, rms = ransac_triangulate(P, uv, valid2, self.thr_px, score)
        return X, inl, rms, confidence(inl, rms, self.thr_px, score)


def _render_group(renderer, cams, group, detector, views, tag, timings):
    out = []
    for cam in cams:
        t0 = time.perf_counter()
        r = renderer.render(cam)
        t1 = time.perf_counter()
        det = detector.detect(r.rgb) if r.mask.any() else None
        t2 = time.perf_counter()
        timings["render"] += t1 - t0
        timings["detect"] += t2 - t1
        views.append(View(tag, cam, r.rgb, () if det is None else det.names, None if det is None else det.uv))
        out.append((r, det))
    return out


def find_landmarks(verts, faces, colors, config, source="scan") -> FoundLandmarks:
    """Find body, face and hand landmarks on a mesh.

    verts (N, 3) metres +Z up; faces (F, 3); colors (N, 3) uint8 or None; config: a
    ``LandmarkConfig``; source: the file named in errors. Raises ``LandmarkError`` when no person
    is found in ``config.min_person_views`` body views.
    """
    timings = {"render": 0.0, "detect": 0.0, "triangulate": 0.0}
    t0 = time.perf_counter()
    renderer = MeshRenderer(verts, faces, colors)
    timings["render"] += time.perf_counter() - t0
    views: list[View] = []

    # 1-3. Body ring.
    ring = camera_rig.body_ring(verts, config.ring_views, config.upper_ring_views, fov_deg=config.fov_deg,
                                size=config.body_size)
    kinds = ["surface" if n in SURFACE_POSE else "interior" for n in POSE_NAMES]
    body = _Group(POSE_NAMES, kinds, config.body_thr_frac * config.body_size)
    for r, det in _render_group(renderer, ring, body, PoseDetector(), views, "body", timings):
        body.add(r, None if det is None else det.uv, None if det is None else det.score)
    person = [v for v in views if v.uv is not None]
    if len(person) < config.min_person_views:
        raise LandmarkError(
            f"no person detected in {len(ring) - len(person)}/{len(ring)} views "
            f"(found in {len(person)}, need {config.min_person_views})", source,
            "check the file is a whole human body, standing upright along its up axis (pass --up if not "
            "Z), and that --units is right",
        )
    t0 = time.perf_counter()
    P, uv, score = body.arrays()
    flips = resolve_swaps(P, uv, score >= config.min_score, POSE_MIRROR, body.thr_px)
    for v in np.flatnonzero(flips):
        body.uv[v], body.score[v] = body.uv[v][POSE_MIRROR], body.score[v][POSE_MIRROR]
        views[v].uv, views[v].flipped = body.uv[v], True
    X, inl, rms, conf = body.triangulate(config.min_score)
    needed = [POSE_NAMES.index(n) for n in ("nose", "left_ear", "right_ear", "left_shoulder",
                                            "right_shoulder", "left_hip", "right_hip")]
    if np.isfinite(X[needed]).all() and is_mirrored(*X[needed]):
        X, inl, rms, conf = X[POSE_MIRROR], inl[POSE_MIRROR], rms[POSE_MIRROR], conf[POSE_MIRROR]
        for v in range(len(ring)):
            views[v].flipped = not views[v].flipped
            if views[v].uv is not None:
                views[v].uv = views[v].uv[POSE_MIRROR]
    timings["triangulate"] += time.perf_counter() - t0
    names, points, confs, kinds_out, used, errs = list(POSE_NAMES), [X], [conf], list(kinds), [inl.sum(1)], [rms]
    swapped = int(min(flips.sum(), (~flips).sum()))
    p = {n: X[i] for i, n in enumerate(POSE_NAMES)}

    # 4-5a. Head close-ups.
    if config.face and all(np.isfinite(p[n]).all() for n in ("nose", "left_ear", "right_ear")):
        cams = camera_rig.head_cameras(p["nose"], p["left_ear"], p["right_ear"], size=config.closeup_size)
        face = _Group([f"face_{i}" for i in range(N_FACE)], ["surface"] * N_FACE,
                      config.closeup_thr_frac * config.closeup_size)
        for r, det in _render_group(renderer, cams, face, FaceDetector(), views, "head", timings):
            face.add(r, None if det is None else det.uv, None if det is None else det.score)
        t0 = time.perf_counter()
        Xf, inl_f, rms_f, conf_f = face.triangulate(config.min_score)
        names += face.names
        points.append(Xf), confs.append(conf_f), kinds_out.extend(face.kinds), used.append(inl_f.sum(1)), errs.append(rms_f)
        timings["triangulate"] += time.perf_counter() - t0

    # 4-5b. Hand close-ups: the hand nearest the aimed-at wrist.
    if config.hands:
        hand_kinds = ["surface" if i in HAND_TIPS else "interior" for i in range(N_HAND)]
        for side in ("left", "right"):
            w, e, ix, pk = (p[f"{side}_{n}"] for n in ("wrist", "elbow", "index", "pinky"))
            if not all(np.isfinite(a).all() for a in (w, e, ix, pk)):
                continue
            cams = camera_rig.hand_cameras(w, ix, pk, e, size=config.closeup_size)
            hand = _Group([f"{side}_hand_{i}" for i in range(N_HAND)], hand_kinds,
                          config.closeup_thr_frac * config.closeup_size)
            rendered = _render_group(renderer, cams, hand, HandDetector(), views, f"{side}_hand", timings)
            for k, (r, det) in enumerate(rendered):
                wrist_uv, _ = r.camera.project(w[None])
                ok = det is not None and np.linalg.norm(det.uv[0] - wrist_uv[0]) < 0.25 * config.closeup_size
                hand.add(r, det.uv if ok else None, det.score if ok else None)
                if not ok:  # another hand, or none: not this side's
                    views[len(views) - len(cams) + k].uv = None
            t0 = time.perf_counter()
            Xh, inl_h, rms_h, conf_h = hand.triangulate(config.min_score)
            names += hand.names
            points.append(Xh), confs.append(conf_h), kinds_out.extend(hand_kinds), used.append(inl_h.sum(1)), errs.append(rms_h)
            timings["triangulate"] += time.perf_counter() - t0

    # Snap surface points to the mesh; drop what could not be triangulated.
    t0 = time.perf_counter()
    points, confs = np.concatenate(points), np.concatenate(confs)
    used, errs = np.concatenate(used), np.concatenate(errs)
    keep = np.isfinite(points).all(1)
    tri_ids = np.full(len(names), -1, dtype=np.int64)
    bary = np.zeros((len(names), 3))
    surf = keep & (np.array(kinds_out) == "surface")
    if surf.any():
        points[surf], tri_ids[surf], bary[surf] = renderer.closest_points(points[surf])
    timings["triangulate"] += time.perf_counter() - t0
    idx = np.flatnonzero(keep)
    return FoundLandmarks(
        names=tuple(names[i] for i in idx), points=points[idx], confidence=confs[idx],
        kinds=tuple(kinds_out[i] for i in idx), views_used=used[idx], reproj_error_px=errs[idx],
        tri_ids=tri_ids[idx], bary=bary[idx], views=views, person_views=len(person),
        body_views=len(ring), swapped_views=swapped, timings=timings,
    )
