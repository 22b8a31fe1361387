"""The landmark core: a mesh in, named 3D landmarks out (metres, +Z up). No files.

Recipe (GHUM, Xu et al. 2020, Sec. 3.1, with MediaPipe detectors):

1. Render the body from a two-height ring of cameras (``cameras.body_ring``), skin-shaded.
2. Detect the 33 Pose landmarks in every view.
3. Resolve per-view left/right swaps (``triangulate.resolve_swaps``) and triangulate:
   surface landmarks from the views whose surface hits agree (a hidden point's guesses land
   elsewhere on the body), joint centres by DLT + RANSAC, then again without the views where
   the point lies deep behind the rendered surface; fix the global left/right labeling from
   body chirality (``triangulate.is_mirrored``).
4. Place close-up cameras on the face and each hand from those 3D points, keeping the views
   with a clear line of sight; FaceMesh on the head views, Hands on the hand views (a detected
   hand belongs to the side whose wrist the close-up was aimed at, and must have its wrist near
   that wrist's projection: MediaPipe's handedness assumes a mirrored selfie).
5. Triangulate face and hand points the same way; take Pose's eye, nose and mouth points from
   FaceMesh; snap surface landmarks (face, eyes, nose, mouth, heels, toes, fingertips) to the
   mesh, keep joint centres (and ears, which MediaPipe places inside the head's outline) as
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
from ghum_pipe.landmarks.renderers import make_renderer
from ghum_pipe.landmarks.triangulate import (
    confidence, is_mirrored, ransac_triangulate, resolve_swaps, surface_consensus,
)

# Pose landmarks on the skin (snapped to the surface); the rest are joint centres.
SURFACE_POSE = frozenset({
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "mouth_left", "mouth_right", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
})
# How far behind the rendered surface a joint centre may lie and still count as visible (metres):
# up to a limb radius.
INTERIOR_DEPTH_TOL_M = 0.15
# Surface hits of one landmark seen in two views agree within this (metres): a few pixels of
# detector noise at the image scale (body views ~4 mm/px, close-ups ~1 mm/px).
BODY_SURFACE_TOL_M = 0.04
CLOSEUP_SURFACE_TOL_M = 0.012
# A detection on the silhouette often lands a pixel or two off the body: take the nearest body
# pixel within this radius.
SEARCH_PX = 3


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
    # The raw body-ring Pose detections before any swap fix (for baselines and debugging):
    # P (V, 3, 4), uv (33, V, 2), score (33, V).
    raw_body: tuple = field(repr=False, default=())

    def point(self, name: str) -> np.ndarray:
        return self.points[self.names.index(name)]


class LandmarkGroup:
    """Observations of one landmark group across its views, triangulated together."""

    def __init__(self, names, kinds, thr_px, surface_tol_m, renderer: MeshRenderer):
        self.names, self.kinds, self.thr_px = tuple(names), tuple(kinds), thr_px
        self.surface_tol_m, self.renderer = surface_tol_m, renderer
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
        """(L, V) bool: X (L, 3) not hidden behind the rendered surface by more than a limb
        radius in each view (for joint centres, which lie inside the body)."""
        out = np.zeros((len(X), len(self.cams)), dtype=bool)
        for v, (cam, r) in enumerate(zip(self.cams, self.renders)):
            uv, z = cam.project(np.nan_to_num(X))
            out[:, v] = (z > 0) & (z <= r.depth_at(uv) + INTERIOR_DEPTH_TOL_M)
        return out & np.isfinite(X).all(1)[:, None]

    def surface_hits(self, uv: np.ndarray) -> np.ndarray:
        """(L, V, 3) the mesh points under the detections uv (L, V, 2); nan on background."""
        return np.stack([self.renderer.surface_points(r, np.nan_to_num(uv[:, v], nan=-1.0), SEARCH_PX)[0]
                         for v, r in enumerate(self.renders)], axis=1)

    def triangulate(self, min_score: float):
        """Robust 3D points: (L, 3) X (nan = not found), (L, V) inliers, (L,) RMS px, (L,)
        confidence. Surface landmarks: the views whose surface hits agree
        (``surface_consensus``), then DLT + RANSAC over them. Joint centres: DLT + RANSAC, then
        again without the views where the point lies deep behind the rendered surface."""
        P, uv, score = self.arrays()
        size = np.array([[c.width, c.height] for c in self.cams])  # (V, 2)
        inside = np.isfinite(uv).all(-1) & (uv >= 0).all(-1) & (uv < size).all(-1)
        valid = valid_all = inside & (score >= min_score)
        surface = np.array([k == "surface" for k in self.kinds])
        if surface.any():
            hits = self.surface_hits(uv)
            agree = surface_consensus(hits, valid, self.surface_tol_m)
            valid = np.where(surface[:, None], agree, valid)
        X, inl, rms = ransac_triangulate(P, uv, valid, self.thr_px, score)
        if (~surface).any():
            hidden = ~self.visible(X) & np.isfinite(X).all(1)[:, None]
            valid2 = valid & ~(hidden & ~surface[:, None])
            X, inl, rms = ransac_triangulate(P, uv, valid2, self.thr_px, score)
        if surface.any():
            # No two views agree on the surface (a fingertip at the silhouette in every view):
            # fall back to plain RANSAC over the 2D detections; the caller snaps to the surface.
            lost = surface & ~np.isfinite(X).all(1)
            if lost.any():
                X2, inl2, rms2 = ransac_triangulate(P, uv[lost], valid_all[lost], self.thr_px, score[lost])
                X[lost], inl[lost], rms[lost] = X2, inl2, rms2
        return X, inl, rms, confidence(inl, rms, self.thr_px, score)


def clear_views(renderer: MeshRenderer, cands: list[Camera], targets: np.ndarray, n: int) -> list[Camera]:
    """The first ``n`` candidate cameras from which all (K, 3) ``targets`` are in plain sight
    (nothing else of the mesh in between), topped up with the rest in order if too few are."""
    eyes = np.stack([c.center for c in cands])
    clear = np.all([renderer.unoccluded(eyes, t) for t in targets], axis=0)
    order = [i for i in range(len(cands)) if clear[i]] + [i for i in range(len(cands)) if not clear[i]]
    return [cands[i] for i in order[:n]]


def render_group(renderer, cams, group, detector, views, tag, timings, use_colors=True):
    """Render ``cams`` and run ``detector`` on each image; appends the views (tagged ``tag``) to
    ``views``, adds the time to ``timings`` and returns [(RenderResult, Detection2D | None)]."""
    out = []
    for cam in cams:
        t0 = time.perf_counter()
        r = renderer.render(cam, use_colors=use_colors)
        t1 = time.perf_counter()
        det = detector.detect(r.rgb) if r.mask.any() else None
        t2 = time.perf_counter()
        timings["render"] += t1 - t0
        timings["detect"] += t2 - t1
        views.append(View(tag, cam, r.rgb, () if det is None else det.names, None if det is None else det.uv))
        out.append((r, det))
    return out


# Pose face points and the FaceMesh points that are the same places (subject's left = +X):
# eye corners 362/263 (left) and 133/33 (right), iris centres 473/468, nose tip 1, mouth
# corners 291 (left) / 61 (right).
FACE_FOR_POSE = {
    "nose": 1, "left_eye_inner": 362, "left_eye": 473, "left_eye_outer": 263, "right_eye_inner": 133,
    "right_eye": 468, "right_eye_outer": 33, "mouth_left": 291, "mouth_right": 61,
}
HEAD_POSE = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
             "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right")


def _face_forward(p: dict) -> np.ndarray | None:
    """(3,) the way the face looks, from first-pass 3D pose points (None if unknown): mid-ears ->
    nose when both ears were found, else the shoulders' ``(left - right) x up`` (a person's
    forward, see ``triangulate.is_mirrored``)."""
    ok = lambda *names: all(np.isfinite(p[n]).all() for n in names)  # noqa: E731
    if ok("nose", "left_ear", "right_ear"):
        f = p["nose"] - (p["left_ear"] + p["right_ear"]) / 2
        if np.linalg.norm(f) > 0.02:
            return f
    if ok("left_shoulder", "right_shoulder"):
        return np.cross(p["left_shoulder"] - p["right_shoulder"], [0.0, 0.0, 1.0])
    return None


def with_views(error: LandmarkError, views: list[View]) -> LandmarkError:
    """``error`` carrying the views rendered before it (``error.views``), so that the stage can
    still write the contact sheet of a scan whose landmarks could not be found."""
    error.views = list(views)
    return error


def find_landmarks(verts, faces, colors, config, source="scan") -> FoundLandmarks:
    """Find body, face and hand landmarks on a mesh.

    verts (N, 3) metres +Z up; faces (F, 3); colors (N, 3) uint8 or None; config: a
    ``LandmarkConfig``; source: the file named in errors. Raises ``LandmarkError`` when no person
    is found in ``config.min_person_views`` body views.
    """
    timings = {"render": 0.0, "detect": 0.0, "triangulate": 0.0}
    t0 = time.perf_counter()
    renderer = make_renderer(verts, faces, colors, config.renderer, source)
    timings["render"] += time.perf_counter() - t0
    views: list[View] = []

    # 1-3. Body ring.
    ring = camera_rig.body_ring(verts, config.ring_views, config.upper_ring_views, fov_deg=config.fov_deg,
                                size=config.body_size)
    kinds = ["surface" if n in SURFACE_POSE else "interior" for n in POSE_NAMES]
    body = LandmarkGroup(POSE_NAMES, kinds, config.body_thr_frac * config.body_size, BODY_SURFACE_TOL_M, renderer)
    for r, det in render_group(renderer, ring, body, PoseDetector(), views, "body", timings, config.body_colors):
        body.add(r, None if det is None else det.uv, None if det is None else det.score)
    person = [v for v in views if v.uv is not None]
    if len(person) < config.min_person_views:
        raise with_views(LandmarkError(
            f"no person detected in {len(ring) - len(person)}/{len(ring)} views "
            f"(found in {len(person)}, need {config.min_person_views})", source,
            "Check the file is a whole human body, standing upright along its up axis (pass --up if not "
            "Z), and that --units is right; its contact sheet shows what the detector saw",
        ), views)
    t0 = time.perf_counter()
    P, uv, score = body.arrays()
    raw_body = (P, uv.copy(), score.copy())
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
    swapped = sum(v.flipped for v in views[: len(ring)])  # views whose labels we mirrored
    p = {n: X[i] for i, n in enumerate(POSE_NAMES)}

    # 4-5a. Head close-ups.
    forward = _face_forward(p)
    head_pts = np.array([p[n] for n in HEAD_POSE if np.isfinite(p[n]).all()]).reshape(-1, 3)
    if config.face and forward is not None and len(head_pts):
        cands = camera_rig.head_cameras(head_pts, forward, size=config.closeup_size)
        face_pts = np.array([p[n] for n in HEAD_POSE if "ear" not in n and np.isfinite(p[n]).all()]).reshape(-1, 3)
        cams = clear_views(renderer, cands, face_pts, config.face_views)  # ears are round the side
        face = LandmarkGroup([f"face_{i}" for i in range(N_FACE)], ["surface"] * N_FACE,
                      config.closeup_thr_frac * config.closeup_size, CLOSEUP_SURFACE_TOL_M, renderer)
        for r, det in render_group(renderer, cams, face, FaceDetector(), views, "head", timings,
                                    config.face_colors):
            face.add(r, None if det is None else det.uv, None if det is None else det.score)
        t0 = time.perf_counter()
        Xf, inl_f, rms_f, conf_f = face.triangulate(config.min_score)
        # FaceMesh on the close-ups places the eyes, nose and mouth far better than Pose on the
        # body views: take them from there (the template's definition does the same).
        for pose_name, face_id in FACE_FOR_POSE.items():
            if np.isfinite(Xf[face_id]).all():
                i = POSE_NAMES.index(pose_name)
                X[i], inl_n, rms[i], conf[i] = Xf[face_id], inl_f[face_id].sum(), rms_f[face_id], conf_f[face_id]
                used[0][i] = inl_n
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
            cands = camera_rig.hand_cameras(w, ix, pk, e, size=config.closeup_size)
            cams = clear_views(renderer, cands, camera_rig.hand_centre(w, ix, pk, e)[None], config.hand_views)
            hand = LandmarkGroup([f"{side}_hand_{i}" for i in range(N_HAND)], hand_kinds,
                          config.closeup_thr_frac * config.closeup_size, CLOSEUP_SURFACE_TOL_M, renderer)
            rendered = render_group(renderer, cams, hand, HandDetector(), views, f"{side}_hand", timings,
                                     config.body_colors)
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

    points, confs = np.concatenate(points), np.concatenate(confs)
    used, errs = np.concatenate(used), np.concatenate(errs)
    return snap_and_collect(renderer, names, points, confs, kinds_out, used, errs, timings, views=views,
                            person_views=len(person), body_views=len(ring), swapped_views=swapped,
                            raw_body=raw_body)


def snap_and_collect(renderer, names, points, confs, kinds, used, errs, timings, **extra) -> FoundLandmarks:
    """Snap the "surface" points onto the mesh (keeping their triangle and barycentrics), drop the
    points that could not be triangulated, and return them as :class:`FoundLandmarks`.

    points (L, 3) metres (non-finite = not found); confs, used, errs: (L,) per point; ``extra``:
    the remaining FoundLandmarks fields (views, counts, raw_body)."""
    t0 = time.perf_counter()
    keep = np.isfinite(points).all(1)
    tri_ids = np.full(len(names), -1, dtype=np.int64)
    bary = np.zeros((len(names), 3))
    surf = keep & (np.asarray(kinds) == "surface")
    if surf.any():
        points[surf], tri_ids[surf], bary[surf] = renderer.closest_points(points[surf])
    timings["triangulate"] += time.perf_counter() - t0
    idx = np.flatnonzero(keep)
    return FoundLandmarks(
        names=tuple(names[i] for i in idx), points=points[idx], confidence=confs[idx],
        kinds=tuple(kinds[i] for i in idx), views_used=used[idx], reproj_error_px=errs[idx],
        tri_ids=tri_ids[idx], bary=bary[idx], timings=timings, **extra,
    )
