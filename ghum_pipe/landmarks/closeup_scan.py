"""Landmarks on a head or hand close-up scan: the region alone, no body around it.

The body path (find.py) aims its close-up cameras from the body's triangulated Pose points. A
close-up scan has no body, so the cameras are placed from the region's own geometry, then the
same detectors and the same robust triangulation run (``find.LandmarkGroup``: surface consensus, DLT +
RANSAC), and the output has the same names as on a body scan, so the register stage's
``match_landmarks`` pairs them with the template's definitions unchanged:

* head (metres, +Z up from ``io``: neck to crown): pass 1, a ring of ``HEAD_RING`` views around
  the head at eye level, FaceMesh in each; the triangulated face gives the face's direction.
  Pass 2, the body path's head cameras (``cameras.head_cameras``) aimed from that direction,
  the first ``config.face_views`` with a clear line of sight; FaceMesh points ``face_<i>`` and
  Pose's face names (nose, eyes, mouth) from them (``find.FACE_FOR_POSE``), as on a body.
* hand (no up axis needed): the open wrist cut gives the finger direction (cut -> centroid,
  ``io.detect.head_up_from_cut`` works for any region cut from a body), the smallest principal
  axis the palm normal; ``HAND_VIEW_ANGLES`` views around the finger direction, fingers up in
  the image as MediaPipe Hands expects. A detection counts only if its wrist (point 0) lies
  near the projected wrist cut (else it is a hand read the wrong way round). Names
  ``left_hand_<i>`` / ``right_hand_<i>`` from the scan's kind.
"""

from __future__ import annotations

import time

import numpy as np

from ghum_pipe.errors import LandmarkError
from ghum_pipe.landmarks import cameras as camera_rig
from ghum_pipe.landmarks.detect import HAND_TIPS, N_FACE, N_HAND, FaceDetector, HandDetector
from ghum_pipe.landmarks.find import (
    CLOSEUP_SURFACE_TOL_M, FACE_FOR_POSE, FoundLandmarks, LandmarkGroup, View, clear_views, render_group,
    snap_and_collect, with_views,
)
from ghum_pipe.landmarks.renderers import make_renderer

HEAD_RING = 8  # pass-1 views around the head (FaceMesh needs roughly frontal views: 3 of 8 see the face)
HEAD_RING_ELEVATION_DEG = 10.0
MIN_FACE_POINTS = 100  # of FaceMesh's 478 triangulated in pass 1, else "no face found"
HAND_VIEW_ANGLES = (0, 180, 90, -90, 45, -45, 135, -135)  # about the finger direction, from the palm normal
# framed height of a hand view: 0.4 m (the hand ~1/3 of the image) found MediaPipe Hands in more
# views than the body path's 0.3 m (23 vs 14 of 32 on 4 synthetic hands) and halved the curled
# fingers' registration error (region p95 8.6 / 8.3 mm vs 16.8 / 11.8 mm on the two worst)
HAND_EXTENT_M = 0.40
MIN_HAND_VIEWS = 2  # views with the hand detected, else LandmarkError
WRIST_TOL_FRAC = 0.25  # a detection's wrist within this fraction of the image of the wrist cut


def find_closeup_landmarks(verts, faces, colors, kind: str, config, source="scan") -> FoundLandmarks:
    """Face or hand landmarks on a close-up mesh.

    verts (N, 3) metres (+Z up for a head); faces (F, 3); colors (N, 3) uint8 or None; kind
    "head" | "hand_left" | "hand_right"; config: a ``LandmarkConfig``. Raises ``LandmarkError``
    when the face/hand is not found in enough views.
    """
    timings = {"render": 0.0, "detect": 0.0, "triangulate": 0.0}
    t0 = time.perf_counter()
    renderer = make_renderer(verts, faces, colors, config.renderer, source)
    timings["render"] += time.perf_counter() - t0
    views: list[View] = []
    if kind == "head":
        names, X, inl, rms, conf, kinds, n_seen, n_views = _head(renderer, verts, config, views, timings, source)
    elif kind in ("hand_left", "hand_right"):
        names, X, inl, rms, conf, kinds, n_seen, n_views = _hand(renderer, verts, faces, kind, config, views,
                                                                 timings, source)
    else:
        raise ValueError(f"find_closeup_landmarks: kind must be head, hand_left or hand_right, not {kind!r}")
    return snap_and_collect(renderer, names, X, conf, kinds, inl.sum(1), rms, timings, views=views,
                            person_views=n_seen, body_views=n_views, swapped_views=0)


def _face_pass(renderer, cams, config, views, timings) -> tuple[LandmarkGroup, tuple]:
    """FaceMesh on the views ``cams`` -> the face group and its triangulation (X, inliers, rms, conf)."""
    face = LandmarkGroup([f"face_{i}" for i in range(N_FACE)], ["surface"] * N_FACE,
                  config.closeup_thr_frac * config.closeup_size, CLOSEUP_SURFACE_TOL_M, renderer)
    for r, det in render_group(renderer, cams, face, FaceDetector(), views, "head", timings, config.face_colors):
        face.add(r, None if det is None else det.uv, None if det is None else det.score)
    t0 = time.perf_counter()
    tri = face.triangulate(config.min_score)
    timings["triangulate"] += time.perf_counter() - t0
    return face, tri


