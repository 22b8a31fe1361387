"""Pair scan landmarks (landmarks.json) with their definitions on the template.

A template landmark is a fixed convex combination of template vertices (``vertex_ids (L, K)``,
``weights (L, K)``), so it moves with the template through shape, pose and free-form offsets.
The definitions come from the landmark stage run on the template
(``ghum_pipe.landmarks.template_landmarks.load_template_landmarks``); when that module is not
available, :func:`fallback_template_landmarks` builds an approximate set from Anny's COCO
regressor and the skeleton (good enough for tests on synthetic data, where the same definition
is applied to the ground-truth vertices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ghum_pipe.errors import RegistrationError

# MediaPipe pose names that Anny's COCO regressor defines (same anatomical point).
_POSE_FROM_COCO = {
    "nose": "nose", "left_ear": "left_ear", "right_ear": "right_ear",
    "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow",
    "left_wrist": "left_wrist", "right_wrist": "right_wrist",
    "left_hip": "left_hip", "right_hip": "right_hip", "left_knee": "left_knee", "right_knee": "right_knee",
    "left_ankle": "left_ankle", "right_ankle": "right_ankle", "left_heel": "left_heel", "right_heel": "right_heel",
    "left_foot_index": "left_big_toe", "right_foot_index": "right_big_toe",
}
# MediaPipe hand landmark i -> Anny joint (thumb = finger1, index = finger2, ...); tips are ends.
_HAND_JOINTS = {0: "wrist"}
for _f in range(5):
    for _k in range(3):
        _HAND_JOINTS[1 + 4 * _f + _k] = f"finger{_f + 1}-{_k + 1}"
_HAND_TIPS = {4 + 4 * f: f"finger{f + 1}-3" for f in range(5)}


@dataclass(frozen=True)
class TemplateLandmarkSet:
    """Landmark definitions on the template: ``points(verts) = sum_k weights[l,k] verts[ids[l,k]]``."""

    names: tuple[str, ...]
    vertex_ids: np.ndarray  # (L, K) int64
    weights: np.ndarray  # (L, K) float64, rows sum to 1
    kinds: tuple[str, ...]  # (L,) "pose" | "face" | "hand"

    def points(self, verts):
        """(V, 3) or (B, V, 3) numpy/torch -> (L, 3) / (B, L, 3)."""
        if isinstance(verts, np.ndarray):
            return np.einsum("lk,...lkc->...lc", self.weights, verts[..., self.vertex_ids, :])
        import torch

        w = torch.as_tensor(self.weights, dtype=verts.dtype, device=verts.device)
        ids = torch.as_tensor(self.vertex_ids, device=verts.device)
        return torch.einsum("lk,...lkc->...lc", w, verts[..., ids, :])


@dataclass(frozen=True)
class LandmarkPairs:
    """Scan landmarks matched by name to template landmark definitions (internal metres)."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    vertex_ids: np.ndarray  # (L, K)
    weights: np.ndarray  # (L, K)
    targets: np.ndarray  # (L, 3) scan landmark positions, metres, +Z up
    confidence: np.ndarray  # (L,)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, mask: np.ndarray) -> "LandmarkPairs":
        m = np.asarray(mask, dtype=bool)
        pick = lambda seq: tuple(x for x, k in zip(seq, m) if k)  # noqa: E731
        return LandmarkPairs(pick(self.names), pick(self.kinds), self.vertex_ids[m], self.weights[m],
                             self.targets[m], self.confidence[m])

    def template_points(self, verts):
        return TemplateLandmarkSet(self.names, self.vertex_ids, self.weights, self.kinds).points(verts)


def landmark_kind(name: str) -> str:
    if name.startswith("face_"):
        return "face"
    if name.startswith(("left_hand_", "right_hand_")):
        return "hand"
    return "pose"


def match_landmarks(
    names, points: np.ndarray, confidence: np.ndarray | None, template_landmarks, min_confidence: float = 0.0,
) -> LandmarkPairs:
    """Keep the scan landmarks (internal metres) that the template defines and that are confident."""
    index = {n: i for i, n in enumerate(template_landmarks.names)}
    conf = np.ones(len(names)) if confidence is None else np.asarray(confidence, dtype=np.float64)
    keep = [k for k, n in enumerate(names) if n in index and conf[k] >= min_confidence
            and np.isfinite(points[k]).all()]
    rows = [index[names[k]] for k in keep]
    kinds = tuple(landmark_kind(names[k]) for k in keep)
    return LandmarkPairs(
        names=tuple(names[k] for k in keep), kinds=kinds,
        vertex_ids=np.asarray(template_landmarks.vertex_ids)[rows].astype(np.int64),
        weights=np.asarray(template_landmarks.weights, dtype=np.float64)[rows],
        targets=np.asarray(points, dtype=np.float64)[keep].reshape(-1, 3), confidence=conf[keep],
    )


def load_template_landmark_set(template):
    """The landmark stage's template landmarks if that module exists, else the fallback."""
    try:
        from ghum_pipe.landmarks.template_landmarks import load_template_landmarks
    except ImportError:
        return fallback_template_landmarks(template)
    return load_template_landmarks(template)


