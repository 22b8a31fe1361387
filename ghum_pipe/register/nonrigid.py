"""Non-rigid refinement: free per-vertex positions on top of the posed template, ACAP-regularised.

Energy (metres^2), minimised by local-global alternation (Sorkine & Alexa, SGP 2007, sec. 3):

    E(X) = w_reg * sum_i sum_{j in N(i)} |(x_i - x_j) - s_i R_i (p_i - p_j)|^2      (ACAP, Yoshiyasu 2014)
         + sum_fwd  w_v |x_v - y_v|^2            template -> scan, y_v = point-to-plane target
         + sum_bwd  w_q |sum_k b_qk x_{f_qk} - q|^2   scan -> template (closest point on the reg.)
         + eps * |X - P|^2                       keeps parts without any data where the fit put them

P are the posed template vertices of the skeleton fit. Local step: the per-vertex similarity
(s_i, R_i) by SVD; global step: one sparse SPD solve (same matrix for x, y, z). The point-to-
plane term enters as the projection of x_v onto the scan's tangent plane at its closest point
(plus a little of the point itself), which is the fixed point of point-to-plane ICP.

Hole-aware: a template vertex takes a template->scan match only if it is close, its normal
agrees with the scan's, and the match is not on the rim of a scan hole; scan->template
matches exist only where there is scan. So template parts over holes (soles, crotch, armpits)
get no data and follow the regulariser. Interior parts (eyes' backs, mouth) never take matches.
``w_reg`` is annealed from stiff to loose (progressive registration, as in GHUM sec. 3.1).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ghum_pipe.ops.normals import face_normals, vertex_normals
from ghum_pipe.register.backend import MeshDistance
from ghum_pipe.register.losses import edge_graph, fit_vertex_similarities
from ghum_pipe.register.target import ScanTarget


@dataclass(frozen=True)
class NonrigidConfig:
    # (w_reg, iterations) from stiff to loose; w_reg is relative to the data terms
    schedule: tuple[tuple[float, int], ...] = ((20.0, 3), (5.0, 3), (1.5, 3), (0.5, 3), (0.2, 4))
    max_dist_m: tuple[float, float] = (0.05, 0.015)  # match rejection distance, annealed first -> last
    max_angle_deg: float = 60.0
    sigma_m: float = 0.01  # Geman-McClure scale of the match weights
    point_weight: float = 0.1  # share of point-to-point in the template->scan target
    w_bwd: float = 1.0  # weight of scan->template matches relative to template->scan
    n_bwd: int = 30000  # scan samples matched per iteration
    anchor: float = 1e-4  # eps above
    conformal: bool = True  # ACAP (per-vertex scale) rather than ARAP
    w_landmark: float = 2.0  # per body/hand landmark (x confidence); keeps limbs and fingers from sliding
    # face landmarks: 0, their ~5 mm detector noise is larger than what the dense scan data leaves
    w_landmark_face: float = 0.0
    # the lips' contact surfaces (template vertices this close to the mouth cavity or tongue)
    # take no matches: a scanner never sees them on a closed mouth, and with matches they flip
    # between the upper and the lower lip (the same scan in m and mm ended 2-4 mm apart there)
    mouth_seam_m: float = 0.0045
    # the global step's sparse SPD solve: "direct" (scipy SuperLU, CPU: ~40 ms for the full
    # template), "cg" (Jacobi-preconditioned conjugate gradients in torch on the device, warm
    # started from the last iterate: for CUDA), "auto" = cg on CUDA, direct otherwise
    solver: str = "auto"
    cg_tol: float = 1e-10  # relative residual
    cg_max_iter: int = 3000


@dataclass(frozen=True)
class NonrigidResult:
    verts: np.ndarray  # (V, 3) metres
    iterations: int
    matched_fraction: float  # share of surface vertices with a template->scan match at the end


def matchable_vertices(template, config: NonrigidConfig = NonrigidConfig()) -> np.ndarray:
    """(V,) bool: surface vertices that may take scan matches (the surface minus the mouth seam)."""
    from scipy.spatial import cKDTree

    m = template.masks["surface"].copy()
    inside = template.masks["mouth_cavity"] | template.masks["tongue"]
    if config.mouth_seam_m > 0 and inside.any():
        d = cKDTree(template.rest_verts[inside]).query(template.rest_verts[m])[0]
        m[np.flatnonzero(m)[d < config.mouth_seam_m]] = False
    return m


def refine_nonrigid(
    posed: np.ndarray, faces: np.ndarray, surface: np.ndarray, target: ScanTarget,
    config: NonrigidConfig = NonrigidConfig(), landmarks=None, device: str | torch.device = "cpu", seed: int = 0,
) -> NonrigidResult:
    """ACAP-regularised non-rigid ICP from the posed template towards the scan.

    Args:
        posed: (V, 3) posed template (skeleton fit), metres; also the ACAP rest shape.
        faces: (F, 3) template faces.
        surface: (V,) bool, vertices a scanner can see (``~template.masks["interior"]``).
        target: the scan.
        landmarks: optional :class:`~ghum_pipe.register.landmark_pairs.LandmarkPairs` kept as
            soft constraints ``w |sum_k w_lk x_k - target_l|^2``.
        device: where the local step (per-vertex SVDs) and a "cg" global step run; the
            correspondences (Open3D closest points) are found on the CPU.
        seed: of the scan samples matched each iteration.
    """
    cfg = config
    device = torch.device(device)
    method = cfg.solver if cfg.solver != "auto" else ("cg" if device.type == "cuda" else "direct")
    if method not in ("direct", "cg"):
        raise ValueError(f"NonrigidConfig.solver must be auto, direct or cg, not {cfg.solver!r}")
    rng = np.random.default_rng(seed)
    P = np.asarray(posed, dtype=np.float64)
    V = len(P)
    edges = edge_graph(faces, V)
    D = sp.csr_matrix((np.r_[np.ones(len(edges)), -np.ones(len(edges))],
                       (np.r_[np.arange(len(edges)), np.arange(len(edges))], np.r_[edges[:, 0], edges[:, 1]])),
                      shape=(len(edges), V))
    DtD = (D.T @ D).tocsc()
    e_t = torch.as_tensor(edges, device=device)
    w_e = torch.ones(len(edges), dtype=torch.float64, device=device)
    P_t = torch.as_tensor(P, device=device)
    e_rest = (P[edges[:, 0]] - P[edges[:, 1]])
    surf_faces = faces[surface[faces].all(1)]
    surf_idx = np.flatnonzero(surface)

    A_lm = sp.csr_matrix((V, V))
    rhs_lm = np.zeros((V, 3))
    if landmarks is not None and len(landmarks) and cfg.w_landmark > 0:
        L, K = landmarks.vertex_ids.shape
        C = sp.csr_matrix((landmarks.weights.ravel(), (np.repeat(np.arange(L), K), landmarks.vertex_ids.ravel())),
                          shape=(L, V))
        kind_w = np.where(np.asarray(landmarks.kinds) == "face", cfg.w_landmark_face, cfg.w_landmark)
        CW = C.T.multiply((kind_w * landmarks.confidence)[None, :]).tocsr()
        A_lm, rhs_lm = CW @ C, CW @ landmarks.targets
    X = P.copy()
    total = sum(n for _, n in cfg.schedule)
    it = 0
    matched = 0.0
    for w_reg, n_iter in cfg.schedule:
        for _ in range(n_iter):
            frac = it / max(total - 1, 1)
            max_d = float(np.exp((1 - frac) * np.log(cfg.max_dist_m[0]) + frac * np.log(cfg.max_dist_m[1])))
            # local step: per-vertex similarity of the one-ring
            R, s = fit_vertex_similarities(torch.as_tensor(X, device=device), P_t, e_t, w_e, cfg.conformal)
            R, s = R.cpu().numpy(), s.cpu().numpy()
            b = s[edges[:, 0], None] * np.einsum("eab,eb->ea", R[edges[:, 0]], e_rest)
            # data: template -> scan
            fwd_rows, fwd_w, fwd_y = _forward_matches(X, faces, surf_idx, target, max_d, cfg)
            matched = len(fwd_rows) / len(surf_idx)
            # data: scan -> template
            bwd_cols, bwd_vals, bwd_w, bwd_q = _backward_matches(X, surf_faces, target, max_d, cfg, rng)
            # global step: (w_reg D^T D + C^T W C + eps I) X = w_reg D^T b + C^T W y + eps P
            A = w_reg * DtD + sp.diags(np.full(V, cfg.anchor)) + A_lm
            rhs = w_reg * (D.T @ b) + cfg.anchor * P + rhs_lm
            A = A + sp.csc_matrix((fwd_w, (fwd_rows, fwd_rows)), shape=(V, V))
            np.add.at(rhs, fwd_rows, fwd_w[:, None] * fwd_y)
            if len(bwd_w):
                n = len(bwd_w)
                C = sp.csr_matrix((bwd_vals.ravel(), (np.repeat(np.arange(n), 3), bwd_cols.ravel())), shape=(n, V))
                CW = C.T.multiply(bwd_w[None, :]).tocsr()
                A = A + cfg.w_bwd * (CW @ C)
                rhs = rhs + cfg.w_bwd * (CW @ bwd_q)
            X = solve_spd(A, rhs, X, method, device, cfg.cg_tol, cfg.cg_max_iter)
            it += 1
    return NonrigidResult(verts=X, iterations=it, matched_fraction=float(matched))


def solve_spd(A: sp.spmatrix, rhs: np.ndarray, x0: np.ndarray, method: str = "direct", device="cpu",
              tol: float = 1e-10, max_iter: int = 3000) -> np.ndarray:
    """Solve ``A X = rhs`` for a sparse SPD (V, V) ``A`` and (V, 3) ``rhs``, float64.

    ``direct``: one sparse LU factorisation (scipy SuperLU), three back-substitutions (CPU).
    ``cg``: Jacobi-preconditioned conjugate gradients on ``device`` (torch sparse CSR), the three
    columns at once, started from ``x0`` (the last iterate: the solves of a local-global loop
    change little); stops at a relative residual ``tol`` in every column.
    """
    if method == "direct":
        solve = spla.factorized(sp.csc_matrix(A))
        return np.stack([solve(rhs[:, c]) for c in range(rhs.shape[1])], axis=1)
    A = sp.csr_matrix(A)
    dev = torch.device(device)
    with torch.sparse.check_sparse_tensor_invariants(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        At = torch.sparse_csr_tensor(torch.as_tensor(A.indptr, device=dev), torch.as_tensor(A.indices, device=dev),
                                     torch.as_tensor(A.data, dtype=torch.float64, device=dev), size=A.shape)
    b = torch.as_tensor(rhs, dtype=torch.float64, device=dev)
    x = torch.as_tensor(x0, dtype=torch.float64, device=dev).clone()
    m_inv = 1.0 / torch.as_tensor(A.diagonal(), dtype=torch.float64, device=dev)[:, None]
    r = b - At @ x
    z = m_inv * r
    p = z.clone()
    rz = (r * z).sum(0)
    b_norm = b.norm(dim=0).clamp_min(1e-300)
    for _ in range(max_iter):
        if float((r.norm(dim=0) / b_norm).max()) < tol:
            break
        Ap = At @ p
        alpha = rz / (p * Ap).sum(0)
        x += alpha * p
        r -= alpha * Ap
        z = m_inv * r
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x.cpu().numpy()


def _gm_weight(d: np.ndarray, sigma: float) -> np.ndarray:
    """IRLS weight of the Geman-McClure penalty: rho'(d) / d ~ (1 + (d/sigma)^2)^-2."""
    return 1.0 / (1.0 + (d / sigma) ** 2) ** 2


