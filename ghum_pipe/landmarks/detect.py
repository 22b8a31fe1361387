"""2D landmark detectors behind one small interface: ``detector.detect(rgb) -> Detection2D``.

MediaPipe (Lugaresi et al. 2019) ships three CPU models in its 0.10.21 wheel, used here as GHUM
uses its keypoint detectors on scan renders:

- Pose (BlazePose, Bazarevsky et al. 2020), ``model_complexity=1`` (the heavy model is not in the
  wheel): 33 body landmarks with a per-landmark visibility score;
- FaceMesh with ``refine_landmarks=True`` (Kartynnik et al. 2019 + attention mesh): 478 points
  (468 + 10 iris), run on head close-ups;
- Hands (Zhang et al. 2020): 21 points per hand, run on hand close-ups.

Creating a MediaPipe graph costs far more than running it, so each graph is created once per
process and reused (``static_image_mode=True``: every call is an independent image, no tracking
state leaks between views or scans). A lock guards each graph: they are not thread-safe and Dask
workers may run several scans in threads.

Hands: MediaPipe's handedness label assumes a mirrored selfie image and is unreliable on
renders; callers assign a detected hand to left/right by where it is (the close-up was aimed at
one of the body's triangulated wrists), so ``HandDetector.detect`` returns the hand nearest the
image centre with neutral names ``hand_<i>``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# MediaPipe's own lower-case Pose names, in its index order (PoseLandmark enum).
POSE_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
N_FACE = 478
N_HAND = 21
HAND_TIPS = (4, 8, 12, 16, 20)


def mirror_name(name: str) -> str:
    """The name with left/right exchanged (``left_knee`` <-> ``right_knee``, ``mouth_left`` <->
    ``mouth_right``); names without a side are returned unchanged."""
    for a, b in (("left", "right"), ("right", "left")):
        if name.startswith(a + "_"):
            return b + name[len(a):]
        if name.endswith("_" + a):
            return name[: -len(a)] + b
    return name


POSE_MIRROR = np.array([POSE_NAMES.index(mirror_name(n)) for n in POSE_NAMES])


@dataclass(frozen=True, eq=False)
class Detection2D:
    """One detected instance in one image: names (K,), uv (K, 2) pixel coordinates (pixel
    centres at +0.5, x right, y down), score (K,) in [0, 1] (MediaPipe visibility for Pose,
    the instance score for FaceMesh/Hands)."""

    names: tuple[str, ...]
    uv: np.ndarray
    score: np.ndarray


class Detector(Protocol):
    """Anything that finds named 2D landmarks on an RGB uint8 (H, W, 3) image, or None."""

    def detect(self, rgb: np.ndarray) -> Detection2D | None: ...


_GRAPHS: dict[str, tuple[object, threading.Lock]] = {}
_GRAPHS_LOCK = threading.Lock()


def _graph(kind: str):
    """The process-wide MediaPipe graph of ``kind`` and its lock, created on first use."""
    with _GRAPHS_LOCK:
        if kind not in _GRAPHS:
            import mediapipe as mp

            if kind == "pose":
                g = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                           min_detection_confidence=0.3)
            elif kind == "face":
                g = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                                    max_num_faces=1, min_detection_confidence=0.3)
            elif kind == "hands":
                g = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                             min_detection_confidence=0.3)
            else:
                raise ValueError(f"unknown MediaPipe graph {kind!r}")
            _GRAPHS[kind] = (g, threading.Lock())
        return _GRAPHS[kind]


def _run(kind: str, rgb: np.ndarray):
    graph, lock = _graph(kind)
    with lock:
        return graph.process(np.ascontiguousarray(rgb))


def _to_px(landmarks, width: int, height: int) -> np.ndarray:
    return np.array([[lm.x * width, lm.y * height] for lm in landmarks], dtype=np.float64)


class PoseDetector:
    """MediaPipe Pose: 33 body landmarks named as ``POSE_NAMES``."""

    names = POSE_NAMES

    def detect(self, rgb: np.ndarray) -> Detection2D | None:
        res = _run("pose", rgb)
        if res.pose_landmarks is None:
            return None
        lms = res.pose_landmarks.landmark
        h, w = rgb.shape[:2]
        score = np.array([lm.visibility for lm in lms], dtype=np.float64)
        return Detection2D(POSE_NAMES, _to_px(lms, w, h), np.clip(score, 0.0, 1.0))


class FaceDetector:
    """MediaPipe FaceMesh (refined): 478 points named ``face_<i>``."""

    names = tuple(f"face_{i}" for i in range(N_FACE))

    def detect(self, rgb: np.ndarray) -> Detection2D | None:
        res = _run("face", rgb)
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        uv = _to_px(res.multi_face_landmarks[0].landmark, w, h)
        return Detection2D(self.names, uv, np.ones(len(uv)))


class HandDetector:
    """MediaPipe Hands: the hand nearest the image centre, 21 points named ``hand_<i>``."""

    names = tuple(f"hand_{i}" for i in range(N_HAND))

    def detect(self, rgb: np.ndarray) -> Detection2D | None:
        res = _run("hands", rgb)
        if not res.multi_hand_landmarks:
            return None
        h, w = rgb.shape[:2]
        centre = np.array([w / 2, h / 2])
        best = None
        for lms, handedness in zip(res.multi_hand_landmarks, res.multi_handedness):
            uv = _to_px(lms.landmark, w, h)
            d = np.linalg.norm(uv.mean(0) - centre)
            if best is None or d < best[0]:
                best = (d, uv, handedness.classification[0].score)
        _, uv, score = best
        return Detection2D(self.names, uv, np.full(len(uv), float(score)))
