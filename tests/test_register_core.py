"""Registration building blocks against hand-computed values on tiny meshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from ghum_pipe.register import backend
from ghum_pipe.register.losses import (acap_energy, correspondence_mask, edge_graph, fit_vertex_similarities,
                                       geman_mcclure, huber, icp_loss, landmark_loss, point_to_plane)
from ghum_pipe.register.similarity import umeyama

TET_V = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
TET_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
# two triangles in the z=0 plane sharing the edge 1-2 (a unit square)
QUAD_V = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
QUAD_F = np.array([[0, 1, 2], [1, 3, 2]])


def test_umeyama_recovers_similarity_and_ignores_zero_weight_outlier():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 3))
    R = Rotation.from_rotvec([0.3, -0.5, 1.1]).as_matrix()
    dst = 1.7 * src @ R.T + [0.1, -2.0, 3.0]
    dst[3] += 5.0  # outlier
    w = np.ones(10)
    w[3] = 0.0
    sim = umeyama(src, dst, w)
    assert sim.scale == pytest.approx(1.7, abs=1e-10)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-10)
    np.testing.assert_allclose(sim.translation, [0.1, -2.0, 3.0], atol=1e-10)
    assert umeyama(src, src * 2, with_scale=False).scale == 1.0


def test_umeyama_rejects_reflection():
    src = TET_V
    dst = src * [1, 1, -1]  # a mirror image: the best proper rotation is not the mirror
    sim = umeyama(src, dst)
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    q, r = torch.as_tensor(rng.normal(size=(200, 3))), torch.as_tensor(rng.normal(size=(500, 3)))
    d, i = backend.knn(q, r, k=3)
    full = torch.cdist(q, r)
    bd, bi = full.topk(3, largest=False)
    np.testing.assert_allclose(d.numpy(), bd.numpy(), atol=1e-9)
    assert (i == bi).all()
    d2, i2 = backend._knn_cdist(q, r, 3, chunk=37)  # the CUDA path's chunking, on CPU
    np.testing.assert_allclose(d2.numpy(), bd.numpy(), atol=1e-9)


@pytest.mark.skipif(not backend.has_pytorch3d(), reason="pytorch3d is not importable here")
def test_knn_pytorch3d_agrees_with_kdtree():
    rng = np.random.default_rng(2)
    q, r = torch.as_tensor(rng.normal(size=(300, 3))).float(), torch.as_tensor(rng.normal(size=(800, 3))).float()
    d_p, i_p = backend.knn(q, r, k=2, use_pytorch3d=True)
    d_k, i_k = backend.knn(q, r, k=2, use_pytorch3d=False)
    np.testing.assert_allclose(d_p.numpy(), d_k.numpy(), atol=1e-5)
    assert (i_p == i_k).float().mean() > 0.999


def test_closest_points_on_two_triangles():
    q = np.array([[0.25, 0.25, 0.5], [2.0, 0.5, 0.0], [0.9, 0.9, -0.3]])
    c = backend.closest_points_on_mesh(q, QUAD_V, QUAD_F)
    np.testing.assert_allclose(c["points"], [[0.25, 0.25, 0], [1, 0.5, 0], [0.9, 0.9, 0]], atol=1e-6)
    np.testing.assert_allclose(c["dist"], [0.5, 1.0, 0.3], atol=1e-6)
    assert c["face"][0] == 0 and c["face"][2] == 1
    # barycentric coordinates reproduce the points
    rebuilt = np.einsum("nk,nkc->nc", c["bary"], QUAD_V[QUAD_F[c["face"]]])
    np.testing.assert_allclose(rebuilt, c["points"], atol=1e-6)


def test_robust_penalties_hand_values():
    r = torch.tensor([0.0, 1.0, 3.0])
    np.testing.assert_allclose(geman_mcclure(r, 1.0).numpy(), [0.0, 0.5, 0.9])
    np.testing.assert_allclose(huber(r, 2.0).numpy(), [0.0, 0.5, 4.0])


def test_point_to_plane_icp_and_rejection():
    src = torch.tensor([[0.0, 0.0, 0.3], [0.5, 0.5, -0.1], [0.2, 0.0, 2.0]])
    dst = torch.tensor([[0.1, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.0, 0.0]])
    n = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    np.testing.assert_allclose(point_to_plane(src, dst, n).numpy(), [0.3, -0.1, 2.0], atol=1e-7)
    src_n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    dist = (src - dst).norm(dim=-1)
    keep = correspondence_mask(dist, src_n, n, max_dist=1.0, max_angle_deg=60)
    assert keep.tolist() == [True, False, False]  # 2: too far, 1: facing the other way
    # only pair 0 kept: GM(0.3; 1) + 0.1 * GM(|(-0.1, 0, 0.3)|; 1)
    d0 = np.sqrt(0.1**2 + 0.3**2)
    expected = 0.09 / 1.09 + 0.1 * d0**2 / (1 + d0**2)
    assert float(icp_loss(src, dst, n, keep, sigma=1.0)) == pytest.approx(expected, rel=1e-6)


def test_landmark_loss_weighted_mean():
    pred = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    target = torch.tensor([[0.0, 0, 2], [1.0, 1, 0]])
    assert float(landmark_loss(pred, target, torch.tensor([1.0, 3.0]))) == pytest.approx((4 + 3) / 4)


def test_edge_graph_counts():
    assert len(edge_graph(TET_F, 4)) == 12  # 6 edges, both directions
    assert len(edge_graph(QUAD_F, 4)) == 10  # 5 edges


def _edges_t(faces, n):
    e = torch.as_tensor(edge_graph(faces, n))
    return e, torch.ones(len(e), dtype=torch.float64)


def test_acap_zero_for_similarity_and_arap_for_scaling():
    p = torch.as_tensor(TET_V)
    e, w = _edges_t(TET_F, 4)
    R = torch.as_tensor(Rotation.from_rotvec([0.2, 0.4, -0.3]).as_matrix())
    x = 1.5 * p @ R.T + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert float(acap_energy(x, p, e, w, conformal=True)) == pytest.approx(0.0, abs=1e-12)
    # ARAP: best rotation is R, residual (s - 1) e per directed edge: (0.5)^2 * sum |e|^2
    # tetrahedron edges: 3 of length 1 and 3 of length sqrt(2): sum over 12 directed = 2 * (3 + 6) = 18
    assert float(acap_energy(x, p, e, w, conformal=False)) == pytest.approx(0.25 * 18, rel=1e-9)
    R_fit, s_fit = fit_vertex_similarities(x, p, e, w, conformal=True)
    np.testing.assert_allclose(s_fit.numpy(), 1.5, atol=1e-9)
    np.testing.assert_allclose(R_fit.numpy(), np.broadcast_to(R.numpy(), (4, 3, 3)), atol=1e-9)


def test_arap_energy_matches_brute_force_rotation_search_on_two_triangles():
    """The closed-form local step equals a numerical minimisation over each vertex's rotation."""
    p = torch.as_tensor(QUAD_V)
    e, w = _edges_t(QUAD_F, 4)
    x = p.clone()
    x[3] = torch.tensor([1.2, 0.9, 0.4], dtype=torch.float64)  # lift and drag one corner
    energy = float(acap_energy(x, p, e, w, conformal=False))
    P, X, E = QUAD_V, x.numpy(), e.numpy()
    total = 0.0
    for i in range(4):
        nb = E[E[:, 0] == i, 1]

        def f(rv):
            Rm = Rotation.from_rotvec(rv).as_matrix()
            return sum(np.sum(((X[i] - X[j]) - Rm @ (P[i] - P[j])) ** 2) for j in nb)

        total += min(minimize(f, x0, method="BFGS").fun for x0 in ([0, 0, 0], [0.5, -0.5, 0.5]))
    assert energy == pytest.approx(total, rel=1e-5, abs=1e-9)
    assert energy > 0.05  # a real deformation costs something


