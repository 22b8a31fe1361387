"""Triangulation on synthetic cameras with known projections (fast, pure numpy)."""

import numpy as np

from ghum_pipe.landmarks.cameras import body_ring
from ghum_pipe.landmarks.detect import POSE_MIRROR, POSE_NAMES
from ghum_pipe.landmarks.triangulate import (
    confidence, dlt, is_mirrored, project, ransac_triangulate, resolve_swaps,
)


def _rig_and_points(n_points=33, seed=0):
    rng = np.random.default_rng(seed)
    # A body-sized cloud of points, 1.7 m tall, and the stage's own 12-camera ring around it.
    X = rng.uniform([-0.3, -0.15, -0.85], [0.3, 0.15, 0.85], size=(n_points, 3))
    box = np.array([[-0.4, -0.2, -0.9], [0.4, 0.2, 0.9]])
    cams = body_ring(box)
    P = np.stack([c.P for c in cams])
    return X, cams, P


def test_dlt_exact_without_noise():
    X, cams, P = _rig_and_points()
    uv, depth = project(P, X)
    assert (depth > 0).all()
    # Sanity: project() agrees with Camera.project.
    uv0, z0 = cams[3].project(X)
    np.testing.assert_allclose(uv[:, 3], uv0, atol=1e-9)
    np.testing.assert_allclose(depth[:, 3], z0, atol=1e-9)
    est = dlt(P, uv, np.ones(uv.shape[:2]))
    np.testing.assert_allclose(est, X, atol=1e-6)
    # Two views are enough; fewer gives nan.
    w = np.zeros(uv.shape[:2])
    w[:, [0, 2]] = 1
    np.testing.assert_allclose(dlt(P, uv, w), X, atol=1e-6)
    w[:, 2] = 0
    assert np.isnan(dlt(P, uv, w)).all()


def test_ransac_robust_to_30_percent_outlier_views():
    X, cams, P = _rig_and_points(n_points=50, seed=1)
    uv, _ = project(P, X)
    rng = np.random.default_rng(2)
    L, V = uv.shape[:2]
    uv_noisy = uv + rng.normal(0, 0.5, uv.shape)  # half-pixel detector noise
    outlier = np.zeros((L, V), dtype=bool)
    for l in range(L):  # 30 % of the views of every landmark are gross outliers (40-150 px off)
        bad = rng.choice(V, size=int(0.3 * V) + 1, replace=False)
        outlier[l, bad] = True
    shift = rng.uniform(40, 150, (L, V, 1)) * rng.choice([-1, 1], (L, V, 2))
    uv_noisy[outlier] += shift[outlier]
    valid = np.ones((L, V), dtype=bool)
    est, inliers, rms = ransac_triangulate(P, uv_noisy, valid, thr_px=6.0)
    err_mm = np.linalg.norm(est - X, axis=1) * 1000
    assert err_mm.max() < 6.0, err_mm.max()  # 0.5 px at ~3 m is ~2 mm per view
    assert not (inliers & outlier).any()  # every outlier view rejected
    assert (inliers | outlier).all()  # every good view kept
    assert (rms < 1.5).all()
    # Without noise it is exact.
    uv_exact = uv.copy()
    uv_exact[outlier] += shift[outlier]
    est, inliers, _ = ransac_triangulate(P, uv_exact, valid, thr_px=6.0)
    np.testing.assert_allclose(est, X, atol=1e-6)
    c = confidence(inliers, np.zeros(L), 6.0)
    assert ((c > 0.9) & (c <= 1.0)).all()


def test_ransac_leaves_out_points_seen_once():
    X, cams, P = _rig_and_points(n_points=5)
    uv, _ = project(P, X)
    valid = np.zeros(uv.shape[:2], dtype=bool)
    valid[:, 0] = True
    valid[:2, 5] = True
    est, inl, rms = ransac_triangulate(P, uv, valid, thr_px=5.0)
    assert np.isnan(est[2:]).all() and np.isfinite(est[:2]).all()
    assert np.isnan(rms[2:]).all()


def _skeleton():
    """33 pose landmarks of a person facing -Y with left = +X, up = +Z (template convention)."""
    rng = np.random.default_rng(3)
    X = np.zeros((33, 3))
    for i, n in enumerate(POSE_NAMES):
        side = 1.0 if n.startswith("left") or n.endswith("left") else -1.0 if ("right" in n) else 0.0
        base = rng.uniform([0.08, -0.1, -0.8], [0.3, 0.1, 0.8])
        X[i] = [side * base[0], base[1], base[2]]
    idx = {n: i for i, n in enumerate(POSE_NAMES)}
    X[idx["nose"]] = [0, -0.1, 0.75]
    X[idx["left_ear"]], X[idx["right_ear"]] = [0.08, 0.0, 0.75], [-0.08, 0.0, 0.75]
    X[idx["left_shoulder"]], X[idx["right_shoulder"]] = [0.18, 0, 0.5], [-0.18, 0, 0.5]
    X[idx["left_hip"]], X[idx["right_hip"]] = [0.1, 0, 0.0], [-0.1, 0, 0.0]
    return X, idx


def test_swap_resolver_on_constructed_swap():
    X, idx = _skeleton()
    _, cams, P = _rig_and_points()
    uv, _ = project(P, X)
    V = uv.shape[1]
    swapped = np.zeros(V, dtype=bool)
    swapped[[3, 4, 5, 9]] = True  # back-ish views labelled as if the person faced the camera
    uv_det = uv.copy()
    uv_det[:, swapped] = uv[POSE_MIRROR][:, swapped]
    valid = np.ones(uv.shape[:2], dtype=bool)
    flips = resolve_swaps(P, uv_det, valid, POSE_MIRROR, thr_px=5.0)
    # Relative labeling recovered: either exactly the swapped views or exactly the others.
    assert (flips == swapped).all() or (flips == ~swapped).all()
    fixed = uv_det.copy()
    fixed[:, flips] = uv_det[POSE_MIRROR][:, flips]
    est, inl, _ = ransac_triangulate(P, fixed, valid, thr_px=5.0)
    assert inl.all()
    # Global sign from chirality: the labels come out as the person's own.
    if is_mirrored(*(est[idx[n]] for n in ("nose", "left_ear", "right_ear", "left_shoulder",
                                            "right_shoulder", "left_hip", "right_hip"))):
        est = est[POSE_MIRROR]
    np.testing.assert_allclose(est, X, atol=1e-6)
    # And the chirality test itself on a mirrored skeleton.
    names = ("nose", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_hip", "right_hip")
    assert not is_mirrored(*(X[idx[n]] for n in names))
    assert is_mirrored(*(X[POSE_MIRROR][idx[n]] for n in names))
