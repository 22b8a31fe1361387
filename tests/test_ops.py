"""ghum_pipe.ops on geometry whose answer is known exactly."""

import numpy as np
import pytest
import torch

from ghum_pipe.ops.diagonal import gauss_newton_diagonal, jacobi_step_sizes
from ghum_pipe.ops.lbfgs import minimize_lbfgs, minimize_lbfgs_torch
from ghum_pipe.ops.normals import face_normals, vertex_normals, vertex_normals_torch
from ghum_pipe.ops.procrustes import procrustes, umeyama


def _octahedron(scale=(1.0, 1.0, 1.0)):
    """Six vertices on the axes (outward-facing faces) and a seventh used by no face."""
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [5, 5, 5]], float)
    f = []
    for x in (0, 1):
        for y in (2, 3):
            for z in (4, 5):
                tri = [x, y, z]
                if np.linalg.det(v[tri]) < 0:
                    tri = [x, z, y]
                f.append(tri)
    return v * np.asarray(scale), np.array(f)


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_normals_of_an_octahedron():
    v, f = _octahedron()
    fn = face_normals(v, f)
    # every face of the regular octahedron faces its octant: (+-1, +-1, +-1) / sqrt(3)
    np.testing.assert_allclose(fn, np.sign(v[f].sum(1)) / np.sqrt(3), atol=1e-15)
    vn = vertex_normals(v, f)
    # four congruent faces around each axis vertex: the area-weighted normal is the axis
    np.testing.assert_allclose(vn[:6], v[:6], atol=1e-15)
    assert np.all(vn[6] == 0)  # a vertex in no face


