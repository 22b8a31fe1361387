"""Closed-form model updates of training step (b) (poses fixed), batched over vertices.

Both the PSD D and the skinning weights omega are, with everything else fixed, linear in their
parameters vertex by vertex, so step (b) solves them exactly instead of by gradient steps:

- :func:`solve_psd`: for each vertex v, the rest-space residual r_kv of scan k (registration
  brought to the rest pose by inverse skinning, minus the subject's rest shape and expression)
  is regressed on the pose features f_j(theta_k) = R_j - I of the joints j allowed to move v
  (the sparsity pattern), with a ridge penalty: (sum_k m_kv F_kv^T F_kv + lambda I) W_v = sum_k m_kv F_kv^T r_kv.
- :func:`solve_joint_regressor`: the joint regressor C refitted to per-subject joint centres
  (ridge regression from the rest shape's coefficients).
- :func:`solve_skinning`: for each vertex, y_kv - t_k = sum_i w_i (T_{k,j_i} x_kv) is linear in
  w (I influences); solved in least squares with sum(w) = 1 (Lagrange), a ridge pull towards
  the current weights, then clipped to >= 0 and renormalised.
- :func:`solve_skinning_psd`: both together, one least-squares problem per vertex; this is what
  training uses (solved one after the other, skinning takes part of a corrective first; the
  two single solvers remain as the peers it is tested against). Its priors are the template's:
  omega pulled towards the template's weights, D towards 0, each worth a number of average
  scans per coordinate (:func:`scan_prior_ridge`), so that a few scans leave the model near the
  template.
"""

from __future__ import annotations

import numpy as np
import torch


def pair_table(pair_vert: torch.Tensor, n_verts: int) -> torch.Tensor:
    """(V, Pmax) indices into the pair list of each vertex's pairs, -1 padded."""
    pv = pair_vert.cpu().numpy()
    order = np.argsort(pv, kind="stable")
    counts = np.bincount(pv, minlength=n_verts)
    pmax = max(1, int(counts.max()))
    table = -np.ones((n_verts, pmax), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(pv)) - np.repeat(starts, counts)
    table[pv[order], slot] = order
    return torch.as_tensor(table)


