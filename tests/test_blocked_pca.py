"""The VAEs' PCA basis from row batches (``model.blocked_pca``) against ``torch.linalg.svd`` of
the whole matrix: exact when the rows fit the sketch, the top directions on a larger matrix."""

from __future__ import annotations

import torch

from ghum_pipe.model.blocked_pca import (in_memory_passes, randomized_basis, row_slices, sketch_width)
from ghum_pipe.model.networks import VAE


def _low_rank_plus_noise(n: int, dim: int, rank: int, noise: float, seed: int) -> torch.Tensor:
    """(n, dim) float32: ``rank`` directions with singular values decaying over 3 decades, plus
    i.i.d. noise of std ``noise`` (a flat tail, like registration noise)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -3, rank, dtype=torch.float64)
    a = torch.randn(n, rank, generator=g, dtype=torch.float64) * scale
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64)).Q.T
    return (a @ basis + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)).float()


def _sign_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a's rows with the sign that matches b's rows."""
    return a * torch.sign((a * b).sum(1, keepdim=True))


def test_rows_within_the_sketch_are_exact():
    """20 samples + 32 prior rows (52 <= l = 160): the basis, singular values and the VAE's std
    are torch.linalg.svd's of the stacked float64 rows to rounding (bound 1e-6 relative, the spec;
    measured ~1e-13), whatever the batch size."""
    x = _low_rank_plus_noise(20, 900, 20, 1e-3, 0)
    prior = _low_rank_plus_noise(32, 900, 32, 0.0, 1)
    w = 32.0
    rows = torch.cat([x, prior]).double()
    rows[20:] *= w**0.5
    _, s_ref, vt_ref = torch.linalg.svd(rows, full_matrices=False)
    for batch in (1, 7, 32):
        batches = [(x[sl], 1.0) for sl in row_slices(20, batch)] + [(prior, w**0.5)]
        rp, cp, n = in_memory_passes(batches)
        assert n == 52 <= sketch_width(128)
        d, s = randomized_basis(rp, cp, n, 900, 128, seed=batch)
        assert float((s - s_ref).abs().max() / s_ref[0]) < 1e-6
        assert float((_sign_aligned(d, vt_ref) - vt_ref).abs().max()) < 1e-6
    vae = VAE(900, 8, hidden=16)
    vae.init_pca(x, prior, w, batch=7)
    m = int((s_ref > 1e-4 * s_ref[0]).sum())  # the directions with real variance (51 of 52 here)
    assert m > 40 and float(vae.basis[m:].abs().max()) == 0.0 and float(vae.basis[m - 1].norm()) > 0.99
    b = vae.basis[:m].double()
    assert float((_sign_aligned(b, vt_ref[:m]) - vt_ref[:m]).abs().max()) < 1e-6
    std_ref = s_ref[:m] / (20 + w) ** 0.5
    assert float(((vae.coef_std[:m].double() - std_ref) / std_ref).abs().max()) < 1e-6


def test_no_prior_is_centred_and_keeps_n_minus_1():
    """Without a prior: the mean is removed, at most N - 1 directions, std = s / sqrt(N - 1), as
    the SVD of the centred rows (1e-6 relative)."""
    x = _low_rank_plus_noise(12, 600, 30, 1e-3, 2) + 0.05
    vae = VAE(600, 4, hidden=16)
    vae.init_pca(x, batch=5)
    xc = x.double() - x.double().mean(0)
    _, s_ref, vt_ref = torch.linalg.svd(xc, full_matrices=False)
    assert float((vae.mean.double() - x.double().mean(0)).abs().max()) < 1e-7
    m = int((vae.coef_std != 1.0).sum())
    assert m == 11  # 12 samples span 11 directions about their mean
    assert float((_sign_aligned(vae.basis[:m].double(), vt_ref[:m]) - vt_ref[:m]).abs().max()) < 1e-6
    std_ref = s_ref[:m] / 11**0.5
    assert float(((vae.coef_std[:m].double() - std_ref) / std_ref).abs().max()) < 1e-6


def test_randomized_top_directions_match_the_svd(measured):
    """600 rows (> l = 160) of 40 directions over 3 decades + a flat noise tail at 1/1000 of the
    top: over sketch seeds 0-4 the 40 signal directions are the SVD's (largest principal angle
    measured 4.4e-6 degrees, bound 1e-4: ~20x margin) with their singular values (measured 5e-15
    relative, bound 1e-6), and the 128-direction basis leaves at most 1 % more residual energy
    than the exact top 128 (measured 0.45 %, bound ~2x: past the 40 signal directions the tail is
    flat noise, where any 88 directions of it are about as good as the SVD's)."""
    n, dim, rank = 600, 3000, 40
    x = _low_rank_plus_noise(n, dim, rank, 1e-5, 3)
    _, s_ref, vt_ref = torch.linalg.svd(x.double(), full_matrices=False)
    rp, cp, n_rows = in_memory_passes([(x[sl], 1.0) for sl in row_slices(n, 32)])
    worst_deg, worst_s, worst_energy = 0.0, 0.0, 0.0
    for seed in range(5):
        d, s = randomized_basis(rp, cp, n_rows, dim, 128, seed=seed)
        cos = torch.linalg.svdvals(d[:rank] @ vt_ref[:rank].T).clamp(max=1.0)
        worst_deg = max(worst_deg, float(torch.rad2deg(torch.arccos(cos.min()))))
        worst_s = max(worst_s, float(((s[:rank] - s_ref[:rank]) / s_ref[:rank]).abs().max()))
        xd = x.double()
        resid = float((xd - xd @ d[:128].T @ d[:128]).square().sum())
        best = float(s_ref[128:].square().sum())
        worst_energy = max(worst_energy, resid / best - 1)
    print("largest angle deg", worst_deg, "singular values rel", worst_s, "extra residual energy", worst_energy)
    measured("signal directions largest principal angle deg", worst_deg, "<=", 1e-4)
    measured("signal singular values rel diff", worst_s, "<=", 1e-6)
    measured("extra residual energy of the 128-basis", worst_energy, "<=", 1e-2)
