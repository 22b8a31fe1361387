"""Posing a subset of the template's vertices, and L-BFGS on torch tensors.

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


def minimize_lbfgs(tensors: list[torch.Tensor], loss_fn, bounds: list | None = None, maxiter: int = 100,
                   scales: list[float] | None = None) -> int:
    """Minimise ``loss_fn()`` (a scalar built from ``tensors``) over the tensors in place with
    scipy's L-BFGS-B (Byrd et al. 1995), gradients from torch autograd; returns the number
    of function evaluations.

    Quasi-Newton steps matter here: a 10-joint chain from the root to a fingertip is badly
    conditioned, and first-order steps (Adam) leave elbows centimetres off after 1000 steps.
    ``bounds``: per tensor ``(lo, hi)`` or None (e.g. facial actions in [0, 1]).
    ``scales``: per tensor, the size of a unit step of the optimiser's variable (a diagonal
    preconditioner: a shape coefficient moves the skin ~1 cm, a joint angle ~30 cm at the
    hand, so without it L-BFGS spends its iterations on the pose and leaves the shape).
    """
    from scipy.optimize import minimize

    sizes = [t.numel() for t in tensors]
    scales = [1.0] * len(tensors) if scales is None else list(scales)
    k = np.concatenate([np.broadcast_to(np.asarray(c, dtype=np.float64), t.shape).ravel()
                        for t, c in zip(tensors, scales)])
    x0 = np.concatenate([t.detach().cpu().double().numpy().ravel() for t in tensors]) / k
    box = None
    if bounds is not None:
        lo = np.concatenate([np.full(n, -np.inf if b is None else b[0]) for b, n in zip(bounds, sizes)]) / k
        hi = np.concatenate([np.full(n, np.inf if b is None else b[1]) for b, n in zip(bounds, sizes)]) / k
        box = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b) for a, b in zip(lo, hi)]

    def unpack(x):
        with torch.no_grad():
            for t, chunk in zip(tensors, np.split(x * k, np.cumsum(sizes)[:-1])):
                t.copy_(torch.as_tensor(chunk.reshape(t.shape), dtype=t.dtype))

    def fun(x):
        unpack(x)
        for t in tensors:
            t.grad = None
        loss = loss_fn()
        loss.backward()
        g = np.concatenate([(t.grad if t.grad is not None else torch.zeros_like(t)).detach().cpu().double()
                            .numpy().ravel() for t in tensors])
        return float(loss.detach()), g * k

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=box, options={"maxiter": maxiter})
    unpack(res.x)
    return int(res.nfev)


def jacobi_step_sizes(residual_fn, tensors: list[torch.Tensor], prior_diag: list, n_probe: int = 24,
                      seed: int = 0, clamp: tuple[float, float] = (1e-3, 1.0)) -> list[np.ndarray]:
    """Per-variable step sizes 1 / sqrt(diag(J^T J) + prior) for :func:`minimize_lbfgs`.

    ``residual_fn()`` returns the residual vector r (loss ~ |r|^2) built from ``tensors``;
    diag(J^T J) is estimated with Rademacher probes, E[(J^T v)^2] = diag(J^T J) (Bekas et al.,
    "An estimator for the diagonal of a matrix", 2007), one backward pass each.
    ``prior_diag``: per tensor, the curvature of its quadratic prior (scalar or array).
    """
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(t) for t in tensors]
    r = residual_fn()
    for i in range(n_probe):
        v = (torch.randint(0, 2, r.shape, generator=gen) * 2 - 1).to(r.dtype)
        grads = torch.autograd.grad((r * v).sum(), tensors, retain_graph=i < n_probe - 1, allow_unused=True)
        for a, g in zip(acc, grads):
            if g is not None:
                a += g.detach() ** 2
    out = []
    for a, pd in zip(acc, prior_diag):
        d = a.cpu().double().numpy() / n_probe + np.asarray(pd, dtype=np.float64)
        out.append(np.clip(1.0 / np.sqrt(np.maximum(d, 1e-12)), *clamp))
    return out
