"""Small pure geometry and optimisation building blocks shared by the stages (arrays in, arrays out).

- ``normals``: face and vertex normals of triangle meshes, numpy and batched torch.
- ``procrustes``: weighted rigid or similarity alignment of point pairs (Kabsch / Umeyama).
- ``lbfgs``: L-BFGS on torch tensors, scipy's L-BFGS-B (bounds, per-variable scales) and torch's.
- ``diagonal``: Rademacher (Hutchinson / Bekas) estimates of diag(J^T J) for preconditioning.

Each function states the shapes and units it takes; none reads files, logs or holds state.
"""
