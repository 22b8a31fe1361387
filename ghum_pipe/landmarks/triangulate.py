"""Multi-view triangulation of 2D landmarks: DLT, RANSAC over views, left/right swap resolution.

Pure numpy. Notation: V views with (3, 4) projection matrices ``P = K [R | t]`` (pixels, metres);
L landmarks; ``uv (L, V, 2)`` pixel observations; ``valid (L, V)`` bool where a landmark was
detected (and passed the caller's visibility test) in a view.

- ``dlt``: linear triangulation (Hartley & Zisserman 2004, Sec. 12.2, the homogeneous DLT),
  batched over landmarks, with per-observation weights; rows are normalised so that each view
  counts the same whatever its distance.
- ``ransac_triangulate``: every pair of views where the landmark is valid proposes a point (all
  pairs are enumerated, so the result is deterministic); the proposal with most views within
  ``thr_px`` wins and is refit on its inliers (Fischler & Bolles 1981).
- ``resolve_swaps``: per-view left/right labelings. A detector on a back view often returns
  the mirrored person (left labelled right). Hypotheses from view pairs and both relative
  labelings are scored by how many observations in all views agree under each view's better
  labeling; the best one fixes which views to flip. The global labeling (all flipped or none)
  is not observable from consistency alone: ``is_mirrored`` settles it from body chirality.
"""

from __future__ import annotations

import itertools

import numpy as np


