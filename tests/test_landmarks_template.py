"""TemplateLandmarks: weights reproduce the found points, numpy == torch, round trip (fast)."""

import numpy as np
import torch

from ghum_pipe.landmarks.template_landmarks import TemplateLandmarks, interior_row, surface_row


def test_interior_row_reproduces_point_exactly(template):
    verts = template.rest_verts
    surface = np.flatnonzero(template.masks["surface"])
    # A point inside the left thigh: the mean of its cross-section ring at z = -0.3 m.
    ring = surface[(np.abs(verts[surface, 2] + 0.3) < 0.01) & (verts[surface, 0] > 0.02)]
    inside = verts[ring].mean(0)
    ids, w = interior_row(inside, verts, surface, 32)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(w @ verts[ids], inside, atol=1e-9)
    # A smooth regressor: no weight dominates or goes strongly negative.
    assert w.max() < 0.2 and w.min() > -0.1
    # And it moves with the limb: translating the vertices translates the point.
    np.testing.assert_allclose(w @ (verts[ids] + [0.1, 0.2, 0.3]), inside + [0.1, 0.2, 0.3], atol=1e-9)


def test_points_numpy_torch_and_round_trip(template, tmp_path):
    f = template.faces[1234]
    ids_s, w_s = surface_row(f, np.array([0.2, 0.3, 0.5]), 32)
    ids_i, w_i = interior_row(np.array([0.1, -0.02, 0.0]), template.rest_verts,
                              np.flatnonzero(template.masks["surface"]), 32)
    tl = TemplateLandmarks(("a", "b"), np.stack([ids_s, ids_i]), np.stack([w_s, w_i]), ("surface", "interior"),
                           template.hash)
    pts = tl.points(template.rest_verts)
    np.testing.assert_allclose(pts[0], [0.2, 0.3, 0.5] @ template.rest_verts[f], atol=1e-12)
    np.testing.assert_allclose(pts[1], [0.1, -0.02, 0.0], atol=1e-9)
    batch = torch.as_tensor(np.stack([template.rest_verts, template.rest_verts + 1.0]), dtype=torch.float64,
                            ).requires_grad_(True)
    got = tl.points(batch)
    assert got.shape == (2, 2, 3)
    np.testing.assert_allclose(got[1].detach().numpy(), pts + 1.0, atol=1e-9)
    got.sum().backward()  # differentiable for registration
    assert batch.grad.abs().sum() > 0
    tl.save(tmp_path / "tl.npz")
    back = TemplateLandmarks.load(tmp_path / "tl.npz")
    assert back.names == tl.names and back.kinds == tl.kinds and back.template_hash == template.hash
    np.testing.assert_array_equal(back.vertex_ids, tl.vertex_ids)
    assert back.subset(["b"]).names == ("b",)


def test_interior_definition_averaged_over_shapes(template):
    from ghum_pipe.landmarks.find import FoundLandmarks
    from ghum_pipe.landmarks.template_landmarks import from_found

    verts = template.rest_verts
    surface = np.flatnonzero(template.masks["surface"])
    ring = surface[(np.abs(verts[surface, 2] + 0.3) < 0.01) & (verts[surface, 0] > 0.02)]
    p = verts[ring].mean(0)  # inside the left thigh
    ids, w = interior_row(p, verts, surface, 32)
    other = verts * [1.1, 0.9, 1.05] + [0.0, 0.0, 0.02]  # another body
    one = lambda pt: FoundLandmarks(("left_knee",), pt[None], np.ones(1), ("interior",), np.ones(1, int),  # noqa: E731
                                    np.zeros(1), np.full(1, -1), np.zeros((1, 3)))
    # A detector that places the point consistently (same weights on the other body): unchanged.
    tl = from_found(one(p), template, others=[(other, one(w @ other[ids]))])
    np.testing.assert_allclose(tl.points(verts)[0], p, atol=1e-9)
    np.testing.assert_allclose(tl.points(other)[0], w @ other[ids], atol=1e-9)
    # One placing it 2 cm lower on the other body: the definition moves halfway (1 cm) there.
    tl = from_found(one(p), template, others=[(other, one(w @ other[ids] - [0, 0, 0.02]))])
    np.testing.assert_allclose(tl.points(other)[0], w @ other[ids] - [0, 0, 0.01], atol=1e-9)
    np.testing.assert_allclose(tl.points(verts)[0][:2], p[:2], atol=5e-3)
