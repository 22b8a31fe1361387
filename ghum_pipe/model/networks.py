"""The learned parts of GHUM (Xu et al. 2020, Sec. 3.1) as small torch modules.

- :class:`VAE`: the shape (beta_b) and expression (beta_f) variational auto-encoders;
- :class:`SparsePSD`: pose-space deformation D from per-joint rotation features to corrective
  offsets of the vertices near each joint;
- :class:`JointRegressor`: the joint-centre predictor C(X~) from the rest shape;
- :func:`skinning_weights`: omega, softmax over each vertex's I allowed joints.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.PReLU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Variational auto-encoder over flattened offsets x (B, D) metres (Kingma & Welling 2014).

    Encoder: MLP (PReLU) -> (mu, logvar); decoder: MLP (PReLU) -> x; reparameterised sampling
    and a KL term as in GHUM. Two choices make it trainable on a CPU from tens of subjects:

    - the encoder's first and the decoder's last layer are the training data's PCA basis
      (``basis`` (M, D), M <= ``max_basis``, frozen once :meth:`init_pca` has run), so the
      MLPs work on M normalised coefficients instead of D = 3V numbers;
    - a linear path (``enc_lin``/``dec_lin``) starts at the PCA solution (z_i = i-th unit-variance
      coefficient), so training starts from PCA and the MLPs learn what PCA misses.
    """

    def __init__(self, dim: int, latent: int, hidden: int = 256, max_basis: int = 128):
        super().__init__()
        self.dim, self.latent, self.max_basis = dim, latent, max_basis
        M = max_basis
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(M, dim))
        self.register_buffer("coef_std", torch.ones(M))
        self.encoder = _mlp([M, hidden, hidden])
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.enc_lin = nn.Linear(M, latent, bias=False)
        self.decoder = nn.Sequential(_mlp([latent, hidden, hidden]), nn.Linear(hidden, M))
        self.dec_lin = nn.Linear(latent, M, bias=False)
        for layer in (self.mu, self.decoder[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.logvar.bias, -8.0)  # start near-deterministic: sigma 0.02

    @torch.no_grad()
    def init_pca(self, x: torch.Tensor, prior: torch.Tensor | None = None, prior_subjects: float = 0.0,
                 batch: int = 32, seed: int = 0) -> None:
        """Set the frozen basis and the linear paths from the PCA of x (N, D) metres.

        With a ``prior`` (K, D), one-standard-deviation directions of a shape space the data is
        expected to share (the template's: x are offsets from its mean), weighted as
        ``prior_subjects`` samples: the basis is the eigen-decomposition of the blended second
        moment about the prior's mean 0, (x^T x + prior_subjects P^T P) / (N + prior_subjects),
        i.e. the SVD of the rows [x; sqrt(prior_subjects) P]. Few subjects leave the prior's
        directions in it (with latent >= K + N every one of them: the model can only add to the
        prior's space); many subjects outweigh it. The SVD is ``blocked_pca.randomized_basis``
        over row batches of ``batch`` rows (exact when N + K <= the sketch width, seeded by
        ``seed`` otherwise): what the Dask schedule runs by subject batch."""
        from ghum_pipe.model.blocked_pca import in_memory_passes, randomized_basis, row_slices

        n = x.shape[0]
        batches = [(x[sl], 1.0) for sl in row_slices(n, batch)]
        center = None
        if prior is None or prior_subjects <= 0:
            prior_subjects = 0.0
            center = x.to(torch.float64).mean(0).to(self.mean.dtype)  # the stored mean, as coefficients() uses it
        else:
            batches.append((prior.to(x.dtype), float(prior_subjects) ** 0.5))
        rows_pass, columns_pass, n_rows = in_memory_passes(batches, center)
        directions, s = randomized_basis(rows_pass, columns_pass, n_rows, x.shape[1], self.max_basis, seed)
        self.set_pca(directions, s, n, prior_subjects, center)

    @torch.no_grad()
    def set_pca(self, directions: torch.Tensor, singular_values: torch.Tensor, n_samples: int,
                prior_subjects: float = 0.0, mean: torch.Tensor | None = None) -> None:
        """The frozen basis from the SVD of :meth:`init_pca`'s rows: ``directions`` (r, D) and
        ``singular_values`` (r,) descending. Keeps the components with real variance (above 1e-4
        of the largest; centred data, no prior: at most N - 1) and their standard deviations:
        s / sqrt(N + prior_subjects) about the prior's mean 0, or s / sqrt(N - 1) about ``mean``."""
        from ghum_pipe.model.blocked_pca import basis_size

        if prior_subjects > 0:
            self.mean.zero_()
            m = basis_size(singular_values, self.max_basis)
            std = singular_values[:m] / (n_samples + prior_subjects) ** 0.5
        else:
            self.mean.copy_(mean)
            m = basis_size(singular_values, self.max_basis, n_samples)
            std = singular_values[:m] / max(1.0, (n_samples - 1) ** 0.5)
        self.set_basis(directions[:m].to(self.basis.dtype), std.to(self.coef_std.dtype))

    @torch.no_grad()
    def set_basis(self, directions: torch.Tensor, std: torch.Tensor) -> None:
        """A linear shape space as the frozen basis: orthonormal ``directions`` (M, D) with
        coefficient standard deviations ``std`` (M,), the linear paths at identity, MLPs at 0."""
        m = directions.shape[0]
        self.basis.zero_()
        self.basis[:m] = directions
        self.coef_std.fill_(1.0)
        self.coef_std[:m] = std
        k = min(m, self.latent)
        self.enc_lin.weight.zero_()
        self.dec_lin.weight.zero_()
        self.enc_lin.weight[:k, :k] = torch.eye(k)
        self.dec_lin.weight[:k, :k] = torch.eye(k)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) metres -> normalised PCA coefficients (B, M)."""
        return (x - self.mean) @ self.basis.T / self.coef_std

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D) metres -> mu, logvar (B, L)."""
        c = self.coefficients(x)
        h = self.encoder(c)
        return self.enc_lin(c) + self.mu(h), self.logvar(h)

    def decode_coefficients(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_lin(z) + self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> x (B, D) metres."""
        return self.mean + (self.decode_coefficients(z) * self.coef_std) @ self.basis

    def forward(self, x: torch.Tensor, sample: bool = True, is_coefficients: bool = False):
        """Returns reconstructed coefficients (B, M), target coefficients, mu, logvar;
        reparameterised z = mu + eps * sigma. ``is_coefficients``: x is already
        :meth:`coefficients` (training computes them once)."""
        c = x if is_coefficients else self.coefficients(x)
        h = self.encoder(c)
        mu, logvar = self.enc_lin(c) + self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode_coefficients(z), c, mu, logvar

    def reconstruction_m2(self, c_hat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Squared reconstruction error in metres^2 (the basis is orthonormal), batch mean."""
        return (((c_hat - c) * self.coef_std) ** 2).sum(-1).mean()

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) averaged over the batch."""
        return (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)).mean()


def pose_features(rotmats: torch.Tensor) -> torch.Tensor:
    """GHUM's PSD input: R_i(theta_i) - R_i(rest) = R_i - I per joint, (B, J, 3, 3) -> (B, J, 9)."""
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    return (rotmats - eye).flatten(-2)


