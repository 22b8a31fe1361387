"""The template as the prior of every learned part: with a few training samples the learned
model stays at the template's, with many the data outweigh it (exact checks on known data)."""

from __future__ import annotations

import numpy as np
import torch

from ghum_pipe.model.networks import VAE
from ghum_pipe.model.solvers import scan_prior_ridge, skinning_psd_solve, solve_joint_regressor


def _one_vertex_sums(k: int, f: float, r: float, I: int = 2) -> dict:
    """Normal sums of k identical scans at one vertex: one PSD coordinate (feature f, residual
    r, 9 coordinates of one pair, the others 0) and no skinning signal."""
    D = 9
    G = torch.zeros(1, D, D, dtype=torch.float64)
    G[0, 0, 0] = k * f * f
    b = torch.zeros(1, 3, D, dtype=torch.float64)
    b[0, 0, 0] = k * f * r
    return dict(G=G, B=torch.zeros(1, 3, D, I, dtype=torch.float64), b=b,
                CC=torch.zeros(1, I, I, dtype=torch.float64), Cr=torch.zeros(1, I, dtype=torch.float64),
                n=torch.full((1,), float(k), dtype=torch.float64))


def test_psd_prior_counts_as_scans():
    """k identical scans against a prior worth n0 scans: D keeps k / (k + n0) of the data's
    least-squares answer r / f, whatever the feature's size (exact up to the 1e-12 ridge)."""
    table = torch.zeros(1, 1, dtype=torch.int64)
    allowed = torch.ones(1, 2, dtype=torch.bool)
    w0 = torch.tensor([[0.7, 0.3]])
    for f in (0.05, 1.0):
        for k in (1, 3, 50):
            sums = _one_vertex_sums(k, f, 0.01)
            _, W = skinning_psd_solve(sums, allowed, w0, table, 1e-12, 1e-12, psd_prior_scans=2.0)
            np.testing.assert_allclose(float(W[0, 0, 0, 0]), k / (k + 2.0) * 0.01 / f, rtol=1e-6)


def test_skinning_prior_pulls_towards_the_template_not_the_current_weights():
    """From any current weights, k scans that want other weights than the template's end
    between the two as the scan count says: the pull is towards the template's weights, not the
    current ones (exact: along the sum-preserving direction (1, -1), whose two coordinates
    both see each scan, a scan counts twice against the per-coordinate prior)."""
    table = torch.zeros(1, 1, dtype=torch.int64)
    allowed = torch.ones(1, 2, dtype=torch.bool)
    prior = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    current = torch.tensor([[0.5, 0.5]])
    # one influence direction: moving weight from joint 1 to joint 0 by delta moves the vertex by c * delta
    c, want = 0.05, 0.6  # the data want w0 = 0.6 (delta = +0.1 from current)
    for k in (1, 4, 100):
        sums = _one_vertex_sums(k, 1.0, 0.0)
        C = torch.tensor([c, -c], dtype=torch.float64)
        sums["CC"] = k * torch.outer(C, C)[None]
        sums["Cr"] = k * C[None] * 2 * c * (want - 0.5)  # residual of the current weights: C . (d, -d) = 2 c d
        w, _ = skinning_psd_solve(sums, allowed, current, table, 0.0, 1e-12, prior=prior, skin_prior_scans=3.0)
        # k 4c^2 (d - 0.1)^2 + 3 c^2 ((d - 0.3)^2 + (-d + 0.3)^2) is least at:
        expected = 0.5 + (4 * k * (want - 0.5) + 2 * 3.0 * 0.3) / (4 * k + 2 * 3.0)
        np.testing.assert_allclose(float(w[0, 0]), expected, rtol=1e-6)
    ridge = scan_prior_ridge(torch.eye(2, dtype=torch.float64)[None] * 4.0, torch.tensor([0.0]), 3.0)
    assert float(ridge.abs().max()) == 0.0  # an unseen vertex has no pull (nothing to pull against)


