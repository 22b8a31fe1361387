"""Estimates of the Gauss-Newton diagonal diag(J^T J) from Rademacher probes.

For a residual vector r(x) and z with independent +-1 entries, E[(J^T z)^2] = diag(J^T J)
(Hutchinson's trick for the diagonal: Bekas, Kokiopoulou and Saad, "An estimator for the
diagonal of a matrix", 2007): each probe costs one backward pass, whatever the number of
variables. Used to scale L-BFGS's variables (a Jacobi preconditioner) when they move the
residuals by very different amounts (joint angles vs shape coefficients vs joint shifts).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch


def rademacher_vjps(residual_fn: Callable[[], torch.Tensor], tensors: Sequence[torch.Tensor], n_probe: int,
                    generator: torch.Generator) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """Yield J^T z, one tuple (a gradient per tensor, None where r does not depend on it) for
    each of ``n_probe`` Rademacher probes z drawn from ``generator`` (CPU). ``residual_fn()``
    builds r from ``tensors`` (which require grad) once; its graph is kept across probes."""
    r = residual_fn()
    for i in range(n_probe):
        z = (torch.randint(0, 2, r.shape, generator=generator, device="cpu") * 2 - 1).to(r.dtype).to(r.device)
        yield torch.autograd.grad((r * z).sum(), tensors, retain_graph=i < n_probe - 1, allow_unused=True)


def gauss_newton_diagonal(residual_fn: Callable[[], torch.Tensor], tensors: Sequence[torch.Tensor],
                          n_probe: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Per tensor, the (tensor-shaped, float64) estimate of diag(J^T J) from ``n_probe`` probes."""
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(t) for t in tensors]
    for grads in rademacher_vjps(residual_fn, tensors, n_probe, gen):
        for a, g in zip(acc, grads):
            if g is not None:
                a += g.detach() ** 2
    return [a.cpu().double().numpy() / n_probe for a in acc]


def jacobi_step_sizes(residual_fn: Callable[[], torch.Tensor], tensors: Sequence[torch.Tensor],
                      prior_diag: Sequence, n_probe: int = 24, seed: int = 0,
                      clamp: tuple[float, float] = (1e-3, 1.0)) -> list[np.ndarray]:
    """Per-variable step sizes 1 / sqrt(diag(J^T J) + prior), clipped to ``clamp``: the ``scales``
    of :func:`ghum_pipe.ops.lbfgs.minimize_lbfgs` for the loss |r|^2 + priors.

    ``prior_diag``: per tensor, the curvature of its quadratic prior (scalar or array)."""
    diag = gauss_newton_diagonal(residual_fn, tensors, n_probe, seed)
    return [np.clip(1.0 / np.sqrt(np.maximum(d + np.asarray(pd, dtype=np.float64), 1e-12)), *clamp)
            for d, pd in zip(diag, prior_diag)]