def psd_pairs(rest_verts: np.ndarray, rest_joints: np.ndarray, parents: np.ndarray, skin_indices: np.ndarray,
              skin_weights: np.ndarray, radius_m: float, skip_joints: tuple[int, ...] = (0,)) -> np.ndarray:
    """The PSD sparsity pattern: (P, 2) int64 (joint, vertex) pairs.

    A joint may move a vertex if the vertex is skinned (weight > 0) to it or its parent (a
    bending elbow bulges the upper arm) and lies within ``radius_m`` of the joint centre. The root (global rotation)
    gets no corrective: a rigid turn of the body does not deform it.
    """
    J = len(parents)
    infl = np.zeros((rest_verts.shape[0], J), dtype=bool)
    rows = np.repeat(np.arange(rest_verts.shape[0]), skin_indices.shape[1])
    ok = skin_weights.ravel() > 0
    infl[rows[ok], skin_indices.ravel()[ok]] = True
    pairs = []
    for j in range(J):
        if j in skip_joints:
            continue
        group = [j] + ([int(parents[j])] if parents[j] >= 0 else [])
        near = np.linalg.norm(rest_verts - rest_joints[j], axis=1) < radius_m
        v = np.nonzero(infl[:, group].any(1) & near)[0]
        pairs.append(np.stack([np.full_like(v, j), v], 1))
    return np.concatenate(pairs).astype(np.int64)


