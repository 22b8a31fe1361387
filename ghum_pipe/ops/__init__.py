"""Small pure geometry and optimisation building blocks shared by the stages (arrays in, arrays out).

- ``normals``: face and vertex normals of triangle meshes, numpy and batched torch.
- ``procrustes``: weighted rigid or similarity alignment of point pairs (Kabsch / Umeyama).
- ``lbfgs``: L-BFGS on torch tensors, scipy's L-BFGS-B (bounds, per-variable scales) and torch's.
- ``diagonal``: Rademacher (Hutchinson / Bekas) estimates of diag(J^T J) for preconditioning.

Each function states the shapes and units it takes; none reads files, logs or holds state.
"""

from ghum_pipe.ops.diagonal import gauss_newton_diagonal, jacobi_step_sizes, rademacher_vjps
from ghum_pipe.ops.lbfgs import minimize_lbfgs, minimize_lbfgs_torch
from ghum_pipe.ops.normals import face_normals, vertex_normals, vertex_normals_torch
from ghum_pipe.ops.procrustes import procrustes, umeyama

__all__ = ["face_normals", "gauss_newton_diagonal", "jacobi_step_sizes", "minimize_lbfgs", "minimize_lbfgs_torch",
           "procrustes", "rademacher_vjps", "umeyama", "vertex_normals", "vertex_normals_torch"]
