"""Similarity (rotation, uniform scale, translation) from point pairs.

Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", IEEE TPAMI 13(4), 1991, eqs. (34)-(43), with per-pair weights: minimises
``sum_i w_i |dst_i - (s R src_i + t)|^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` (metres)."""

    rotation: np.ndarray  # (3, 3) proper rotation
    scale: float
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) -> (..., 3)."""
        return self.scale * np.asarray(points) @ self.rotation.T + self.translation

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True) -> Similarity:
    """Weighted least-squares similarity mapping ``src`` onto ``dst``.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 not collinear.
        weights: (N,) non-negative, or None for all ones.
        with_scale: estimate the scale (else 1).
    Returns:
        :class:`Similarity` with ``dst ~ s R src + t``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama expects two (N, 3) arrays, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("umeyama weights must be non-negative and not all zero")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(w @ (xs**2).sum(1))
    cov = (xd * w[:, None]).T @ xs  # (3, 3) Sigma_xy of eq. (38)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # eq. (39): reflection -> flip the weakest axis
        S[2, 2] = -1.0
    R = U @ S @ Vt
    if np.linalg.matrix_rank(cov) < 2 or var_s <= 0:
        raise ValueError("umeyama: points are degenerate (fewer than 3 non-collinear pairs)")
    scale = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - scale * R @ mu_s
    return Similarity(R, scale, t)