def _forward_matches(X, faces, surf_idx, target: ScanTarget, max_d, cfg: NonrigidConfig):
    """Template surface vertex -> closest scan point, with point-to-plane targets."""
    vn = vertex_normals(X, faces)[surf_idx]
    x = X[surf_idx]
    if target.mesh is not None:
        c = target.mesh.closest(x)
        q, d = c["points"], c["dist"]
        n = target.face_normals[c["face"]]
        ok = ~target.boundary_faces[c["face"]]
    else:
        dist, idx = target.index.query(x, 1)
        q, d, n = target.points[idx[:, 0]], dist[:, 0], target.normals[idx[:, 0]]
        ok = np.ones(len(x), dtype=bool)
    ok &= (d < max_d) & ((vn * n).sum(1) > np.cos(np.deg2rad(cfg.max_angle_deg)))
    x, q, n, d = x[ok], q[ok], n[ok], d[ok]
    plane = x + ((q - x) * n).sum(1, keepdims=True) * n
    y = (plane + cfg.point_weight * q) / (1.0 + cfg.point_weight)
    return surf_idx[ok], _gm_weight(d, cfg.sigma_m), y


def _backward_matches(X, surf_faces, target: ScanTarget, max_d, cfg: NonrigidConfig, rng):
    """Scan sample -> closest point on the current registration (face + barycentric)."""
    pts, nrm = target.points, target.normals
    if len(pts) > cfg.n_bwd:
        pick = rng.choice(len(pts), cfg.n_bwd, replace=False)
        pts, nrm = pts[pick], nrm[pick]
    c = MeshDistance(X, surf_faces).closest(pts)
    fn = face_normals(X, surf_faces)[c["face"]]
    ok = (c["dist"] < max_d) & ((fn * nrm).sum(1) > np.cos(np.deg2rad(cfg.max_angle_deg)))
    cols = surf_faces[c["face"][ok]]
    return cols, c["bary"][ok], _gm_weight(c["dist"][ok], cfg.sigma_m), pts[ok]