def test_acap_gradient_pulls_towards_rest():
    p = torch.as_tensor(QUAD_V)
    e, w = _edges_t(QUAD_F, 4)
    x = p.clone()
    x[3, 2] = 0.3
    x.requires_grad_(True)
    acap_energy(x, p, e, w).backward()
    assert x.grad[3, 2] > 0  # descending lowers the lifted corner


def test_rest_offsets_round_trip(template):
    from ghum_pipe.register.skeleton import SkeletonFit, rest_offsets

    rng = np.random.default_rng(3)
    J = template.n_joints
    pose = rng.normal(0, 0.2, (J, 3))
    shape = rng.normal(0, 1, 16)
    offsets = rng.normal(0, 0.005, (template.n_verts, 3))
    with torch.no_grad():
        v, _ = template.pose(torch.tensor(shape[None]), torch.tensor(pose[None]), None, torch.tensor(offsets[None]))
    verts = 1.1 * v[0].numpy() + [0.3, 0.0, 1.0]
    fit = SkeletonFit(pose=pose, shape=shape, expression=np.zeros(template.n_expression), scale=1.1,
                      translation=np.array([0.3, 0.0, 1.0]), verts=verts, landmark_rms_m=0.0, iterations=0)
    np.testing.assert_allclose(rest_offsets(template, fit, verts), offsets, atol=1e-8)