def test_shape_space_keeps_the_template_with_few_subjects(template):
    """3 training people outside the template's space, shape VAE (latent 64) on the template's
    prior weighted as 32 subjects and trained as ``train`` does: people of the template's own
    space are reconstructed as by the template (<= 0.05 mm, float32 round-off plus what the
    MLPs trained on 3 people add), and the training people better than by the template. The
    data-only PCA (prior 0) cannot hold the template's people (2 directions)."""
    from ghum_pipe.model.train import fit_vae

    g = torch.Generator().manual_seed(0)
    P = torch.as_tensor(template.shape_basis, dtype=torch.float32)  # (32, V, 3) one-std directions
    V = P.shape[1]
    smooth = torch.as_tensor(template.rest_verts, dtype=torch.float32)
    extra = torch.stack([torch.sin(smooth[:, 2:3] * (7 + i) + i) * 0.01 * smooth.new_tensor([1.0, 0.5, 0.0])
                         for i in range(3)])  # a 1 cm pattern the template's space does not hold
    train = torch.einsum("ns,svc->nvc", torch.randn(3, 32, generator=g), P) + extra
    test = torch.einsum("ns,svc->nvc", torch.randn(5, 32, generator=g), P)

    def err_mm(vae, x):
        with torch.no_grad():
            rec = vae.decode(vae.encode(x.reshape(len(x), -1))[0]).reshape(len(x), V, 3)
        return float((rec - x).norm(dim=-1).mean() * 1000)

    torch.manual_seed(0)
    vae = VAE(V * 3, 64, hidden=64)
    fit_vae(vae, train.reshape(3, -1), 100, 1e-3, 0, P.reshape(32, -1), 32.0)
    data_only = VAE(V * 3, 64, hidden=64)
    fit_vae(data_only, train.reshape(3, -1), 0, 1e-3, 0)
    from ghum_pipe.model.baselines import template_projection_error_mm

    tpl = lambda x: template_projection_error_mm(P, x)  # noqa: E731  the template's best projection
    print("held-out template people mm: prior", err_mm(vae, test), "data only", err_mm(data_only, test),
          "| training people: prior", err_mm(vae, train), "template", tpl(train))
    assert err_mm(vae, test) <= 0.05
    assert err_mm(data_only, test) > 10 * max(err_mm(vae, test), 0.1)
    assert err_mm(vae, train) < 0.5 * tpl(train)


def test_joint_regressor_prior_counts_as_subjects_and_is_the_template():
    """C's refit: S subjects whose joints all sit d from the prior map keep S / (S + k) of d in
    the intercept against a prior worth k subjects (exact: the predictors are centred, so the
    intercept alone carries d) and the basis stays the prior's, which already explains the
    data."""
    gen = torch.Generator().manual_seed(0)
    Q, J = 4, 3
    joint0 = torch.randn(J, 3, generator=gen) * 0.1
    basis = torch.randn(Q, J, 3, generator=gen) * 0.01
    rms = torch.full((Q,), 0.02)
    d = torch.tensor([0.01, -0.02, 0.005])
    for S in (1, 3, 40):
        coeffs = torch.randn(S, Q, generator=gen, dtype=torch.float64)
        coeffs = (coeffs - coeffs.mean(0)).float() if S > 1 else torch.zeros(1, Q)
        joints = joint0 + torch.einsum("sq,qjc->sjc", coeffs, basis) + d
        for k in (0.0, 1.0, 4.0):
            j0, b = solve_joint_regressor(coeffs, joints, joint0, basis, 1e-3, rms, intercept_subjects=k)
            np.testing.assert_allclose((j0 - joint0).numpy(), np.broadcast_to(S / (S + k) * d.numpy(), (J, 3)),
                                       atol=1e-6)
            np.testing.assert_allclose(b.numpy(), basis.numpy(), atol=1e-6)  # the data need no basis change
