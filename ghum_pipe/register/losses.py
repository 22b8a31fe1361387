"""Registration objectives as small pure torch functions (metres in, metres^2 out).

* landmarks: weighted squared distance between template landmarks and scan landmarks;
* ICP: robust point-to-plane residuals (Chen & Medioni 1992) with correspondences rejected by
  distance and normal angle (Rusinkiewicz & Levoy, "Efficient variants of the ICP algorithm",
  3DIM 2001), Geman-McClure or Huber penalties;
* ACAP / ARAP: the as-rigid-as-possible energy of Sorkine & Alexa, "As-rigid-as-possible
  surface modeling", SGP 2007, eq. (3), on the template's edge graph, and its
  as-conformal-as-possible variant (per-vertex similarity = rotation times scale) of
  Yoshiyasu et al., "As-conformal-as-possible surface registration", SGP 2014.
"""

from __future__ import annotations

import numpy as np
import torch


# ---------------------------------------------------------------- robust penalties
def geman_mcclure(r: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure rho(r) = sigma^2 r^2 / (sigma^2 + r^2): ~r^2 for |r| << sigma,
    saturates at sigma^2 for outliers (same units as r^2)."""
    r2 = r * r
    return sigma**2 * r2 / (sigma**2 + r2)


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber: r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) beyond."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def robust(r: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    if kind == "gm":
        return geman_mcclure(r, sigma)
    if kind == "huber":
        return huber(r, sigma)
    if kind == "l2":
        return r * r
    raise ValueError(f"unknown robust penalty {kind!r} (use 'gm', 'huber' or 'l2')")


# ---------------------------------------------------------------- landmarks
def landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean squared landmark distance.

    Args:
        pred: (L, 3) template landmarks (metres); target: (L, 3) scan landmarks;
        weights: (L,) non-negative (confidence x per-kind weight).
    Returns:
        scalar, metres^2: sum_l w_l |pred_l - target_l|^2 / sum_l w_l.
    """
    d2 = ((pred - target) ** 2).sum(-1)
    return (weights * d2).sum() / weights.sum().clamp_min(1e-12)


# ---------------------------------------------------------------- ICP
def correspondence_mask(
    dist: torch.Tensor, src_normals: torch.Tensor, dst_normals: torch.Tensor, max_dist: float, max_angle_deg: float
) -> torch.Tensor:
    """(N,) bool: keep pairs closer than ``max_dist`` whose unit normals differ by less than
    ``max_angle_deg`` (rejects matches to the other side of a thin part or across a hole)."""
    cos = (src_normals * dst_normals).sum(-1)
    return (dist < max_dist) & (cos > float(np.cos(np.deg2rad(max_angle_deg))))


def point_to_plane(src: torch.Tensor, dst: torch.Tensor, dst_normals: torch.Tensor) -> torch.Tensor:
    """(N,) signed distances of ``src`` (N, 3) to the planes through ``dst`` with normals (N, 3)."""
    return ((src - dst) * dst_normals).sum(-1)


def icp_loss(
    src: torch.Tensor, dst: torch.Tensor, dst_normals: torch.Tensor, mask: torch.Tensor,
    sigma: float, kind: str = "gm", point_weight: float = 0.1,
) -> torch.Tensor:
    """Robust point-to-plane ICP term, averaged over kept pairs (metres^2).

    ``point_weight`` adds a fraction of the point-to-point distance so that points cannot slide
    freely along flat regions (the pure point-to-plane term has a null space there).
    """
    if mask.sum() == 0:
        return src.new_zeros(())
    s, d, n = src[mask], dst[mask], dst_normals[mask]
    r_plane = point_to_plane(s, d, n)
    r_point = (s - d).norm(dim=-1)
    return (robust(r_plane, kind, sigma) + point_weight * robust(r_point, kind, sigma)).mean()


# ---------------------------------------------------------------- ACAP / ARAP
def edge_graph(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """(E, 2) int64 directed edges (i, j), both directions of every mesh edge, sorted by i."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    e = np.unique(e, axis=0)
    if e.size and e.max() >= n_verts:
        raise ValueError("faces index past n_verts")
    return e


def fit_vertex_similarities(
    x: torch.Tensor, p: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor,
    conformal: bool = True, scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local step: for every vertex i the rotation R_i (and scale s_i if ``conformal``) that best
    maps its rest one-ring edges onto the deformed ones,
    ``argmin sum_j w_ij |(x_i - x_j) - s_i R_i (p_i - p_j)|^2`` (Sorkine & Alexa eq. 5-6;
    the scale is the closed form of Umeyama's eq. 42 / Yoshiyasu et al.).

    Args:
        x, p: (V, 3) deformed and rest vertices; edges: (E, 2) long directed; weights (E,).
    Returns:
        R (V, 3, 3) proper rotations, s (V,) scales (ones if not conformal).
    """
    i, j = edges[:, 0], edges[:, 1]
    e_rest = p[i] - p[j]
    e_def = x[i] - x[j]
    cov = torch.einsum("e,ea,eb->eab", weights, e_def, e_rest)  # (E, 3, 3) sum of w e' e^T
    S = torch.zeros(len(p), 3, 3, dtype=p.dtype, device=p.device).index_add(0, i, cov)
    U, sig, Vh = torch.linalg.svd(S)
    d = torch.sign(torch.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    if not conformal:
        return R, torch.ones(len(p), dtype=p.dtype, device=p.device)
    num = (sig * torch.diagonal(D, dim1=-2, dim2=-1)).sum(-1)  # tr(R^T S)
    den = torch.zeros(len(p), dtype=p.dtype, device=p.device).index_add(0, i, weights * (e_rest**2).sum(-1))
    s = (num / den.clamp_min(1e-20)).clamp(*scale_range)
    return R, s


def acap_energy(
    x: torch.Tensor, p: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor | None = None,
    conformal: bool = True,
) -> torch.Tensor:
    """ACAP (``conformal=True``) or ARAP energy of deformed vertices ``x`` w.r.t. rest ``p``:
    ``sum_i sum_{j in N(i)} w_ij |(x_i - x_j) - s_i R_i (p_i - p_j)|^2`` with the optimal
    per-vertex (s_i, R_i) (metres^2). The optimal transforms are found under no_grad: by the
    envelope theorem the gradient with them held fixed is the gradient of the energy.
    """
    if weights is None:
        weights = torch.ones(len(edges), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        R, s = fit_vertex_similarities(x.detach(), p, edges, weights, conformal)
    i, j = edges[:, 0], edges[:, 1]
    pred = s[i, None] * torch.einsum("eab,eb->ea", R[i], p[i] - p[j])
    return (weights * (((x[i] - x[j]) - pred) ** 2).sum(-1)).sum()