def fallback_template_landmarks(template, k: int = 8, n_face: int = 60) -> TemplateLandmarkSet:
    """Approximate MediaPipe-named landmarks on the template (see module docstring).

    pose: Anny's COCO regressor rows (top ``k`` weights, renormalised), plus mouth corners and
    eye corners from nearby face vertices; hands: mean of the ``k`` vertices nearest each
    finger joint, tips = the finger's farthest vertex; face: ``n_face`` face vertices spread
    by farthest-point sampling (named ``face_<i>``, not MediaPipe's numbering: tests only).
    """
    t = template
    V = t.rest_verts
    names, ids, wts, kinds = [], [], [], []

    def add(name, vid, w, kind):
        vid = np.asarray(vid, dtype=np.int64).reshape(-1)
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        pad = k - len(vid)
        if pad > 0:
            vid = np.concatenate([vid, np.full(pad, vid[0])])
            w = np.concatenate([w, np.zeros(pad)])
        names.append(name), ids.append(vid[:k]), wts.append(w[:k] / w[:k].sum()), kinds.append(kind)

    surface = np.flatnonzero(t.masks["surface"])
    for mp, coco in _POSE_FROM_COCO.items():
        row = t.coco_regressor[t.coco_names.index(coco)]
        top = np.argsort(-row)[:k]
        add(mp, top, row[top], "pose")
    # eyes / mouth corners: the surface vertex nearest a point offset from the eye keypoints
    coco = t.coco_keypoints(V)
    for side, sx in (("left", 1.0), ("right", -1.0)):
        eye = coco[t.coco_names.index(f"{side}_eye")]
        for suffix, dx in (("_eye_inner", -0.015), ("_eye", 0.0), ("_eye_outer", 0.015)):
            add(side + suffix, _nearest(V, surface, eye + [sx * dx, -0.01, 0.0], k), np.ones(k), "pose")
        nose = coco[t.coco_names.index("nose")]
        add(f"mouth_{side}", _nearest(V, surface, nose + [sx * 0.025, 0.0, -0.045], k), np.ones(k), "pose")
    for side, suf in (("left", ".L"), ("right", ".R")):
        hand = np.flatnonzero(t.masks["hand_left" if side == "left" else "hand_right"])
        for i, joint in _HAND_JOINTS.items():
            jn = joint + suf
            if i in _HAND_TIPS:
                continue
            add(f"{side}_hand_{i}", _nearest(V, hand, t.rest_joints[t.joint_index(jn)], k), np.ones(k), "hand")
        for i, joint in _HAND_TIPS.items():
            j = t.joint_index(joint + suf)
            seg = hand[np.isin(t.skin_indices[hand, 0], [j])]
            direction = t.rest_joints[j] - t.rest_joints[t.parents[j]]
            tip = seg[np.argmax((V[seg] - t.rest_joints[j]) @ direction)]
            add(f"{side}_hand_{i}", _nearest(V, hand, V[tip], 3), np.ones(3), "hand")
    face = np.flatnonzero(t.masks["face"] & t.masks["surface"] & ~t.masks["eyeballs"] & (V[:, 1] < -0.09))
    for i, v in enumerate(_farthest_points(V[face], n_face)):
        add(f"face_{i}", [face[v]], [1.0], "face")
    return TemplateLandmarkSet(tuple(names), np.stack(ids), np.stack(wts), tuple(kinds))


def _nearest(V, candidates, point, k):
    d = np.linalg.norm(V[candidates] - point, axis=1)
    return candidates[np.argsort(d)[:k]]


def _farthest_points(P: np.ndarray, n: int) -> np.ndarray:
    chosen = [int(np.argmin(P[:, 2]))]
    d = np.linalg.norm(P - P[chosen[0]], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(d)))
        d = np.minimum(d, np.linalg.norm(P - P[chosen[-1]], axis=1))
    return np.asarray(chosen)


HINT_LANDMARKS = "Re-run `ghum-pipe landmark` for this scan and check its contact sheet"


def read_landmarks_json(path: Path, frame) -> dict:
    """landmarks.json (file frame and units) -> names, points (internal metres, on the scan's
    grid: ``io.frame.canonical_metres``), confidence."""
    from ghum_pipe.io.frame import canonical_metres

    if not path.exists():
        raise RegistrationError("no landmarks.json", path, "Run `ghum-pipe landmark` on this scan first")
    try:
        doc = json.loads(path.read_text())
        names = [str(n) for n in doc["names"]]
        pts = np.asarray(doc["points"], dtype=np.float64).reshape(-1, 3)
        conf = np.asarray(doc.get("confidence", np.ones(len(names))), dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise RegistrationError(f"unreadable landmarks ({e})", path, HINT_LANDMARKS) from None
    if len(names) != len(pts) or len(conf) != len(names):
        raise RegistrationError(f"{len(names)} names, {len(pts)} points, {len(conf)} confidences", path, HINT_LANDMARKS)
    return {"names": names, "points": canonical_metres(frame.to_internal(pts)), "confidence": conf,
            "scan_kind": str(doc.get("scan_kind", "body"))}