class SparsePSD(nn.Module):
    """D: per (joint, vertex) pair a linear map from the joint's 9 features to a 3-D offset,
    summed per vertex (a sparse linear layer; the paper's D is sparse with learned locality:
    here the pattern fixes where it may act, and inside it the ridge of the closed-form solve,
    ``solvers.solve_skinning_psd``, keeps the pairs the data does not need near 0; a group-L1
    reweighting on top, tried, kept 3-7 % of the pairs but recovered the planted corrective
    only 0.02 better). Zero at the rest pose by construction (features are R - I)."""

    def __init__(self, pairs: np.ndarray, n_verts: int):
        super().__init__()
        self.n_verts = n_verts
        self.register_buffer("pair_joint", torch.as_tensor(pairs[:, 0]))
        self.register_buffer("pair_vert", torch.as_tensor(pairs[:, 1]))
        self.weight = nn.Parameter(torch.zeros(len(pairs), 9, 3))

    def forward(self, rotmats: torch.Tensor) -> torch.Tensor:
        """rotmats (B, J, 3, 3) -> rest-space corrective offsets (B, V, 3) metres."""
        feats = pose_features(rotmats)[:, self.pair_joint]  # (B, P, 9)
        per_pair = torch.einsum("bpk,pkc->bpc", feats, self.weight)
        out = torch.zeros(rotmats.shape[0], self.n_verts, 3, dtype=per_pair.dtype, device=per_pair.device)
        return out.index_add(1, self.pair_vert, per_pair)


class JointRegressor(nn.Module):
    """C: rest joint centres from the rest shape, c = J0 + B_J (P (X~ - X0)) (rank S).

    Initialised from the template's linear shape space (P = pseudo-inverse of the shape basis,
    B_J = its joint basis), so it starts as the template's own shape->joint map; training
    learns ``joint0`` and ``joint_basis`` (``train.update_joint_regressor``)."""

    def __init__(self, rest_verts: np.ndarray, rest_joints: np.ndarray, shape_basis: np.ndarray,
                 shape_joint_basis: np.ndarray):
        super().__init__()
        S, V, _ = shape_basis.shape
        B = shape_basis.reshape(S, -1)
        proj = np.linalg.pinv(B).T  # (S, 3V): coefficients = proj @ dx
        self.register_buffer("rest_verts", torch.as_tensor(rest_verts, dtype=torch.float32))
        # RMS vertex motion (m) per unit coefficient: the scale of each predictor when C is learned
        self.register_buffer("coef_rms", torch.as_tensor(np.sqrt((B**2).mean(1)), dtype=torch.float32))
        self.joint0 = nn.Parameter(torch.as_tensor(rest_joints, dtype=torch.float32))
        self.proj = nn.Parameter(torch.as_tensor(proj.reshape(S, V, 3), dtype=torch.float32))
        self.joint_basis = nn.Parameter(torch.as_tensor(shape_joint_basis, dtype=torch.float32))

    def coefficients(self, rest: torch.Tensor) -> torch.Tensor:
        """rest (B, V, 3) -> the rest shape's coefficients (B, S) in the template's shape space."""
        return torch.einsum("bvc,svc->bs", rest - self.rest_verts, self.proj)

    def forward(self, rest: torch.Tensor) -> torch.Tensor:
        """rest (B, V, 3) -> joints (B, J, 3) metres."""
        coeffs = self.coefficients(rest)
        return self.joint0 + torch.einsum("bs,sjc->bjc", coeffs, self.joint_basis)


def skinning_weights(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """omega (V, I): softmax over each vertex's allowed influences; non-negative, rows sum to 1."""
    return torch.softmax(logits.masked_fill(~allowed, -1e4), dim=-1)
