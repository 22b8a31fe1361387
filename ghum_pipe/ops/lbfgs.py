"""L-BFGS on torch tensors: the variables stay tensors, the loss is any torch scalar.

Quasi-Newton steps matter for body fits: a 10-joint chain from the root to a fingertip is badly
conditioned, and first-order steps (Adam) leave elbows centimetres off after 1000 steps.
:func:`minimize_lbfgs` runs scipy's L-BFGS-B (Byrd et al. 1995: bounds, and a per-variable
scale that acts as a diagonal preconditioner; float64 on the CPU, gradients from autograd);
:func:`minimize_lbfgs_torch` runs ``torch.optim.LBFGS`` with a strong-Wolfe line search on the
tensors' own device, for large unbounded problems (model training) that should not leave it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def minimize_lbfgs(tensors: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor],
                   bounds: Sequence[tuple[float, float] | None] | None = None, maxiter: int = 100,
                   scales: Sequence | None = None) -> int:
    """Minimise ``loss_fn()`` (a scalar built from ``tensors``) over the tensors, in place, with
    scipy's L-BFGS-B; returns the number of function evaluations.

    ``bounds``: per tensor ``(lo, hi)`` or None (e.g. facial actions in [0, 1]).
    ``scales``: per tensor, a scalar or an array of the tensor's shape: the size of a unit step
    of the optimiser's variable (a shape coefficient moves the skin ~1 cm, a joint angle ~30 cm
    at the hand; without scales L-BFGS spends its iterations on the pose and leaves the shape).
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
                t.copy_(torch.as_tensor(chunk.reshape(t.shape), dtype=t.dtype, device=t.device))

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


def minimize_lbfgs_torch(params: Sequence[torch.Tensor], loss_fn: Callable[[], torch.Tensor], iters: int,
                         history_size: int = 20, tolerance_grad: float = 1e-12,
                         tolerance_change: float = 1e-15, rtol: float = 0.0, check_every: int = 25,
                         trace: Callable[[int, float], None] | None = None) -> int:
    """Minimise ``loss_fn()`` over ``params`` (leaf tensors with ``requires_grad``), in place, by
    ``torch.optim.LBFGS`` with a strong-Wolfe line search; returns the iterations run.

    At most ``iters`` iterations, in chunks of ``check_every`` (one optimiser whose history
    carries over, so the path is that of one long run). After each chunk the loss is evaluated
    (``trace(iterations, loss)`` if given) and the run stops once the chunk lowered it by less
    than ``rtol`` of its value: a relative test, so the same for a sum over 10 scans or 1,000.
    ``rtol`` 0 (and no ``trace``): one uncut run of ``iters``. torch's own absolute ``tolerance_grad``/``tolerance_change``
    are ~0 by default (their sizes would depend on the loss's scale)."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=check_every, history_size=history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change)
    state = opt.state[params[0]]
    group = opt.param_groups[0]

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    budget = iters * 5 // 4  # torch's own max_eval for one run of ``iters``
    if rtol <= 0 and trace is None:  # nothing to check: one uncut run (no extra evaluations)
        group["max_iter"], group["max_eval"] = iters, budget
        opt.step(closure)
        return state.get("n_iter", 0)
    with torch.no_grad():
        prev = float(loss_fn())
    done = used = calls = 0
    while done < iters and used < budget:
        # each chunk re-evaluates its start point first (the same numbers as the last chunk's
        # end): not counted against the budget, so the path is that of one uncut run
        group["max_iter"] = min(check_every, iters - done)
        group["max_eval"] = budget - used + (calls > 0)
        opt.step(closure)
        calls += 1
        ran = state.get("n_iter", 0) - done
        done += ran
        used = state.get("func_evals", 0) - (calls - 1)
        with torch.no_grad():
            loss = float(loss_fn())
        if trace is not None:
            trace(done, loss)
        # no iteration (gradient ~0) or no progress: converged; rtol: relative decrease per chunk
        if ran == 0 or prev - loss <= rtol * abs(loss):
            break
        prev = loss
    return done