def test_subset_poser_matches_template_pose(template):
    from ghum_pipe.register.posing import SubsetPoser

    rng = np.random.default_rng(4)
    pose = torch.tensor(rng.normal(0, 0.3, (1, template.n_joints, 3)))
    shape = torch.tensor(rng.normal(0, 1, (1, 16)))
    expr = torch.tensor(rng.uniform(0, 1, (1, template.n_expression)))
    ids = rng.choice(template.n_verts, 500, replace=False)
    full, _ = template.pose(shape, pose, expr)
    sub = SubsetPoser(template, ids, 16, dtype=torch.float64)(shape, pose, expr)
    np.testing.assert_allclose(sub.numpy(), full[0, np.sort(ids)].numpy(), atol=1e-10)


def test_pcg_solver_matches_direct_solve(template):
    """The torch conjugate-gradient global step (the CUDA path, run here on the CPU) gives the
    direct sparse solve's answer, on the ACAP system of the full template, stiff and loose."""
    import scipy.sparse as sp

    from ghum_pipe.register.nonrigid import solve_spd

    V = template.n_verts
    e = edge_graph(template.faces, V)
    D = sp.csr_matrix((np.r_[np.ones(len(e)), -np.ones(len(e))], (np.r_[np.arange(len(e)), np.arange(len(e))],
                                                                    np.r_[e[:, 0], e[:, 1]])), shape=(len(e), V))
    rng = np.random.default_rng(0)
    P = template.rest_verts.astype(np.float64)
    for w_reg in (20.0, 0.2):
        data = np.where(rng.random(V) < 0.85, rng.uniform(0.2, 1.0, V), 0.0)  # holes: no data
        A = w_reg * (D.T @ D) + sp.diags(data + 1e-4)
        truth = P + 0.01 * rng.normal(size=P.shape)
        rhs = A @ truth
        direct = solve_spd(A, rhs, P, "direct")
        cg = solve_spd(A, rhs, P, "cg", "cpu", tol=1e-12)
        np.testing.assert_allclose(direct, truth, atol=1e-8)
        np.testing.assert_allclose(cg, direct, atol=1e-8)


def test_nonrigid_with_cg_solver_matches_direct(template):
    """The whole non-rigid refinement with either global solver lands at the same surface."""
    from ghum_pipe.ops.normals import vertex_normals
    from ghum_pipe.register.nonrigid import NonrigidConfig, refine_nonrigid
    from ghum_pipe.register.target import build_target

    t = template
    surface = t.masks["surface"]
    P = t.rest_verts.astype(np.float64)
    n = vertex_normals(P, t.faces)
    bump = 0.006 * np.exp(-((P - P[surface][100]) ** 2).sum(1) / (2 * 0.08**2))  # 6 mm smooth bulge
    scan = P + bump[:, None] * n
    faces = t.faces[surface[t.faces].all(1)]
    target = build_target(scan, faces, None)
    cfg = NonrigidConfig(schedule=((5.0, 2), (0.5, 3)))
    res = {m: refine_nonrigid(P, t.faces, surface, target, NonrigidConfig(**{**cfg.__dict__, "solver": m})).verts
           for m in ("direct", "cg")}
    err = {m: np.linalg.norm(v - scan, axis=1)[surface].mean() for m, v in res.items()}
    print({m: round(e * 1e3, 3) for m, e in err.items()})
    assert err["direct"] < 0.001, err  # the 6 mm bulge is recovered (measured 0.39 mm)
    assert np.abs(res["cg"] - res["direct"])[surface].max() < 1e-6


