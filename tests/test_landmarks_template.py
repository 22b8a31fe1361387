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