def test_vertex_normals_are_area_weighted():
    # stretched 3x along x: the faces tilt towards x; the normal at the +y vertex stays +y by
    # symmetry, and at the +x vertex it stays +x
    v, f = _octahedron((3.0, 1.0, 1.0))
    vn = vertex_normals(v, f)
    np.testing.assert_allclose(vn[[0, 2, 4]], np.eye(3), atol=1e-15)
    # one big and one small face at a vertex: the big one dominates (areas 2 and 0.02 m^2)
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0.2, 0], [0, 0, 0.2]], float)
    f = np.array([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(v, f)[0]
    expected = np.array([0.02, 0.0, 2.0]) / np.hypot(0.02, 2.0)
    np.testing.assert_allclose(n, expected, atol=1e-15)


def test_torch_normals_match_numpy_and_carry_gradients():
    v, f = _octahedron((1.0, 2.0, 0.5))
    v = v + np.random.default_rng(0).normal(scale=0.05, size=v.shape)
    vt = torch.tensor(np.stack([v, 2 * v]), requires_grad=True)
    n = vertex_normals_torch(vt, torch.as_tensor(f))
    np.testing.assert_allclose(n[0].detach().numpy(), vertex_normals(v, f), atol=1e-14)
    np.testing.assert_allclose(n[1].detach().numpy(), vertex_normals(v, f), atol=1e-14)  # scale-free
    n[:, 0, 0].sum().backward()
    assert torch.isfinite(vt.grad).all() and vt.grad.abs().sum() > 0


def test_umeyama_recovers_a_similarity_and_ignores_a_zero_weight_outlier():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(40, 3))
    R, s, t = _rotation(2), 1.7, np.array([0.3, -1.0, 2.0])
    dst = s * src @ R.T + t
    dst[0] += 10.0  # an outlier with weight 0
    w = np.ones(40)
    w[0] = 0.0
    scale, rot, trans = umeyama(src, dst, w)
    assert abs(scale - s) < 1e-12
    np.testing.assert_allclose(rot, R, atol=1e-12)
    np.testing.assert_allclose(trans, t, atol=1e-12)
    assert umeyama(src[1:], dst[1:], with_scale=False)[0] == 1.0


def test_umeyama_returns_a_rotation_for_mirrored_points_and_rejects_degenerate_input():
    src = np.random.default_rng(3).normal(size=(10, 3))
    _, rot, _ = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert abs(np.linalg.det(rot) - 1.0) < 1e-12
    with pytest.raises(ValueError, match="degenerate"):
        umeyama(np.outer(np.arange(5.0), [1.0, 2.0, 3.0]), np.outer(np.arange(5.0), [3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        umeyama(src, src, -np.ones(10))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        umeyama(src[:, :2], src[:, :2])


def _umeyama_reference(src, dst, w):
    """Umeyama 1991, eqs. (34)-(43) as written there (cov = Sigma_xy, S flips the weakest axis)."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd((xd * w[:, None]).T @ xs)
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt))])
    R = U @ S @ Vt
    scale = np.trace(np.diag(D) @ S) / (w @ (xs**2).sum(1))
    return scale, R, mu_d - scale * R @ mu_s


def test_umeyama_agrees_with_the_papers_formulas_on_noisy_pairs():
    rng = np.random.default_rng(4)
    for _ in range(5):
        src, dst, w = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)), rng.uniform(0.1, 1.0, 12)
        for got, want in zip(umeyama(src, dst, w), _umeyama_reference(src, dst, w)):
            np.testing.assert_allclose(got, want, atol=1e-12)


def test_batched_procrustes_recovers_each_rigid_transform_in_float32():
    rng = np.random.default_rng(5)
    src = torch.tensor(rng.normal(size=(3, 50, 3)), dtype=torch.float32)
    R = torch.tensor(np.stack([_rotation(i) for i in range(3)]), dtype=torch.float32)
    t = torch.tensor(rng.normal(size=(3, 3)), dtype=torch.float32)
    dst = torch.einsum("bij,bvj->bvi", R, src) + t[:, None]
    scale, rot, trans = procrustes(src, dst, torch.ones(3, 50))
    assert torch.all(scale == 1.0)
    # float32: the SVD of a unit-scale cross-covariance is good to ~1e-6
    torch.testing.assert_close(rot, R, atol=1e-5, rtol=0)
    torch.testing.assert_close(trans, t, atol=1e-5, rtol=0)


def test_scipy_lbfgs_finds_a_bounded_minimum_and_scales_help_an_ill_conditioned_one():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def loss():
        return ((x - target) ** 2).sum() + ((y - 3.0) ** 2).sum()

    minimize_lbfgs([x, y], loss, bounds=[None, (0.0, 0.5)], maxiter=50)
    np.testing.assert_allclose(x.detach().numpy(), [1.0, -2.0], atol=1e-8)
    np.testing.assert_allclose(y.detach().numpy(), [0.5, 0.5, 0.5], atol=1e-12)  # held at the bound

    # curvatures 1e6 and 1: with the Jacobi scales 1/sqrt(curvature) it is the unit quadratic
    a = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def stiff():
        return 1e6 * (a - 1e-3) ** 2 + (b - 1.0) ** 2

    n_scaled = minimize_lbfgs([a, b], lambda: stiff().sum(), maxiter=100, scales=[1e-3, 1.0])
    assert abs(float(a.detach()) - 1e-3) < 1e-9 and abs(float(b.detach()) - 1.0) < 1e-6
    a.data.zero_()
    b.data.zero_()
    n_plain = minimize_lbfgs([a, b], lambda: stiff().sum(), maxiter=100)
    assert n_scaled < n_plain, (n_scaled, n_plain)


def test_torch_lbfgs_minimises_rosenbrock():
    p = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    minimize_lbfgs_torch([p], lambda: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2, iters=200)
    np.testing.assert_allclose(p.detach().numpy(), [1.0, 1.0], atol=1e-6)


def test_torch_lbfgs_relative_tolerance_is_scale_free_and_chunks_keep_the_path():
    """A badly scaled least-squares problem (column scales 1..100, a quartic term): checking every
    25 iterations does not change the path (bit-equal to one uncut run); the relative tolerance
    stops before the cap, at the same iteration for the problem and for 8 stacked copies of it
    (a batch of 8 scans: an objective 8x larger)."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(60, 40, generator=gen, dtype=torch.float64) * torch.logspace(0, 2, 40, dtype=torch.float64)
    b = torch.randn(60, generator=gen, dtype=torch.float64)

    def run(copies, rtol, trace=None):
        x = torch.zeros(copies, 40, dtype=torch.float64, requires_grad=True)
        n = minimize_lbfgs_torch([x], lambda: (((x @ A.T - b) ** 2).sum(-1) + 0.1 * (x**4).sum(-1)).sum(), 400,
                                 rtol=rtol, trace=trace)
        return n, x.detach()

    seen = []
    n_uncut, x_uncut = run(1, 0.0)
    n_cut, x_cut = run(1, 0.0, trace=lambda n, loss: seen.append(n))
    assert n_uncut == n_cut == 400 and torch.equal(x_uncut, x_cut) and seen[:2] == [25, 50]
    n1, x1 = run(1, 1e-3)
    n8, x8 = run(8, 1e-3)
    assert n1 == n8 < 400, (n1, n8)  # measured 225 for both


def test_gauss_newton_diagonal_is_exact_for_a_diagonal_jacobian_and_unbiased_for_a_dense_one():
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.5, 2.0, 30.0, 1e-3], dtype=torch.float64)
    # r = diag(a) x: (J^T z)_j^2 = a_j^2 z_j^2 = a_j^2 for every probe
    (d,) = gauss_newton_diagonal(lambda: a * x, [x], n_probe=3)
    np.testing.assert_allclose(d, a.numpy() ** 2, rtol=1e-15)
    (s,) = jacobi_step_sizes(lambda: a * x, [x], [1.0], n_probe=3)
    np.testing.assert_allclose(s, np.clip(1.0 / np.sqrt(a.numpy() ** 2 + 1.0), 1e-3, 1.0), rtol=1e-15)

    A = torch.tensor(np.random.default_rng(6).normal(size=(30, 5)))
    y = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    (d,) = gauss_newton_diagonal(lambda: A @ y, [y], n_probe=4000)
    exact = (A**2).sum(0).numpy()
    # relative std of the estimate ~ sqrt(2 / 4000) = 2.2 %; the bound is 4.5 of those
    np.testing.assert_allclose(d, exact, rtol=0.1)
