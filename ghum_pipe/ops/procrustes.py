"""Weighted alignment of corresponding point sets: rotation, translation and optionally a scale.

Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` over proper rotations R (det +1), with
s = 1 (Kabsch, 1976) or free (Umeyama, "Least-squares estimation of transformation parameters
between two point patterns", IEEE TPAMI 13(4), 1991, eqs. (34)-(43)). One batched torch
implementation; :func:`umeyama` is its numpy, single-set, input-checked form.
"""

from __future__ import annotations

import numpy as np
import torch


def procrustes(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None,
               with_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched weighted alignment ``dst ~ s R src + t``.

    Args:
        src, dst: (B, N, 3) corresponding points.
        weights: (B, N) non-negative, or None for all ones.
        with_scale: estimate s (else 1).
    Returns:
        scale (B,), R (B, 3, 3) proper rotations, t (B, 3).
    """
    if weights is None:
        weights = torch.ones(src.shape[:2], dtype=src.dtype, device=src.device)
    w = weights / weights.sum(1, keepdim=True).clamp_min(1e-9)
    cs, cd = (src * w[..., None]).sum(1), (dst * w[..., None]).sum(1)
    H = torch.einsum("bv,bvi,bvj->bij", w, src - cs[:, None], dst - cd[:, None])  # (B, 3, 3)
    U, sig, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.transpose(1, 2) @ U.transpose(1, 2)))  # -1: a reflection
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = Vt.transpose(1, 2) @ D @ U.transpose(1, 2)
    if with_scale:  # Umeyama's eq. (42): trace(D S) / source variance
        var = torch.einsum("bv,bv->b", w, ((src - cs[:, None]) ** 2).sum(-1))
        scale = (sig * D.diagonal(dim1=-2, dim2=-1)).sum(-1) / var
    else:
        scale = torch.ones_like(d)
    return scale, R, cd - scale[:, None] * torch.einsum("bij,bj->bi", R, cs)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
            with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`procrustes` for one (N, 3) pair of numpy arrays, in float64, checked at the door.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 not collinear.
        weights: (N,) non-negative, not all zero, or None for all ones.
        with_scale: estimate the scale (else 1).
    Returns:
        scale, rotation (3, 3), translation (3,) with ``dst ~ scale * rotation @ src + translation``.
    Raises:
        ValueError: on wrong shapes, bad weights or degenerate (collinear) points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama expects two (N, 3) arrays, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("umeyama weights must be (N,), non-negative and not all zero")
    s, R, t = procrustes(torch.from_numpy(src)[None], torch.from_numpy(dst)[None], torch.from_numpy(w)[None],
                         with_scale)
    # rank < 2 of the cross-covariance (numpy's matrix_rank tolerance) = collinear points
    centred = src - (w / w.sum()) @ src
    cov = (dst - (w / w.sum()) @ dst).T @ (centred * w[:, None])
    if np.linalg.matrix_rank(cov) < 2 or float(w @ (centred**2).sum(1)) <= 0:
        raise ValueError("umeyama: points are degenerate (fewer than 3 non-collinear pairs)")
    return float(s[0]), R[0].numpy(), t[0].numpy()
