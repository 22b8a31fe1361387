"""Scoring a registration against ground truth in the template's topology (synthetic scans,
tests, benchmarks): per-vertex error and body-part correspondence."""

from __future__ import annotations

import numpy as np


def dominant_part(template) -> np.ndarray:
    """(V,) int: the joint that skins each vertex most, a ~60-part body segmentation."""
    return template.skin_indices[np.arange(template.n_verts), np.argmax(template.skin_weights, 1)]


def surface_error_mm(template, verts_m: np.ndarray, truth_m: np.ndarray) -> tuple[float, float]:
    """Mean and p95 per-vertex distance (mm) over the template's surface (no interior parts)."""
    e = np.linalg.norm(verts_m - truth_m, axis=1)[template.masks["surface"]] * 1e3
    return float(e.mean()), float(np.percentile(e, 95))


def part_agreement(template, verts_m: np.ndarray, truth_m: np.ndarray) -> float:
    """Share of surface vertices whose nearest truth surface vertex belongs to the same body
    part (:func:`dominant_part`) as the vertex itself: 1.0 when every template vertex landed
    on its own body part of this person, whatever the person's size and pose."""
    from scipy.spatial import cKDTree

    surf = np.flatnonzero(template.masks["surface"])
    part = dominant_part(template)
    nearest = surf[cKDTree(truth_m[surf]).query(verts_m[surf])[1]]
    return float((part[nearest] == part[surf]).mean())
