"""The PCA basis of a matrix seen only by row batches: randomized subspace iteration.

The VAEs' frozen first layer is the top right singular vectors of a rows matrix R (n, D)
(``networks.VAE.init_pca``: the data's offsets, centred or stacked on a weighted prior). At
60,000 scans R does not fit one process, so it is never formed: every pass over it is a sum
over row batches R_b, and only (n, l) and (D, l) sketches with l = basis + oversampling exist
at once (Halko, Martinsson & Tropp 2011, "Finding structure with randomness", Alg. 4.4,
randomized subspace iteration; scikit-learn's ``randomized_svd`` and Dask's
``svd_compressed`` are the same algorithm on in-memory / chunked arrays):

    Y = R Omega, Q = qr(Y);  q times: Z = qr(R^T Q), Q = qr(R Z);  B^T = R^T Q;  B = U S V^T.

Two kinds of pass, both sums over batches in batch order (deterministic):

- rows pass: batch b's rows of R Z, ``rows_times(R_b, Z)`` (n_b, l);
- columns pass: R^T Q = sum_b R_b^T Q_b, ``transpose_times(R_b, Q_b)`` (D, l).

With n <= l rows nothing is sketched: Q = I and B^T = R^T, so the basis is the exact SVD's to
rounding. Everything inside is float64; Omega is seeded; each direction's sign is fixed (its
largest entry positive, as scikit-learn's ``svd_flip``), so the result does not depend on the
LAPACK build. Pure: tensors in, tensors out; the callers decide where the batches live.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

OVERSAMPLE = 32  # extra sketch columns beyond the basis wanted (Halko et al. suggest 5-10; more is cheap)
POWER_ITERS = 6  # subspace iterations; tests/test_blocked_pca.py measures the top directions' angles
REL_TOL = 1e-4  # singular values below this fraction of the largest carry no real variance


def sketch_width(n_basis: int, oversample: int = OVERSAMPLE) -> int:
    """l: the number of sketch columns for ``n_basis`` wanted directions."""
    return int(n_basis) + int(oversample)


def gaussian_sketch(dim: int, width: int, seed: int) -> torch.Tensor:
    """Omega (dim, width) float64, standard normal from its own generator (the global RNG is
    left alone: the VAE's training draws from it afterwards)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim, width, generator=g, dtype=torch.float64)


def batch_rows(x: torch.Tensor, center: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """One batch of R: ``scale * (x - center)`` as float64, x (n_b, D)."""
    r = x.to(torch.float64)
    if center is not None:
        r = r - center.to(torch.float64)
    return r * scale if scale != 1.0 else r


def rows_times(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The rows pass on one batch: R_b (n_b, D) @ Z (D, l) -> (n_b, l) float64."""
    return r.to(torch.float64) @ z


def transpose_times(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The columns pass on one batch: R_b^T (D, n_b) @ Q_b (n_b, l) -> (D, l) float64."""
    return r.to(torch.float64).T @ q


def orthonormal(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (reduced QR) of the columns of y (n, l), float64."""
    return torch.linalg.qr(y, mode="reduced").Q


def fix_signs(directions: torch.Tensor) -> torch.Tensor:
    """Each row of directions (m, D) with its largest-magnitude entry positive."""
    idx = directions.abs().argmax(1)
    sign = torch.sign(directions.gather(1, idx[:, None]))
    return directions * torch.where(sign == 0, torch.ones_like(sign), sign)


def randomized_basis(rows_pass: Callable[[torch.Tensor], torch.Tensor],
                     columns_pass: Callable[[torch.Tensor], torch.Tensor], n_rows: int, dim: int, n_basis: int,
                     seed: int = 0, oversample: int = OVERSAMPLE,
                     power_iters: int = POWER_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Top right singular vectors of R (n_rows, dim), seen only through its two passes:
    ``rows_pass(Z (dim, l)) -> R Z (n_rows, l)`` and ``columns_pass(Q (n_rows, l)) -> R^T Q (dim, l)``
    (each a sum over row batches). Returns directions (r, dim) and singular values (r,), float64,
    descending, r = min(n_rows, dim, l) with l = ``sketch_width(n_basis, oversample)``: the first
    ``n_basis`` are the ones to trust, the rest is the oversampling. Exact (one columns pass) when
    n_rows <= l."""
    width = sketch_width(n_basis, oversample)
    if n_rows <= width:
        q = torch.eye(n_rows, dtype=torch.float64)
    else:
        q = orthonormal(rows_pass(gaussian_sketch(dim, width, seed)))
        for _ in range(power_iters):
            q = orthonormal(rows_pass(orthonormal(columns_pass(q))))
    bt = columns_pass(q)  # B^T = R^T Q (dim, l)
    _, s, vt = torch.linalg.svd(bt.T, full_matrices=False)
    return fix_signs(vt), s


def basis_size(singular_values: torch.Tensor, max_basis: int, n_samples: int | None = None,
               rel_tol: float = REL_TOL) -> int:
    """How many directions carry real variance: at most ``max_basis``, singular values above
    ``rel_tol`` of the largest, and (centred data, ``n_samples`` given) at most N - 1."""
    s = singular_values
    m = min(int(max_basis), int((s > rel_tol * s[0]).sum()) if len(s) else 0)
    if n_samples is not None:
        m = min(m, max(1, int(n_samples) - 1))
    return m


def in_memory_passes(batches: Sequence[tuple[torch.Tensor, float]], center: torch.Tensor | None = None):
    """``(rows_pass, columns_pass, n_rows)`` over in-memory batches [(x_b (n_b, D), scale_b)]:
    R's rows are ``scale_b * (x_b - center)`` (``center`` (D,) or None), in batch order."""
    sizes = [int(x.shape[0]) for x, _ in batches]

    def rows_pass(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows_times(batch_rows(x, center, w), z) for x, w in batches])

    def columns_pass(q: torch.Tensor) -> torch.Tensor:
        out, lo = None, 0
        for (x, w), n in zip(batches, sizes):
            part = transpose_times(batch_rows(x, center, w), q[lo:lo + n])
            out = part if out is None else out + part
            lo += n
        return out

    return rows_pass, columns_pass, sum(sizes)


def row_slices(n: int, batch: int) -> list[slice]:
    """[0, n) cut into consecutive slices of ``batch`` rows."""
    return [slice(lo, min(n, lo + batch)) for lo in range(0, n, max(1, int(batch)))]
