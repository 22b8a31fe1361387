"""What a registration returns, body or close-up: :class:`RegistrationResult` and its metrics.

The driver (``stage.register_scan``, for a body and for a head or hand close-up alike) builds
its result here, so the metrics and the observed-vertex mask (the model's filter F) are
computed one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.register.backend import MeshDistance
from ghum_pipe.register.landmark_pairs import LandmarkPairs
from ghum_pipe.register.target import ScanTarget


@dataclass(frozen=True)
class RegistrationResult:
    """A registration in the internal frame (metres, +Z up)."""

    verts: np.ndarray  # (V, 3) template order
    params: dict  # pose (J,3), shape (S,), expression (E,), scale, translation (3,), offsets (V,3),
    # vertex_mask (V,) bool: the vertex had scan data within ``observed_dist_m`` (the model's filter F)
    metrics: dict
    scan_points: np.ndarray  # (N, 3) scan samples used for the metrics
    scan_to_reg_m: np.ndarray  # (N,) their distance to the registration


def registration_metrics(template, verts: np.ndarray, target: ScanTarget, pairs: LandmarkPairs,
                         landmark_rms_m: float, region: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Distances both ways and landmark residuals of a registration.

    Args:
        verts: (V, 3) the registration, metres; target: the scan; pairs: the matched landmarks;
        landmark_rms_m: the skeleton fit's body landmark RMS;
        region: (V,) bool, the vertices the registration->scan distances are taken over (default:
            the template's surface; a close-up's region).
    Returns:
        the metrics (mm), the scan samples (N, 3) and their distances to the registration (N,).
    """
    surface = template.masks["surface"]
    surf_faces = template.faces[surface[template.faces].all(1)]
    s2r = MeshDistance(verts, surf_faces).closest(target.points)["dist"]
    r2s = target.distance_to_scan(verts[surface if region is None else region])
    lm = np.linalg.norm(pairs.template_points(verts) - pairs.targets, axis=1)
    kinds = np.asarray(pairs.kinds)
    per_kind = {k: float(np.sqrt((lm[kinds == k] ** 2).mean()) * 1e3) for k in ("pose", "hand", "face") if (kinds == k).any()}
    m = dict(
        scan_to_reg_mean_mm=float(s2r.mean() * 1e3), scan_to_reg_p95_mm=float(np.percentile(s2r, 95) * 1e3),
        reg_to_scan_mean_mm=float(r2s.mean() * 1e3), reg_to_scan_p95_mm=float(np.percentile(r2s, 95) * 1e3),
        landmark_rms_mm=per_kind, n_landmarks={k: int((kinds == k).sum()) for k in ("pose", "hand", "face")},
        landmark_residual_mm={n: round(float(d * 1e3), 2) for n, d in zip(pairs.names, lm) if not n.startswith("face_")},
        skeleton_landmark_rms_mm=landmark_rms_m * 1e3, n_scan_samples=int(len(target.points)),
    )
    return m, target.points, s2r


def observed_vertices(target: ScanTarget, verts: np.ndarray, region: np.ndarray, observed_dist_m: float) -> np.ndarray:
    """(V,) bool, the model's filter F: ``region`` vertices with scan data within ``observed_dist_m``."""
    return region & (target.distance_to_scan(verts) < observed_dist_m)
