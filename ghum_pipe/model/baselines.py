"""The peers a trained model is measured against (used by ``evaluate`` and ``bench/model.py``).

- :func:`pca_shape_model`: the same model with its shape VAE replaced by plain PCA of the
  training rest shapes at the same latent size (the VAE's linear path after ``init_pca``, with
  its MLPs at zero, *is* PCA);
- :func:`template_shape_model`: the same model with its shape space replaced by the
  template's own 32 linear coefficients (learned skinning, joints and PSD kept);
- :func:`template_model`: the classic-model baseline as a model ``fitting.fit_model`` fits like
  any trained one (so it is a fair peer): the template's own parameter space (Anny's 32 linear
  shape coefficients, its 52 expression blendshapes, template skinning and joints, no PSD);
- :func:`fit_template`: the same space fitted by plain Adam (the older, weaker peer);
- :func:`pca_projection_error_mm`: PCA reconstruction error of held-out shapes at k components.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ghum_pipe.model.fitting import masked_sq_error, rigid_init


def pca_shape_model(model, training_rest: torch.Tensor):
    """A copy of ``model`` whose shape space is the PCA of ``training_rest`` (S, V, 3)."""
    from ghum_pipe.model.networks import VAE

    pca = copy.deepcopy(model)
    vae = VAE(pca.shape_vae.dim, pca.shape_vae.latent, hidden=pca.config.hidden)
    vae.init_pca((training_rest - pca.mean_rest).reshape(training_rest.shape[0], -1))
    pca.shape_vae = vae
    return pca


def template_shape_model(model):
    """A copy of ``model`` whose shape space is the template's own (its 32 one-std directions
    at ``model``'s resolution, latent 32)."""
    from ghum_pipe.model.ghum import template_for
    from ghum_pipe.model.networks import VAE

    t = template_for(model.config.resolution, model.config.top_k)
    P = torch.as_tensor(t.shape_basis, dtype=torch.float32).reshape(t.n_shape, -1)
    _, S, Vt = torch.linalg.svd(P, full_matrices=False)
    out = copy.deepcopy(model)
    out.shape_vae = VAE(out.shape_vae.dim, t.n_shape, hidden=out.config.hidden)
    out.shape_vae.set_basis(Vt, S)
    out.config = type(model.config)(**{**model.config.to_dict(), "shape_latent": t.n_shape})
    return out


def template_model(resolution: str = "full", top_k: int = 4):
    """The template itself as a GHUM (``resolution`` full | low): shape space = its 32 one-std
    directions, expression space = its 52 blendshapes (over every vertex they move, a few beyond
    the face mask: eyes, teeth), its skinning weights and shape->joint map, zero PSD. The
    blendshapes' joint motion is dropped, as in the trained models (Anny's is zero)."""
    from ghum_pipe.model.config import ModelConfig
    from ghum_pipe.model.ghum import GHUM, template_for
    from ghum_pipe.model.networks import VAE

    t = template_for(resolution, top_k)
    m = GHUM(ModelConfig(resolution=resolution, shape_latent=t.n_shape, expression_latent=t.n_expression,
                         top_k=top_k, shape_prior_subjects=0.0), t)
    P = torch.as_tensor(t.shape_basis, dtype=torch.float32).reshape(t.n_shape, -1)
    _, S, Vt = torch.linalg.svd(P, full_matrices=False)
    m.shape_vae.set_basis(Vt, S)
    E = torch.as_tensor(np.asarray(t.expression_basis), dtype=torch.float32)  # (E, V, 3)
    moved = torch.nonzero(E.abs().amax((0, 2)) > 0).flatten()
    m.face_index = moved
    m.expression_vae = VAE(len(moved) * 3, t.n_expression, hidden=m.config.hidden)
    _, S, Vt = torch.linalg.svd(E[:, moved].reshape(t.n_expression, -1), full_matrices=False)
    keep = S > 1e-6 * S[0]
    m.expression_vae.set_basis(Vt[keep], S[keep])
    return m.eval()


def template_projection_error_mm(basis: torch.Tensor, test: torch.Tensor) -> float:
    """Mean vertex error (mm) of the best projection of test offsets (M, V, 3) from the
    template's mean onto the template's shape space ``basis`` (K, V, 3)."""
    B = basis.reshape(basis.shape[0], -1).double()
    Y = test.reshape(test.shape[0], -1).double()
    c = torch.linalg.lstsq(B.T, Y.T).solution.T
    return float((c @ B - Y).reshape(test.shape[0], -1, 3).norm(dim=-1).mean() * 1000)


def pca_projection_error_mm(train: torch.Tensor, test: torch.Tensor, k: int) -> float:
    """Mean vertex error (mm) of projecting test (M, V, 3) onto the top-k PCA of train (S, V, 3)."""
    X = train.reshape(train.shape[0], -1).double()
    mean = X.mean(0)
    _, _, Vt = torch.linalg.svd(X - mean, full_matrices=False)
    B = Vt[:k]
    Y = test.reshape(test.shape[0], -1).double() - mean
    rec = (Y @ B.T) @ B
    return float((rec - Y).reshape(test.shape[0], -1, 3).norm(dim=-1).mean() * 1000)


def fit_template(t, target: torch.Tensor, mask: torch.Tensor, init_pose: torch.Tensor | None = None,
                 iters: int = 150) -> torch.Tensor:
    """Fit the template (Anny shape coefficients + pose + expression + translation) to
    registrations (B, V, 3); returns the fitted vertices (B, V, 3) metres."""
    B = target.shape[0]

    class _Mean:  # rigid_init needs the mean rest shape and a joint regressor
        mean_rest = torch.as_tensor(t.rest_verts, dtype=torch.float32)
        n_joints = t.n_joints

        @staticmethod
        def joint_regressor(rest):
            return torch.as_tensor(t.rest_joints, dtype=torch.float32).expand(rest.shape[0], -1, -1)

    if init_pose is None:
        pose, trans = rigid_init(_Mean, target, mask)
    else:
        pose = init_pose.clone()
        with torch.no_grad():
            v, _ = t.pose(None, pose)
            trans = ((target - v) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    shape = torch.zeros(B, t.n_shape, requires_grad=True)
    expr = torch.zeros(B, t.n_expression, requires_grad=True)
    pose.requires_grad_(True)
    trans.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [pose, trans], "lr": 0.01}, {"params": [shape, expr], "lr": 0.05}])
    for it in range(iters):
        opt.zero_grad()
        v, _ = t.pose(shape, pose, expr.clamp(0, 1))
        loss = masked_sq_error(v + trans[:, None], target, mask) * 1e4 + 1e-3 * (shape**2).sum(-1).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        v, _ = t.pose(shape, pose, expr.clamp(0, 1))
        return v + trans[:, None]


def template_joint_error_mm(t, rest_verts: np.ndarray, rest_joints: np.ndarray, joints=None) -> float:
    """The template's own shape->joint map (projection on its basis) vs true joints, mm (mean
    over subjects and ``joints``, default all)."""
    B = t.shape_basis.reshape(t.n_shape, -1)
    c = np.linalg.lstsq(B.T, (rest_verts - t.rest_verts).reshape(len(rest_verts), -1).T, rcond=None)[0].T
    j = t.rest_joints + np.einsum("ns,sjc->njc", c, t.shape_joint_basis)
    err = np.linalg.norm(j - rest_joints, axis=-1)
    return float((err if joints is None else err[:, joints]).mean() * 1000)
