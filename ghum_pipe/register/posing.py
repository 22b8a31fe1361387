"""Posing a subset of the template's vertices (the skeleton fit's inner loop).

The skeleton fit needs only the vertices that carry landmarks or ICP matches (a few thousand
of 13,718); skinning just those with the full skeleton makes each step ~5-10x cheaper than
``Template.pose``. Same maths as ``ghum_pipe.template.lbs`` (it is called for the kinematics).
"""

from __future__ import annotations

import numpy as np
import torch

from ghum_pipe.template.lbs import as_rotmats, batch_rigid_transform, skin


class SubsetPoser:
    """``poser(shape (1, S'), pose (1, J, 3), expression (1, E) | None) -> (n, 3)`` posed
    vertices ``ids`` (sorted) of the template, metres, root not translated (as ``Template.pose``)."""

    def __init__(self, template, ids: np.ndarray, n_shape: int, device="cpu", dtype=torch.float32):
        self.ids = np.asarray(np.unique(ids), dtype=np.int64)
        t = template.tensors(device, dtype)
        idx = torch.as_tensor(self.ids, device=device)
        self.rest = t["rest_verts"][idx]
        # flattened (S, 3n): one matrix product each instead of a batched einsum
        self.shape_basis = t["shape_basis"][:n_shape, idx].reshape(n_shape, -1)
        self.expression_basis = t["expression_basis"][:, idx].reshape(len(t["expression_basis"]), -1)
        self.skin_indices = t["skin_indices"][idx]
        self.skin_weights = t["skin_weights"][idx]
        self.t = t
        self.n_shape = n_shape

    def __call__(self, shape, pose, expression=None) -> torch.Tensor:
        t = self.t
        n = len(self.ids)
        verts = self.rest + (shape @ self.shape_basis).reshape(-1, n, 3)
        joints = t["rest_joints"] + torch.einsum("bs,sjk->bjk", shape, t["shape_joint_basis"][: self.n_shape])
        if expression is not None:
            verts = verts + (expression @ self.expression_basis).reshape(-1, n, 3)
            joints = joints + torch.einsum("be,ejk->bjk", expression, t["expression_joint_basis"])
        _, rel = batch_rigid_transform(as_rotmats(pose), joints, t["parents"], t["levels"])
        return skin(verts, rel, self.skin_indices, self.skin_weights)[0]


def full_poser(template, n_shape: int, device="cpu", dtype=torch.float32) -> SubsetPoser:
    return SubsetPoser(template, np.arange(template.n_verts), n_shape, device, dtype)
