"""Similarity (rotation, uniform scale, translation) from point pairs.

Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", IEEE TPAMI 13(4), 1991, eqs. (34)-(43), with per-pair weights: minimises
``sum_i w_i |dst_i - (s R src_i + t)|^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.ops.procrustes import umeyama as ops_umeyama


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
    """:func:`ghum_pipe.ops.procrustes.umeyama` as a :class:`Similarity` (``dst ~ s R src + t``)."""
    scale, rotation, translation = ops_umeyama(src, dst, weights, with_scale)
    return Similarity(rotation, scale, translation)