def project(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points into views. P: (V, 3, 4); X: (L, 3) -> uv (L, V, 2) px, depth (L, V).

    ``depth`` is the third homogeneous coordinate (the camera z-depth when K[2] = [0, 0, 1]).
    """
    Xh = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    x = np.einsum("vij,lj->lvi", P, Xh)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = x[..., :2] / x[..., 2:3]
    return uv, x[..., 2]


def dlt(P: np.ndarray, uv: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted homogeneous DLT. P: (V, 3, 4); uv: (L, V, 2); weight: (L, V) >= 0 (0 = unused).

    Returns X: (L, 3) metres; nan where fewer than two views have weight > 0.
    """
    P = np.asarray(P, dtype=np.float64)
    uv = np.nan_to_num(np.asarray(uv, dtype=np.float64))
    weight = np.asarray(weight, dtype=np.float64)
    # rows: u * P[2] - P[0] and v * P[2] - P[1], per landmark and view: (L, V, 2, 4)
    rows = uv[..., None] * P[None, :, 2:3, :] - P[None, :, :2, :]
    rows /= np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
    rows *= weight[..., None, None]
    A = rows.reshape(len(uv), -1, 4)
    _, _, vt = np.linalg.svd(A, full_matrices=False)
    Xh = vt[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
    X[(weight > 0).sum(1) < 2] = np.nan
    return X


def reprojection_error(P: np.ndarray, X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(L, V) pixel distance between observations uv (L, V, 2) and projected X (L, 3);
    inf where the point is behind the camera or X is nan."""
    proj, depth = project(P, X)
    err = np.linalg.norm(proj - uv, axis=-1)
    err[~(depth > 0)] = np.inf
    return np.nan_to_num(err, nan=np.inf)


def _pairs(n_views: int) -> np.ndarray:
    return np.array(list(itertools.combinations(range(n_views), 2)), dtype=np.int64).reshape(-1, 2)


def ransac_triangulate(
    P: np.ndarray,
    uv: np.ndarray,
    valid: np.ndarray,
    thr_px: float,
    score: np.ndarray | None = None,
    min_views: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust triangulation over views.

    P: (V, 3, 4); uv: (L, V, 2); valid: (L, V) bool; thr_px: inlier reprojection threshold;
    score: (L, V) detector confidences used as DLT weights (default 1).
    Returns X (L, 3) metres (nan where fewer than ``min_views`` inliers), inliers (L, V) bool and
    the RMS reprojection error over inliers (L,) px (nan where no point).
    """
    L, V = valid.shape
    score = np.ones((L, V)) if score is None else np.asarray(score, dtype=np.float64)
    best_count = np.zeros(L, dtype=np.int64)
    best_cost = np.full(L, np.inf)
    best_X = np.full((L, 3), np.nan)
    for i, j in _pairs(V):
        both = valid[:, i] & valid[:, j]
        if not both.any():
            continue
        w = np.zeros((L, V))
        w[:, i] = w[:, j] = both
        X = dlt(P, uv, w)
        err = reprojection_error(P, X, uv)
        inl = valid & (err < thr_px)
        count = inl.sum(1)
        cost = np.where(inl, err, thr_px).sum(1)  # MSAC-style tie break
        better = both & ((count > best_count) | ((count == best_count) & (cost < best_cost)))
        best_count[better], best_cost[better], best_X[better] = count[better], cost[better], X[better]
    # Refit on the inliers of the best proposal, then take the refit's inliers (one LO step).
    inliers = valid & (reprojection_error(P, best_X, uv) < thr_px)
    X = dlt(P, uv, inliers * score)
    err = reprojection_error(P, X, uv)
    refit_inl = valid & (err < thr_px)
    keep = refit_inl.sum(1) >= inliers.sum(1)
    X = np.where(keep[:, None], X, best_X)
    inliers = np.where(keep[:, None], refit_inl, inliers)
    err = reprojection_error(P, X, uv)
    n = inliers.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt((np.where(inliers, err, 0.0) ** 2).sum(1) / n)
    bad = n < min_views
    X[bad], rms[bad] = np.nan, np.nan
    return X, inliers, rms


def confidence(inliers: np.ndarray, rms_px: np.ndarray, thr_px: float, score: np.ndarray | None = None) -> np.ndarray:
    """(L,) confidence in [0, 1] from inlier count, RMS reprojection error and detector scores.

    ``(1 - exp(-n / 2)) * exp(-(rms / thr)^2) * mean inlier score``: two agreeing views give
    ~0.6, six ~0.95; an RMS error at the threshold costs a factor e.
    """
    n = inliers.sum(1)
    s = np.ones(inliers.shape) if score is None else score
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.where(inliers, s, 0.0).sum(1) / np.maximum(n, 1)
    c = (1 - np.exp(-n / 2)) * np.exp(-((np.nan_to_num(rms_px, nan=np.inf) / thr_px) ** 2)) * mean_score
    return np.clip(np.nan_to_num(c), 0.0, 1.0)


def resolve_swaps(
    P: np.ndarray, uv: np.ndarray, valid: np.ndarray, mirror: np.ndarray, thr_px: float
) -> np.ndarray:
    """Which views to relabel left <-> right so all views agree.

    P: (V, 3, 4); uv: (L, V, 2) and valid: (L, V) one detected skeleton per view; mirror: (L,)
    index of each landmark's mirrored name (itself for central ones). Returns flips (V,) bool,
    relative to the best-supported labeling (fix the global sign with ``is_mirrored``).
    """
    L, V = valid.shape
    uv_f, valid_f = uv[mirror], valid[mirror]  # every view relabelled
    best = (-1, np.inf, np.zeros(V, dtype=bool))
    for i, j in _pairs(V):
        for flip_j in (False, True):
            uv_h = uv.copy()
            ok_h = valid.copy()
            if flip_j:
                uv_h[:, j], ok_h[:, j] = uv_f[:, j], valid_f[:, j]
            w = np.zeros((L, V))
            w[:, i], w[:, j] = ok_h[:, i], ok_h[:, j]
            X = dlt(P, uv_h, w)
            good = np.isfinite(X).all(1)
            if good.sum() < 4:
                continue
            e0 = np.where(valid & good[:, None], reprojection_error(P, X, uv), np.inf)
            e1 = np.where(valid_f & good[:, None], reprojection_error(P, X, uv_f), np.inf)
            n0, n1 = (e0 < thr_px).sum(0), (e1 < thr_px).sum(0)  # (V,) inliers per labeling
            c0 = np.minimum(e0, thr_px).sum(0)
            c1 = np.minimum(e1, thr_px).sum(0)
            flips = (n1 > n0) | ((n1 == n0) & (c1 < c0))
            flips[i], flips[j] = False, flip_j
            count = np.where(flips, n1, n0).sum()
            cost = np.where(flips, c1, c0).sum()
            if count > best[0] or (count == best[0] and cost < best[1]):
                best = (count, cost, flips)
    return best[2]


def is_mirrored(
    nose: np.ndarray, left_ear: np.ndarray, right_ear: np.ndarray,
    left_shoulder: np.ndarray, right_shoulder: np.ndarray,
    left_hip: np.ndarray, right_hip: np.ndarray,
) -> bool:
    """True if a 3D skeleton's left/right labels are mirrored (each argument (3,), metres).

    For a person, ``(left - right) x up`` points forward (the template: left = +X, up = +Z,
    forward = -Y). Up (hips -> shoulders) and forward (mid-ears -> nose) do not depend on the
    labeling, so the sign of ``((left - right) x up) . forward`` summed over shoulders, hips and
    ears tells whether the labels are the person's own.
    """
    up = (left_shoulder + right_shoulder) / 2 - (left_hip + right_hip) / 2
    forward = nose - (left_ear + right_ear) / 2
    s = sum(np.cross(a - b, up) @ forward for a, b in
            ((left_shoulder, right_shoulder), (left_hip, right_hip), (left_ear, right_ear)))
    return bool(s < 0)


def surface_consensus(hits: np.ndarray, valid: np.ndarray, tol_m: float) -> np.ndarray:
    """Views that agree on where a surface landmark is, from the surface under each detection.

    For a landmark on the skin, the surface point under its 2D detection *is* the landmark in a
    view that sees it; in a view where it is hidden (the face seen from behind), the detector
    still guesses a position and the surface under it is elsewhere (the back of the head). Those
    guesses are roughly consistent with each other in 2D and would pull a DLT into the body, so
    for surface landmarks we keep the largest group of views whose surface hits lie within
    ``tol_m`` of one of them.

    hits: (L, V, 3) surface points under the detections (nan on background); valid: (L, V).
    Returns inliers (L, V) bool (empty rows where no view is valid).
    """
    ok = valid & np.isfinite(hits).all(-1)
    d = np.linalg.norm(hits[:, :, None] - hits[:, None, :], axis=-1)  # (L, V, V)
    close = (d < tol_m) & ok[:, :, None] & ok[:, None, :]
    count = close.sum(2)  # (L, V) views agreeing with view c
    spread = np.where(close, d, 0.0).sum(2)
    key = count - spread / (tol_m * (valid.shape[1] + 1))  # most agreeing, then tightest
    key[~ok] = -np.inf
    best = np.argmax(key, axis=1)
    return close[np.arange(len(hits)), best] & ok
