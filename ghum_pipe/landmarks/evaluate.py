"""Landmark accuracy against ground truth, "like with like".

A keypoint detector's "hip" is not the anatomical hip joint: MediaPipe puts it where its
training labels put it, at some depth inside the body that varies per joint. Comparing triangulated
points with the rig's joints would measure that convention gap, not our error. So the truth for
each name is the *template landmark definition* of that name (``TemplateLandmarks``: found by
this same stage on the rest-pose template, stored as surface barycentrics or shell weights for
interior joint centres) evaluated on the true template vertices of the scan. The detector's depth
convention is then the same on both sides, and what remains is the error of finding the point on
this scan. Surface points (face, fingertips) are compared on the surface, interior points at the
joint-centre depth the definition carries.

Groups (the stage's accuracy targets): body = the COCO-17 names (MediaPipe names for the same points);
face = eye corners, nose tip and mouth corners of FaceMesh; hands = wrist and five fingertips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")
# FaceMesh indices: right eye outer/inner 33/133, left eye inner/outer 362/263, nose tip 1,
# mouth corners 61/291 (MediaPipe face_mesh canonical model numbering).
FACE_EVAL = tuple(f"face_{i}" for i in (33, 133, 362, 263, 1, 61, 291))
HAND_EVAL = tuple(f"{s}_hand_{i}" for s in ("left", "right") for i in (0, 4, 8, 12, 16, 20))
MM_PER_UNIT = {"m": 1000.0, "cm": 10.0, "mm": 1.0}


@dataclass(frozen=True)
class LandmarkErrors:
    """Errors of one scan in mm. ``*_mm``: per-name errors (nan = not found)."""

    body_mm: dict
    face_mm: dict
    hands_mm: dict
    swaps: int  # COCO left/right pairs found the wrong way round

    @staticmethod
    def _mean(d: dict) -> float:
        v = np.array([x for x in d.values() if np.isfinite(x)])
        return float(v.mean()) if len(v) else float("nan")

    @property
    def body_mean(self) -> float:
        return self._mean(self.body_mm)

    @property
    def body_within_50(self) -> float:
        """Share of the COCO-17 names found within 50 mm (a missing name counts as a miss)."""
        return float(np.mean([np.isfinite(x) and x <= 50.0 for x in self.body_mm.values()]))

    @property
    def face_mean(self) -> float:
        return self._mean(self.face_mm)

    @property
    def hands_mean(self) -> float:
        return self._mean(self.hands_mm)


def landmark_errors(doc: dict, truth_verts: np.ndarray, units: str, template_landmarks) -> LandmarkErrors:
    """Compare a landmarks.json document with the truth.

    doc: the parsed landmarks.json; truth_verts: (V, 3) true template vertices in the scan
    file's frame and ``units`` (``OUT/truth/<id>.npz['verts']``); template_landmarks: the
    ``TemplateLandmarks`` defining each name on the template.
    """
    found = {n: np.asarray(p, dtype=np.float64) for n, p in zip(doc["names"], doc["points"])}
    known = set(template_landmarks.names)
    scale = MM_PER_UNIT[units]

    def errors(names):
        names = [n for n in names if n in known]
        truth = template_landmarks.subset(names).points(np.asarray(truth_verts, dtype=np.float64))
        return {n: (float(np.linalg.norm(found[n] - t) * scale) if n in found else float("nan"))
                for n, t in zip(names, truth)}

    coco = [n for n in COCO17 if n in known]
    truth = dict(zip(coco, template_landmarks.subset(coco).points(np.asarray(truth_verts, dtype=np.float64))))
    return LandmarkErrors(errors(COCO17), errors(FACE_EVAL), errors(HAND_EVAL), count_swaps(found, truth))


def count_swaps(found: dict, truth: dict) -> int:
    """Left/right pairs (``left_x``/``right_x`` in both dicts of (3,) points) that are closer to the
    truth crossed over than straight."""
    swaps = 0
    for n in found:
        m = "right_" + n[5:]
        if n.startswith("left_") and m in found and n in truth and m in truth:
            straight = np.linalg.norm(found[n] - truth[n]) + np.linalg.norm(found[m] - truth[m])
            crossed = np.linalg.norm(found[n] - truth[m]) + np.linalg.norm(found[m] - truth[n])
            swaps += int(crossed < straight)
    return swaps