def _centre(x: torch.Tensor, m: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x (N, v, ...) minus its F-weighted mean per group (subject) and vertex (m (N, v))."""
    S = int(groups.max()) + 1
    mm = m.reshape(*m.shape, *([1] * (x.dim() - 2)))
    wsum = torch.zeros(S, m.shape[1], dtype=m.dtype).index_add(0, groups, m).clamp_min(1e-9)
    wsum = wsum.reshape(*wsum.shape, *([1] * (x.dim() - 2)))
    return x - (torch.zeros(S, *x.shape[1:], dtype=x.dtype).index_add(0, groups, x * mm) / wsum)[groups]


@torch.no_grad()
def solve_psd(feats: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor, pair_joint: torch.Tensor,
              table: torch.Tensor, ridge: float, chunk: int = 512, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Ridge-regressed PSD weights.

    With ``groups`` (N,) subject indices, features and residuals are centred per subject and
    vertex (F-weighted) first: that is the exact least-squares slope when every subject also has
    its own free rest shape (an intercept; Frisch-Waugh), so D is not biased by whatever mean
    corrective the subjects' rest shapes currently hold. Without it the alternation between rest
    shapes and D converges very slowly (poses rarely visit theta = 0, so features and intercept
    are nearly collinear) and D came out anti-correlated with the planted corrective.

    Args:
        feats: (N, J, 9) pose features R - I per scan; residual: (N, V, 3) rest-space metres;
        mask: (N, V) filter F; pair_joint: (P,) joint of each pair; table: (V, Pmax) from
        :func:`pair_table`; ridge: lambda (in units of squared features summed over scans).
    Returns:
        (P, 9, 3) weights for :class:`~ghum_pipe.model.networks.SparsePSD`.
    """
    P = pair_joint.shape[0]
    V, pmax = table.shape
    out = torch.zeros(P, 9, 3, dtype=torch.float64)
    for lo in range(0, V, chunk):
        tb = table[lo:lo + chunk]  # (v, Pmax)
        valid = tb >= 0
        joints = pair_joint[tb.clamp_min(0)]  # (v, Pmax)
        F = feats[:, joints].float() * valid[None, ..., None]  # (N, v, Pmax, 9)
        F = F.reshape(F.shape[0], F.shape[1], -1)  # (N, v, D)
        m = mask[:, lo:lo + chunk].float()
        r = residual[:, lo:lo + chunk].float()
        if groups is not None:
            F, r = _centre(F, m, groups), _centre(r, m, groups)
        # normal equations assembled in float32 (features are O(1)), solved in float64
        G = torch.einsum("nvd,nve->vde", F * m[..., None], F).double()
        rhs = torch.einsum("nvd,nvc->vdc", F * m[..., None], r).double()
        D = G.shape[-1]
        G = G + ridge * torch.eye(D, dtype=G.dtype)
        W = torch.linalg.solve(G, rhs).reshape(-1, pmax, 9, 3)  # (v, Pmax, 9, 3)
        out[tb[valid]] = W[valid]
    return out.float()


@torch.no_grad()
def solve_skinning(rest_x: torch.Tensor, rel: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   skin_indices: torch.Tensor, allowed: torch.Tensor, current: torch.Tensor, ridge: float,
                   chunk: int = 512) -> torch.Tensor:
    """Least-squares skinning weights, sum 1, non-negative, on the allowed influences.

    Args:
        rest_x: (N, V, 3) rest-space points being skinned (shape + expression + PSD);
        rel: (N, J, 4, 4) rest-to-posed joint transforms; target: (N, V, 3) posed points minus
        translation; mask: (N, V) filter F; skin_indices/allowed/current: (V, I).
        ridge: pull towards ``current`` (metres^2 per unit weight^2, summed over scans).
    Returns:
        (V, I) weights.
    """
    V, I = skin_indices.shape
    out = current.clone().double()
    for lo in range(0, V, chunk):
        sl = slice(lo, lo + chunk)
        T = rel[:, skin_indices[sl]].double()  # (N, v, I, 4, 4)
        x = rest_x[:, sl].double()
        cols = torch.einsum("nvimk,nvk->nvim", T[..., :3, :3], x) + T[..., :3, 3]  # (N, v, I, 3)
        al = allowed[sl].double()
        cols = cols * al[None, :, :, None]
        m = mask[:, sl].double()
        A = torch.einsum("nv,nvic,nvjc->vij", m, cols, cols)
        b = torch.einsum("nv,nvic,nvc->vi", m, cols, target[:, sl].double())
        cur = current[sl].double()
        A = A + ridge * torch.eye(I, dtype=A.dtype) + torch.diag_embed(1.0 - al)  # pin disallowed at 0
        b = b + ridge * cur
        # min w^T A w - 2 b^T w  s.t.  1^T w = 1:  w = A^-1 (b - mu 1),  mu from the constraint
        Ainv_b = torch.linalg.solve(A, b[..., None])[..., 0]
        Ainv_1 = torch.linalg.solve(A, al[..., None])[..., 0]
        mu = ((Ainv_b * al).sum(-1) - 1.0) / (Ainv_1 * al).sum(-1).clamp_min(1e-12)
        w = (Ainv_b - mu[:, None] * Ainv_1).clamp_min(0.0) * al
        out[sl] = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return out.float()


@torch.no_grad()
def solve_joint_regressor(coeffs: torch.Tensor, joints: torch.Tensor, joint0: torch.Tensor, basis: torch.Tensor,
                          ridge: float, coef_rms: torch.Tensor, intercept_subjects: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit the linear joint regressor c(X~) = joint0 + sum_q coeffs_q basis_q to per-subject
    joint centres, by ridge regression towards a prior map (``joint0``, ``basis``: the
    template's, so that rounds do not walk along what the subjects leave undetermined).

    The intercept is pulled towards the prior's as strongly as ``intercept_subjects`` subjects
    whose joints the prior predicts exactly (its ridge on the constant predictor, which sums
    to S over the subjects): k subjects keep S / (S + k) of what the data say.

    The predictors are the coefficients in metres of vertex motion (coeffs_q * coef_rms_q), so
    the ridge lets the joints follow the shape directions that move the body a lot (Anny's first
    coefficient is stature: 14 cm RMS) and barely the mm-sized ones, which tens of subjects
    cannot pin down (measured: with unit-variance predictors the held-out joint error was
    no better than the intercept alone).

    Args:
        coeffs: (S, Q) shape coefficients of the subjects' rest shapes;
        joints: (S, J, 3) target rest joints; joint0: (J, 3), basis: (Q, J, 3) the prior map;
        ridge: metres^2 (per predictor, against sum over subjects of predictor^2);
        coef_rms: (Q,) RMS vertex motion per unit coefficient, metres.
    Returns:
        new joint0 (J, 3), basis (Q, J, 3).
    """
    S, Q = coeffs.shape
    rms = coef_rms.double()
    X = torch.cat([torch.ones(S, 1, dtype=torch.float64), coeffs.double() * rms], 1)  # (S, 1+Q)
    prior = torch.cat([joint0[None], basis / coef_rms[:, None, None]], 0).double().reshape(1 + Q, -1)
    reg = torch.full((1 + Q,), ridge, dtype=torch.float64)
    reg[0] = max(intercept_subjects, 1e-6)
    A = X.T @ X + torch.diag(reg)
    b = X.T @ joints.double().reshape(S, -1) + reg[:, None] * prior
    sol = torch.linalg.solve(A, b).reshape(1 + Q, -1, 3)
    return sol[0].float(), (sol[1:] * rms[:, None, None]).float()


@torch.no_grad()
def solve_skinning_psd(feats: torch.Tensor, rest_x: torch.Tensor, psd_now: torch.Tensor, rel: torch.Tensor,
                       target: torch.Tensor, mask: torch.Tensor, skin_indices: torch.Tensor, allowed: torch.Tensor,
                       current: torch.Tensor, pair_joint: torch.Tensor, table: torch.Tensor, skin_ridge: float,
                       psd_ridge: float, psd_vertices: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                       chunk: int = 256, prior: torch.Tensor | None = None, skin_prior_scans: float = 0.0,
                       psd_prior_scans: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Skinning weights omega and PSD D solved together, per vertex (one Gauss-Newton step).

    Solved one after the other, skinning takes the part of a pose corrective that a weight
    change can mimic first and D then only crawls back to it over many passes (measured on
    synthetic data with the true rest shapes, poses and joints: 0.53 -> 0.61 of the planted
    corrective in 4 passes, against 0.85 for D alone with the true weights). Here both come from
    one least-squares problem in the rest space. With the current weights w0 (blended transform
    A0 = sum_i w0_i T_i, rotation part R0) and PSD offsets d0, a weight change delta (sum 0)
    moves the unposed registration by exactly R0^-1 sum_i delta_i T_i (x + d0):

        R0^-1 (y - t0) - x = F W + C delta,   C_i = R0^-1 (T_i (x + d0) - A0 (x + d0))

    (x: rest shape + expression; F: the vertex's pose features, W: its PSD weights), linear in
    (W, delta) up to the delta * (d - d0) term, which the next pass (``TrainConfig.inner``)
    takes up. W is eliminated per coordinate (Schur complement; D's normal matrix is shared by
    the three coordinates), then delta solved with sum(delta) = 0, clipped so that
    w = w0 + delta >= 0 and renormalised, and W back-substituted with the clipped delta. With
    ``groups`` everything is centred per subject first, as in :func:`solve_psd`.

    Args:
        feats: (N, J, 9) pose features; rest_x: (N, V, 3) rest shape + expression (no PSD);
        psd_now: (N, V, 3) the current PSD offsets d0; rel: (N, J, 4, 4) rest-to-posed joint
        transforms; target: (N, V, 3) posed registrations minus translation; mask: (N, V) F;
        skin_indices/allowed/current: (V, I); pair_joint, table: the PSD's sparsity pattern
        (:func:`pair_table`); skin_ridge: pull of omega towards ``current`` (m^2, as in
        :func:`solve_skinning`); psd_ridge: as in :func:`solve_psd`; psd_vertices: (V,) bool,
        vertices D may move (None: all); prior (V, I): the weights omega is pulled towards with
        the strength of ``skin_prior_scans`` scans, and D towards 0 with ``psd_prior_scans``
        (:func:`skinning_psd_solve`).
    Returns:
        omega (V, I) and the PSD weights (P, 9, 3).
    """
    P = pair_joint.shape[0]
    V, pmax = table.shape
    W_out = torch.zeros(P, 9, 3, dtype=torch.float64)
    w_out = current.clone().double()
    for lo in range(0, V, chunk):
        sl = slice(lo, lo + chunk)
        pv = None if psd_vertices is None else psd_vertices[sl]
        sums = skinning_psd_normals(feats, rest_x[:, sl], psd_now[:, sl], rel, target[:, sl], mask[:, sl],
                                    skin_indices[sl], allowed[sl], current[sl], pair_joint, table[sl], pv, groups)
        w, W = skinning_psd_solve(sums, allowed[sl], current[sl], table[sl], skin_ridge, psd_ridge, pv,
                                  None if prior is None else prior[sl], skin_prior_scans, psd_prior_scans)
        valid = pair_mask(table[sl], pv)
        W_out[table[sl][valid]] = W[valid]
        w_out[sl] = w
    return w_out.float(), W_out.float()


def pair_mask(table: torch.Tensor, psd_vertices: torch.Tensor | None) -> torch.Tensor:
    """(v, Pmax) bool: the table's slots that hold a pair D may use."""
    valid = table >= 0
    return valid if psd_vertices is None else valid & psd_vertices[:, None]


NORMAL_KEYS = ("G", "B", "b", "CC", "Cr", "n")


@torch.no_grad()
def skinning_psd_normals(feats: torch.Tensor, rest_x: torch.Tensor, psd_now: torch.Tensor, rel: torch.Tensor,
                         target: torch.Tensor, mask: torch.Tensor, skin_indices: torch.Tensor, allowed: torch.Tensor,
                         current: torch.Tensor, pair_joint: torch.Tensor, table: torch.Tensor,
                         psd_vertices: torch.Tensor | None = None,
                         groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The sums over scans of :func:`solve_skinning_psd`'s normal equations for one block of v
    vertices (all arguments restricted to it: rest_x/psd_now/target (N, v, 3), mask (N, v),
    skin_indices/allowed/current (v, I), table (v, Pmax), psd_vertices (v,)).

    With ``groups`` the data are centred per subject, so scans of different subjects enter only
    through sums: the sums of disjoint sets of whole subjects add up to the sums of their union
    (how training splits this by subject batch). Returns float64 G (v, D, D) = sum m F^T F (no
    ridge), B (v, 3, D, I), b (v, 3, D), CC (v, I, I), Cr (v, I), n (v,) the number of scans
    (F-weighted) that see each vertex (what the priors' scan-equivalents are counted against)."""
    valid = pair_mask(table, psd_vertices)
    F = (feats[:, pair_joint[table.clamp_min(0)]].double() * valid[None, ..., None]).flatten(2)  # (N, v, D)
    m = mask.double()
    al = allowed.double()
    w0 = current.double()
    T = rel[:, skin_indices].double()  # (N, v, I, 4, 4)
    A0 = torch.einsum("vi,nvimk->nvmk", w0, T)
    R0inv = torch.linalg.inv(A0[..., :3, :3])
    x = rest_x.double()
    xd = x + psd_now.double()
    Tx = torch.einsum("nvimk,nvk->nvim", T[..., :3, :3], xd) + T[..., :3, 3]  # (N, v, I, 3)
    A0x = torch.einsum("nvmk,nvk->nvm", A0[..., :3, :3], xd) + A0[..., :3, 3]
    C = torch.einsum("nvmk,nvik->nvim", R0inv, Tx - A0x[:, :, None]) * al[None, :, :, None]
    r = torch.einsum("nvmk,nvk->nvm", R0inv, target.double() - A0[..., :3, 3]) - x
    if groups is not None:
        F, C, r = _centre(F, m, groups), _centre(C, m, groups), _centre(r, m, groups)
    Fm = F * m[..., None]
    return dict(G=torch.einsum("nvd,nve->vde", Fm, F), B=torch.einsum("nvd,nvic->vcdi", Fm, C),
                b=torch.einsum("nvd,nvc->vcd", Fm, r), CC=torch.einsum("nv,nvic,nvjc->vij", m, C, C),
                Cr=torch.einsum("nv,nvic,nvc->vi", m, C, r), n=m.sum(0))


@torch.no_grad()
def skinning_psd_solve(sums: dict[str, torch.Tensor], allowed: torch.Tensor, current: torch.Tensor,
                       table: torch.Tensor, skin_ridge: float, psd_ridge: float,
                       psd_vertices: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                       skin_prior_scans: float = 0.0,
                       psd_prior_scans: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """omega (v, I) float64 and PSD weights (v, Pmax, 9, 3) float64 of one vertex block from the
    summed normal equations of :func:`skinning_psd_normals` (rows of unused table slots are 0).

    Priors counted in scans (:func:`scan_prior_ridge`): D is pulled towards 0 and omega towards
    ``prior`` (v, I), the template's weights, as strongly as ``psd_prior_scans`` /
    ``skin_prior_scans`` average scans of the vertex pull them to the data's answer (on top of
    the fixed ``psd_ridge`` and ``skin_ridge``; the latter damps each Gauss-Newton step towards
    ``current``). A direction seen by k such scans then moves k / (k + n0) of the way from the
    prior to the data's answer: with a few scans the model stays near the template."""
    pmax = table.shape[1]
    I = allowed.shape[1]
    al = allowed.double()
    w0 = current.double()
    n = sums.get("n")
    G = sums["G"]
    eye_d = torch.eye(G.shape[-1], dtype=torch.float64)
    G = G + psd_ridge * eye_d
    if psd_prior_scans > 0 and n is not None:
        G = G + torch.diag_embed(scan_prior_ridge(sums["G"], n, psd_prior_scans))
    B, b = sums["B"], sums["b"]
    L = torch.linalg.cholesky(G)[:, None]  # (v, 1, D, D)
    GiB = torch.cholesky_solve(B, L)
    Gib = torch.cholesky_solve(b[..., None], L)[..., 0]
    S = sums["CC"] - torch.einsum("vcdi,vcdj->vij", B, GiB)
    s = sums["Cr"] - torch.einsum("vcdi,vcd->vi", GiB, b)
    if prior is not None and skin_prior_scans > 0 and n is not None:
        lam_w = scan_prior_ridge(S, n, skin_prior_scans) * al  # (v, I)
        S = S + torch.diag_embed(lam_w)
        s = s + lam_w * (prior.double() - w0)
    S = S + skin_ridge * torch.eye(I, dtype=S.dtype) + torch.diag_embed(1.0 - al)
    Sinv_s = torch.linalg.solve(S, s[..., None])[..., 0]
    Sinv_1 = torch.linalg.solve(S, al[..., None])[..., 0]
    mu = (Sinv_s * al).sum(-1) / (Sinv_1 * al).sum(-1).clamp_min(1e-12)
    w = (w0 + (Sinv_s - mu[:, None] * Sinv_1)).clamp_min(0.0) * al
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    W = (Gib - torch.einsum("vcdi,vi->vcd", GiB, w - w0))  # (v, 3, D)
    W = W.transpose(1, 2).reshape(-1, pmax, 9, 3) * pair_mask(table, psd_vertices)[..., None, None]
    return w, W


def scan_prior_ridge(normal: torch.Tensor, n: torch.Tensor, scans: float) -> torch.Tensor:
    """(v, D) diagonal ridge worth ``scans`` average scans: scans * diag(normal_v) / n_v, with
    normal (v, D, D) the data's normal matrix summed over the n_v scans that see vertex v.

    Along each coordinate (one pose feature of one joint for D, one influence for omega) the
    prior then weighs as much as ``scans`` scans of the average size there: a coordinate seen
    by k such scans keeps about k / (k + scans) of the data's least-squares answer, whatever
    the units and however unevenly the joints rotate. Vertices no scan sees get 0."""
    d = torch.diagonal(normal, dim1=-2, dim2=-1)
    return scans * d / n.double().clamp_min(1e-9)[:, None] * (n > 0)[:, None]