def test_config_hash_covers_only_the_branch_that_runs():
    """A close-up setting does not re-run body scans, and a body setting does not re-run close-ups."""
    from dataclasses import replace

    from ghum_pipe.pipelines.manifest import config_hash
    from ghum_pipe.register.config import RegionConfig, RegisterConfig
    from ghum_pipe.register.skeleton import IcpSchedule, SkeletonConfig

    base = RegisterConfig()
    # each variant changes one setting: which branches' hashes it may move (body, close-up)
    variants = {
        "close-up fit": (replace(base, region=RegionConfig(min_coverage=0.3)), (False, True)),
        "body fit": (replace(base, skeleton=SkeletonConfig(schedule=IcpSchedule(icp_rounds=7))), (True, False)),
        "body coverage": (replace(base, min_coverage=0.3), (True, False)),
        "the one seed": (replace(base, seed=1), (True, True)),
    }
    for name, (other, moves) in variants.items():
        moved = tuple(config_hash(replace(base, kind=k).to_dict()) != config_hash(replace(other, kind=k).to_dict())
                      for k in ("body", "head"))
        assert moved == moves, name


def test_landmark_weights_per_kind_and_pooled():
    """Body fit: each kind's confidence-weighted weights sum to its weight; a close-up's: one pool."""
    from ghum_pipe.register.landmark_pairs import LandmarkPairs
    from ghum_pipe.register.skeleton import landmark_weights

    conf = np.array([1.0, 3.0, 2.0, 2.0, 0.0])
    pairs = LandmarkPairs(("a", "b", "c", "d", "e"), ("pose", "pose", "hand", "face", "other"),
                          np.zeros((5, 1), np.int64), np.ones((5, 1)), np.zeros((5, 3)), conf)
    w = landmark_weights(pairs, (("pose", 1.0), ("hand", 0.5), ("face", 0.5)))
    np.testing.assert_allclose(w, [0.25, 0.75, 0.5, 0.5, 0.0])  # by hand: 1/4, 3/4; alone in its kind; unlisted
    pooled = landmark_weights(pairs, None)  # confidence clipped at 1e-3, then normalised over all
    np.testing.assert_allclose(pooled, np.clip(conf, 1e-3, None) / (8.0 + 1e-3))


def test_a_body_is_the_region_everything(template):
    """The one driver's regions: a body's covers every vertex, has no pins and one mesh; a close-up's
    rings nest (region <= data-taking ring <= sub-mesh) and its pins are the outer ring only."""
    from ghum_pipe.register.config import RegisterConfig
    from ghum_pipe.register.nonrigid import matchable_vertices
    from ghum_pipe.register.region import grow, region_of

    cfg = RegisterConfig()
    body = region_of(template, "body", cfg)
    assert body.mask.all() and body.sub.all() and len(body.pins) == 0
    assert (body.surface == template.masks["surface"]).all()
    assert (body.data == matchable_vertices(template, cfg.nonrigid)).all()
    assert body.skeleton is cfg.skeleton and body.min_coverage == cfg.min_coverage
    for kind in ("head", "hand_left", "hand_right"):
        r = region_of(template, kind, cfg)
        assert (r.mask == template.masks[kind]).all() and r.skeleton is cfg.region.skeleton
        assert not (r.surface & ~r.mask).any() and not (r.mask & template.masks["surface"] & ~r.data).any()
        assert not (r.data & ~r.sub).any() and 0 < r.sub.sum() < template.n_verts
        inner = grow(template, r.mask, cfg.region.data_rings)
        np.testing.assert_array_equal(r.pins, np.flatnonzero(r.sub & ~inner))
        assert len(r.pins) > 0 and not r.data[r.pins].any()
    with pytest.raises(ValueError, match="unknown scan kind 'elbow'"):
        region_of(template, "elbow", cfg)