def _head(renderer, verts, config, views, timings, source):
    """Two passes of FaceMesh (see the module docstring) -> names, X (L, 3), inliers, rms, conf, kinds."""
    lo, hi = verts.min(0), verts.max(0)
    centre = (lo + hi) / 2
    extent = float(np.max(hi - lo))
    ring = []
    for k in range(HEAD_RING):
        az = 2 * np.pi * k / HEAD_RING
        el = np.deg2rad(HEAD_RING_ELEVATION_DEG)
        d = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
        ring.append(camera_rig.closeup(centre, d, 1.1 * extent, size=config.closeup_size))
    _, (X1, _, _, _) = _face_pass(renderer, ring, config, views, timings)
    n_seen = sum(v.uv is not None for v in views)
    found = np.isfinite(X1).all(1)
    if found.sum() < MIN_FACE_POINTS:
        raise with_views(LandmarkError(f"no face found on the head close-up (FaceMesh in {n_seen}/{len(ring)} views, "
                                       f"{int(found.sum())} points triangulated)", source,
                                       "Check the scan is a head with its face, upright (pass --up: the file axis "
                                       "from the neck to the crown) and that --units is right"), views)
    face_centre = X1[found].mean(0)
    forward = face_centre - (lo + hi) / 2
    forward[2] = 0.0
    if np.linalg.norm(forward) < 1e-6:
        forward = X1[1] - face_centre if found[1] else np.array([0.0, -1.0, 0.0])
    forward /= np.linalg.norm(forward)
    # pass 2: the body path's face close-ups, aimed as if from Pose's head points
    cands = camera_rig.head_cameras(face_centre[None] + 0.03 * forward, forward, size=config.closeup_size)
    cams = clear_views(renderer, cands, X1[[i for i in FACE_FOR_POSE.values() if found[i]]].reshape(-1, 3),
                        config.face_views)
    face, (X, inl, rms, conf) = _face_pass(renderer, cams, config, views, timings)
    # Pose's face names from FaceMesh, as the body path does
    pose_ids = list(FACE_FOR_POSE.values())
    names = list(face.names) + list(FACE_FOR_POSE)
    return (names, np.concatenate([X, X[pose_ids]]), np.concatenate([inl, inl[pose_ids]]),
            np.concatenate([rms, rms[pose_ids]]), np.concatenate([conf, conf[pose_ids]]),
            list(face.kinds) + ["surface"] * len(pose_ids), sum(v.uv is not None for v in views),
            len(ring) + len(cams))


def hand_axes(verts: np.ndarray, faces: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(centre, finger_dir, palm_normal, from_cut) of a hand close-up: the area-weighted
    centroid (3,) metres, the unit direction from the wrist cut to the centroid, and the
    smallest principal axis (a hand is flat). Without a cut (a closed mesh, e.g. a meshed point
    cloud) the longest principal axis is taken and ``from_cut`` is False: its sign is a guess."""
    from ghum_pipe.io.detect import head_up_from_cut, principal_axes, vertex_weights

    w = vertex_weights(verts, faces)
    pa = principal_axes(verts, w)
    centre = pa.mean
    finger = head_up_from_cut(verts, faces, w)
    from_cut = finger is not None
    if finger is None:
        finger = pa.axes[:, 0]
    finger = finger / np.linalg.norm(finger)
    normal = pa.axes[:, 2] - (pa.axes[:, 2] @ finger) * finger
    normal /= np.linalg.norm(normal)
    return centre, finger, normal, from_cut


def _hand(renderer, verts, faces, kind, config, views, timings, source):
    """Hands on views around the hand (see the module docstring)."""
    side = "left" if kind == "hand_left" else "right"
    centre, finger, normal, _ = hand_axes(verts, faces)
    try:
        return _hand_views(renderer, verts, centre, finger, normal, side, config, views, timings, source)
    except LandmarkError:
        # the finger direction's sign is a guess without a clean wrist cut (a meshed point
        # cloud's trimmed rim runs round the fingertips too): try the other way before giving up
        return _hand_views(renderer, verts, centre, -finger, normal, side, config, views, timings, source)


def _hand_views(renderer, verts, centre, finger, normal, side, config, views, timings, source):
    """Render, detect and triangulate one hand with the fingers along ``finger``."""
    wrist = centre + ((verts - centre) @ finger).min() * finger
    dirs = [camera_rig.rotate_about(normal, finger, np.deg2rad(a)) for a in HAND_VIEW_ANGLES]
    cams = [camera_rig.closeup(centre, d, HAND_EXTENT_M, size=config.closeup_size, up=finger) for d in dirs]
    hand_kinds = ["surface" if i in HAND_TIPS else "interior" for i in range(N_HAND)]
    hand = LandmarkGroup([f"{side}_hand_{i}" for i in range(N_HAND)], hand_kinds,
                  config.closeup_thr_frac * config.closeup_size, CLOSEUP_SURFACE_TOL_M, renderer)
    rendered = render_group(renderer, cams, hand, HandDetector(), views, f"{side}_hand", timings, config.body_colors)
    n_seen = 0
    for k, (r, det) in enumerate(rendered):
        wrist_uv, _ = r.camera.project(wrist[None])
        ok = det is not None and np.linalg.norm(det.uv[0] - wrist_uv[0]) < WRIST_TOL_FRAC * config.closeup_size
        hand.add(r, det.uv if ok else None, det.score if ok else None)
        n_seen += ok
        if not ok:
            views[len(views) - len(cams) + k].uv = None
    if n_seen < MIN_HAND_VIEWS:
        raise with_views(LandmarkError(f"no {side} hand found on the close-up (MediaPipe Hands in {n_seen}/{len(cams)} "
                                       "views)", source, "Check the scan is one hand cut at the wrist, its kind "
                                       "(hand_left/hand_right) and --units"), views)
    t0 = time.perf_counter()
    X, inl, rms, conf = hand.triangulate(config.min_score)
    timings["triangulate"] += time.perf_counter() - t0
    return list(hand.names), X, inl, rms, conf, hand_kinds, n_seen, len(cams)
