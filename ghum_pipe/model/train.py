"""Training GHUM/GHUML from registrations: the pure core (no Dask, no files but the work dir).

Alternating optimisation (Xu et al. 2020, Sec. 3.2):

(a) pose step, model fixed: per-scan pose theta and translation by Adam on the F-masked vertex
    distance (:func:`pose_step`; embarrassingly parallel, ``schedule.py`` runs it as Dask tasks);
(b) model step, poses fixed (:func:`model_step`): a closed-form refresh of every subject's
    rest shape X~_s (F-weighted mean of its scans brought to the rest pose by inverse skinning,
    minus the current PSD; vertices never seen are filled from the template's shape space) and
    of every scan's expression offsets on the face; then the skinning weights omega and the PSD
    D together, by one least-squares problem per vertex (``solvers.solve_skinning_psd``), and,
    in round 0 before them, the joint regressor C: per-subject joint centres (with the poses),
    then C refitted to them by ridge regression from
    the subjects' rest shapes (``joints.py``).

After the last round the shape VAE is fitted to the subjects' rest shapes and the expression VAE
to the expression offsets (:func:`fit_vaes`). The per-subject rest shapes play the role of the
paper's per-subject shape code during (a) and (b); the VAE then compresses them.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from ghum_pipe.model.config import ModelConfig, TrainConfig
from ghum_pipe.model.data import RegistrationSet, subject_batches
from ghum_pipe.model.fitting import fit_poses, part_pose_init
from ghum_pipe.model.ghum import GHUM
from ghum_pipe.model.joints import update_joint_regressor
from ghum_pipe.model.networks import pose_features
from ghum_pipe.model.solvers import pair_table, solve_skinning_psd
from ghum_pipe.model.state import TrainState, expand_face, model_rotmats, psd_all
from ghum_pipe.template.lbs import batch_rigid_transform

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _cached_model(config: ModelConfig) -> GHUM:
    return GHUM(config)


def model_from_state(config: ModelConfig, state_dict: dict | None) -> GHUM:
    """A model with ``state_dict`` loaded (the skeleton is built once per process)."""
    model = _cached_model(config)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def _tensors(data: RegistrationSet, idx=None):
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    return torch.as_tensor(data.verts[idx]), torch.as_tensor(data.mask[idx])


def init_state(model: GHUM, data: RegistrationSet) -> TrainState:
    """Poses from the registrations' params; scans without one start from each body part's own
    rotation (``fitting.part_pose_init``; registrations share the model's topology). Translations
    from the params, else the F-masked mean offset of the posed mean shape. Mean rest shapes."""
    target, mask = _tensors(data)
    pose = torch.as_tensor(data.pose).clone()
    with torch.no_grad():
        has = torch.as_tensor(data.has_pose)
        if not bool(has.all()):
            pose[~has] = part_pose_init(model, target[~has], mask[~has])
        v, _ = model.articulate(model.mean_rest.expand(len(data), -1, -1), pose)
        trans = ((target - v) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        given = torch.as_tensor(data.has_translation & data.has_pose)
        trans[given] = torch.as_tensor(data.translation)[given]
    S = len(data.subjects)
    state = TrainState(model.state_dict(), pose, trans, model.mean_rest.expand(S, -1, -1).clone(),
                       torch.zeros(len(data), len(model.face_index), 3), [])
    return state


def pose_step(model: GHUM, data: RegistrationSet, state: TrainState, idx: np.ndarray, iters: int):
    """Step (a) for the scans ``idx``: returns their new pose (n, J, 3) and translation (n, 3)."""
    target, mask = _tensors(data, idx)
    rest = state.rest[torch.as_tensor(data.subject_index[idx])]
    expr = expand_face(model, state.expression[idx])
    return fit_poses(model, target, mask, rest, expr, state.pose[idx], state.translation[idx], iters)


@torch.no_grad()
def refresh_shapes(model: GHUM, data: RegistrationSet, state: TrainState, batch: int = 16) -> torch.Tensor:
    """Closed-form part of (b): subject rest shapes and per-scan face expression offsets.
    Returns the registrations brought to the rest pose by inverse skinning, (N, V, 3)."""
    S, N = len(data.subjects), len(data)
    unposed = torch.zeros(N, model.n_verts, 3)
    for lo in range(0, N, batch):
        idx = np.arange(lo, min(N, lo + batch))
        target, _ = _tensors(data, idx)
        rest = state.rest[torch.as_tensor(data.subject_index[idx])]
        unposed[idx] = model.unpose(target, rest, state.pose[idx], state.translation[idx])
    raw = unposed
    unposed = raw - psd_all(model, state.pose)
    mask = torch.as_tensor(data.mask)
    subj = torch.as_tensor(data.subject_index)
    # scans near the rest pose dominate each subject's rest shape: there skinning and PSD errors
    # are smallest, so they cannot hide in the per-subject shape (which would bias D and omega)
    near = _rest_pose_weight(state.pose, subj)[:, None] * mask
    wsum = torch.zeros(S, model.n_verts).index_add(0, subj, near)
    vsum = torch.zeros(S, model.n_verts, 3).index_add(0, subj, unposed * near[..., None])
    seen = wsum > 0
    mean = vsum / wsum.clamp_min(1e-9)[..., None]
    # Vertices never seen (inside the mouth, eye backs) are filled from the template's shape
    # space: least squares rest - mean_rest = B c + delta on the seen vertices.
    B = _template_basis(model)  # (K, V, 3)
    K = B.shape[0]
    filled = torch.empty_like(mean)
    for s in range(S):
        sv = seen[s]
        cols = torch.cat([B[:, sv].reshape(K, -1).T, torch.eye(3).repeat(int(sv.sum()), 1)], 1)
        rhs = (mean[s, sv] - model.mean_rest[sv]).reshape(-1, 1)
        sol = torch.linalg.lstsq(cols.double(), rhs.double()).solution.float()[:, 0]
        filled[s] = model.mean_rest + torch.einsum("k,kvc->vc", sol[:K], B) + sol[K:]
    state.rest = torch.where(seen[..., None], mean, filled)
    face = model.face_index
    e = (unposed[:, face] - state.rest[subj][:, face]) * mask[:, face, None]
    state.expression = e
    return raw


def _rest_pose_weight(pose: torch.Tensor, subject: torch.Tensor, scale: float = 0.25) -> torch.Tensor:
    """(N,) weight of each scan in its subject's rest shape: exp(-(d - d_min) / scale), with
    d = sum_j |R_j - I|_F^2 and d_min the subject's scan closest to the rest pose (weight 1;
    another joint bent 30 degrees more costs ~exp(-2.1))."""
    d = ((model_rotmats(pose) - torch.eye(3)) ** 2).sum((-1, -2)).sum(-1)
    dmin = torch.full((int(subject.max()) + 1,), float("inf")).scatter_reduce(0, subject, d, "amin")
    return torch.exp(-(d - dmin[subject]) / scale).clamp_min(1e-6)


def _template_basis(model: GHUM) -> torch.Tensor:
    from ghum_pipe.model.ghum import template_for

    t = template_for(model.config.resolution, model.config.top_k)
    return torch.as_tensor(t.shape_basis, dtype=torch.float32)


def model_step(model: GHUM, data: RegistrationSet, state: TrainState, cfg: TrainConfig, round_: int,
               batch_scans: int = 32) -> None:
    """Step (b) with poses fixed, ``cfg.inner`` times: refresh rest shapes and expressions,
    then solve the skinning weights and the PSD together on the posed data (each pass is one
    Gauss-Newton step of that bilinear problem; ``solvers.solve_skinning_psd`` says why not one
    after the other). In round 0, C is learned first (``joints.py``), by subject batches of
    ``batch_scans`` scans (``data.subject_batches``, as the Dask schedule cuts them, so that
    both give the same C). Updates ``state`` (model weights, shapes, history)."""
    model.load_state_dict(state.model)
    mask = torch.as_tensor(data.mask)
    subj = torch.as_tensor(data.subject_index)
    target = torch.as_tensor(data.verts)
    table = pair_table(model.psd.pair_vert, model.n_verts)
    face = torch.zeros(model.n_verts, dtype=torch.bool)
    face[model.face_index] = True
    for i in range(cfg.inner):
        refresh_shapes(model, data, state)
        if cfg.learn_joints and round_ == 0 and i == 0:
            # once, before skinning and D exist: both can locally mimic a joint-centre shift
            # and then absorb it (learning C after them: 14 mm off; repeating it every round
            # walks the shoulders off along pose-compensated directions)
            names = [data.subjects[k] for k in data.subject_index]
            update_joint_regressor(model, data, state, cfg, subject_batches(names, batch_scans))
        with torch.no_grad():
            rot = model_rotmats(state.pose)  # after C's step, which refines the poses
            feats = pose_features(rot)
            rest = state.rest[subj]
            x = rest + expand_face(model, state.expression)
            joints = shard_joints(model, state.rest)[subj]
            _, rel = batch_rigid_transform(rot, joints, model.parents, model.levels)
            # omega and D from one least-squares problem (solvers.solve_skinning_psd); face
            # vertices: expression offsets already absorb their residual, D stays 0 there
            w, W = solve_skinning_psd(feats, x, psd_all(model, state.pose), rel, target - state.translation[:, None],
                                      mask, model.skin_indices, model.skin_allowed, model.skin_weights,
                                      model.psd.pair_joint, table, cfg.skin_ridge, cfg.psd_ridge,
                                      psd_vertices=~face, groups=subj, prior=model.start_skin_weights,
                                      skin_prior_scans=cfg.skin_prior_scans, psd_prior_scans=cfg.psd_prior_scans)
            model.skin_logits.copy_(torch.log(w.clamp_min(1e-8)))
            model.psd.weight.copy_(W)
    state.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.history.append(dict(round=round_, fit_mm=posed_error_mm(model, data, state)))


@torch.no_grad()
def posed_error_sums(model: GHUM, data: RegistrationSet, state: TrainState, batch: int = 16) -> tuple[float, float]:
    """(sum of F-weighted vertex distances in metres, sum of F) of the current model to the
    registrations: sums over scan batches add up (how the Dask schedule splits it)."""
    num = den = 0.0
    for lo in range(0, len(data), batch):
        idx = np.arange(lo, min(len(data), lo + batch))
        target, mask = _tensors(data, idx)
        rest = state.rest[torch.as_tensor(data.subject_index[idx])]
        v, _ = model.articulate(rest, state.pose[idx], expand_face(model, state.expression[idx]),
                                state.translation[idx])
        num += float(((v - target).norm(dim=-1) * mask).sum())
        den += float(mask.sum())
    return num, den


def posed_error_mm(model: GHUM, data: RegistrationSet, state: TrainState, batch: int = 16) -> float:
    """F-weighted mean vertex distance (mm) of the current model to the training registrations."""
    num, den = posed_error_sums(model, data, state, batch)
    return 1000 * num / max(den, 1.0)


def fit_vae(vae, x: torch.Tensor, steps: int, kl_weight: float, seed: int, prior: torch.Tensor | None = None,
            prior_subjects: float = 0.0, batch: int = 32, adam_rows: int = TrainConfig.vae_batch) -> float:
    """Train a VAE on x (N, D) metres (PCA-initialised, with the ``prior`` shape space (K, D)
    weighted as ``prior_subjects`` samples when given: ``VAE.init_pca``); returns its mean
    vertex error (mm) on x.

    Every pass over x runs by row batches of ``batch`` rows, as the Dask schedule runs them by
    subject batch (``blocked_pca``): the basis, the coefficients (computed once: the frozen first
    layer) with the start's error, Adam on the coefficients (:func:`train_vae`, minibatches of
    ``adam_rows`` rows beyond that many), the trained error. Loss: squared reconstruction error in cm^2 per sample + ``kl_weight`` * KL. If
    training ends reconstructing x worse than its linear start (the sampling noise and the KL
    shrink the small components; measured on 32-100 subjects, docs/model.md), the start is
    kept: the learned space is then at least the (prior-blended) PCA."""
    from ghum_pipe.model.blocked_pca import row_slices

    vae.init_pca(x, prior, prior_subjects, batch, seed)
    start = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    slices = row_slices(x.shape[0], batch)
    start64 = _float64_state(vae)  # once for every batch, not once per batch
    parts = [vae_coefficients_and_error(vae, x[sl], start64) for sl in slices]
    train_vae(vae, torch.cat([p[0] for p in parts]), steps, kl_weight, seed, adam_rows)
    end64 = _float64_state(vae)
    return keep_better_vae(vae, start, [p[1:] for p in parts], [vae_error_sums(vae, x[sl], end64) for sl in slices])


def _float64_state(vae) -> dict:
    return {k: v.detach().double() for k, v in vae.state_dict().items()}


@torch.no_grad()
def vae_error_sums(vae, x: torch.Tensor, state64: dict | None = None) -> tuple[float, int]:
    """(sum of vertex distances in metres, number of vertices) of the VAE's deterministic
    reconstruction (z = mu) of one batch x (n, D): sums over batches add up. Computed in float64
    (the VAE run on ``state64``, its state_dict in float64, made here if not given): a float32
    reconstruction rounds with the batch's size, by ~1e-5 of the error itself (the offsets are
    ~100x it)."""
    p = _float64_state(vae) if state64 is None else state64
    xd = x.double()
    c_hat = torch.func.functional_call(vae, p, (xd,), dict(sample=False))[0]
    recon = p["mean"] + (c_hat * p["coef_std"]) @ p["basis"]
    d = (recon - xd).reshape(x.shape[0], -1, 3).norm(dim=-1)
    return float(d.sum()), int(d.numel())


@torch.no_grad()
def vae_coefficients_and_error(vae, x: torch.Tensor, state64: dict | None = None) -> tuple[torch.Tensor, float, int]:
    """One batch x (n, D) of the pass after the basis: its coefficients (n, M) and
    :func:`vae_error_sums` of the untrained (linear) start (``state64``: as there). The
    coefficients are float64 products rounded to float32, so that they do not depend on how the
    rows are batched (a float32 product rounds with the batch's size, and 600 Adam steps amplify
    a 1e-7 difference to ~1e-4 on the weights)."""
    p = _float64_state(vae) if state64 is None else state64
    c = (x.double() - p["mean"]) @ p["basis"].T / p["coef_std"]
    return (c.float(), *vae_error_sums(vae, x, p))


def train_vae(vae, coeffs: torch.Tensor, steps: int, kl_weight: float, seed: int,
              adam_rows: int = TrainConfig.vae_batch) -> None:
    """``steps`` Adam steps (lr 3e-4: the PCA start is already good) on the coefficients (n, M)
    of the training set; the sampling noise is seeded by ``seed``. Each step takes all n rows
    when n <= ``adam_rows`` (full batch), else ``adam_rows`` rows drawn without replacement
    (a generator seeded by ``seed``), so that a step costs at most ``adam_rows`` rows however
    many subjects or scans there are (``bench/vae_finish.py --adam``: error and time against
    full batch). The loss is a mean per row, so its scale does not depend on the batch."""
    torch.manual_seed(seed)
    n = coeffs.shape[0]
    draw = torch.Generator().manual_seed(seed) if 0 < adam_rows < n else None
    opt = torch.optim.Adam(vae.parameters(), lr=3e-4)
    # Adam's second moments of near-zero gradients become denormal floats, which run ~100x
    # slower on x86 CPUs: flush them to zero while training (restored afterwards).
    flush = torch.set_flush_denormal(True)
    try:
        for _ in range(steps):
            rows = coeffs if draw is None else coeffs[torch.randperm(n, generator=draw)[:adam_rows]]
            opt.zero_grad()
            c_hat, c, mu, logvar = vae(rows, is_coefficients=True)
            loss = vae.reconstruction_m2(c_hat, c) * 1e4 + kl_weight * vae.kl(mu, logvar)
            loss.backward()
            opt.step()
    finally:
        if flush:
            torch.set_flush_denormal(False)


def error_mm(sums) -> float:
    """Mean vertex error (mm) from batches' (sum of distances in m, count), summed in order."""
    return 1000 * sum(s for s, _ in sums) / max(1, sum(n for _, n in sums))


def keep_better_vae(vae, start: dict, start_sums, end_sums) -> float:
    """Keep the trained VAE unless it reconstructs worse than its ``start`` state_dict (then
    restore it); returns the kept one's mean vertex error (mm), from the batches' error sums."""
    start_mm, end_mm = error_mm(start_sums), error_mm(end_sums)
    if end_mm > start_mm:
        vae.load_state_dict(start)
        return start_mm
    return end_mm


def fit_vaes(model: GHUM, data: RegistrationSet, state: TrainState, cfg: TrainConfig, batch_scans: int = 32) -> dict:
    """Final stage: shape VAE on the subjects' rest shapes, expression VAE on face offsets, the
    expressions in the order of the subject batches of ``batch_scans`` scans (the Dask
    schedule's order: the VAE's sampling noise is drawn per row)."""
    from ghum_pipe.model.data import subject_batches

    model.load_state_dict(state.model)
    refresh_shapes(model, data, state)
    names = [data.subjects[k] for k in data.subject_index]
    order = torch.as_tensor(np.concatenate(subject_batches(names, batch_scans)))
    seen = torch.as_tensor(face_seen(model, data.mask))[order]
    summary = fit_vaes_to(model, state.rest, state.expression[order][seen], cfg, batch_scans)
    state.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return summary


def vae_prior(model: GHUM, which: str) -> tuple[torch.Tensor, float]:
    """The template's space as the prior rows of the ``which`` (``shape`` | ``expression``) VAE:
    (K, D) one-std directions (shape: its 32 PCA directions; expression: its blendshapes at full
    activation, on the face) and their weight in samples (``shape_prior_subjects`` /
    ``expression_prior_scans``)."""
    from ghum_pipe.model.ghum import template_for

    if which == "shape":
        prior = _template_basis(model)
        return prior.reshape(prior.shape[0], -1), float(model.config.shape_prior_subjects)
    t = template_for(model.config.resolution, model.config.top_k)
    prior = torch.as_tensor(t.expression_basis[:, model.face_index.numpy()], dtype=torch.float32)
    return prior.reshape(prior.shape[0], -1), float(model.config.expression_prior_scans)


def vae_seed(cfg: TrainConfig, which: str) -> int:
    """The seed of the ``which`` VAE's fit (sketch and sampling noise)."""
    return cfg.seed + (0 if which == "shape" else 1)


def fit_vaes_to(model: GHUM, rest: torch.Tensor, expression: torch.Tensor, cfg: TrainConfig,
                batch: int = 32) -> dict:
    """The VAEs of ``model`` fitted (in place) to rest shapes (S, V, 3) and the face offsets
    (n, Vf, 3) of the scans that saw at least half of the face; each on the template's own space
    as its prior (:func:`vae_prior`), by row batches of ``batch`` rows."""
    shapes = (rest - model.mean_rest).reshape(rest.shape[0], -1)
    out = {}
    for which, x in (("shape", shapes), ("expression", expression.reshape(expression.shape[0], -1))):
        prior, weight = vae_prior(model, which)
        out[f"{which}_vae_train_mm"] = fit_vae(getattr(model, f"{which}_vae"), x, cfg.vae_steps, cfg.kl_weight,
                                               vae_seed(cfg, which), prior, weight, batch, cfg.vae_batch)
    return out


def face_seen(model: GHUM, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: scans whose filter F covers at least half of the face vertices."""
    return mask[:, model.face_index.numpy()].mean(1) > 0.5


# -- step (b) split by vertex block and subject batch (pipelines/model_schedule.py runs these) --

def shard_joints(model: GHUM, rest: torch.Tensor) -> torch.Tensor:
    """Rest joint centres (S, J, 3) of rest shapes (S, V, 3) by the model's C, one subject at a
    time: a batched product rounds differently with the batch size, and the skinning solve
    amplifies a 1e-7 m joint difference to ~4e-5 on the weights; per subject, every split of the
    subjects gives the same joints."""
    with torch.no_grad():
        return torch.cat([model.joint_regressor(rest[s:s + 1]) for s in range(rest.shape[0])])


def psd_block(model: GHUM, rot: torch.Tensor, verts: slice) -> torch.Tensor:
    """The model's PSD offsets (N, v, 3) on vertices ``verts`` only, for rotations (N, J, 3, 3)."""
    lo, hi = verts.start, min(verts.stop, model.n_verts)
    pv = model.psd.pair_vert
    sel = (pv >= lo) & (pv < hi)
    feats = pose_features(rot)[:, model.psd.pair_joint[sel]]
    per_pair = torch.einsum("bpk,pkc->bpc", feats, model.psd.weight[sel].detach())
    return torch.zeros(rot.shape[0], hi - lo, 3).index_add(1, pv[sel] - lo, per_pair)


def face_block(model: GHUM, expression: torch.Tensor, verts: slice) -> torch.Tensor:
    """Face offsets (N, Vf, 3) -> offsets (N, v, 3) on vertices ``verts``."""
    lo, hi = verts.start, min(verts.stop, model.n_verts)
    face = model.face_index
    sel = (face >= lo) & (face < hi)
    return torch.zeros(expression.shape[0], hi - lo, 3).index_add(1, face[sel] - lo, expression[:, sel])


@torch.no_grad()
def skinning_psd_block_normals(model: GHUM, verts: slice, subject_index: np.ndarray, pose: torch.Tensor,
                               translation: torch.Tensor, rest_block: torch.Tensor, expression: torch.Tensor,
                               joints: torch.Tensor, target_block: np.ndarray, mask_block: np.ndarray) -> dict:
    """The normal-equation sums of the skinning + PSD solve (``solvers.skinning_psd_normals``) on
    vertices ``verts`` over one batch of whole subjects: n scans (subject_index (n,) into the
    batch's S subjects), pose (n, J, 3), translation (n, 3), rest_block (S, v, 3) the subjects'
    rest shapes on the block, expression (n, Vf, 3), joints (S, J, 3) their rest joints,
    target_block (n, v, 3) and mask_block (n, v) the registrations on the block."""
    from ghum_pipe.model.solvers import skinning_psd_normals

    subj = torch.as_tensor(subject_index)
    rot = model_rotmats(pose)
    _, rel = batch_rigid_transform(rot, joints[subj], model.parents, model.levels)
    table = pair_table(model.psd.pair_vert, model.n_verts)[verts]
    notface = torch.ones(model.n_verts, dtype=torch.bool)
    notface[model.face_index] = False
    x = rest_block[subj] + face_block(model, expression, verts)
    target = torch.as_tensor(target_block) - translation[:, None]
    return skinning_psd_normals(pose_features(rot), x, psd_block(model, rot, verts), rel, target,
                                torch.as_tensor(mask_block), model.skin_indices[verts], model.skin_allowed[verts],
                                model.skin_weights[verts].detach(), model.psd.pair_joint, table, notface[verts], subj)


@torch.no_grad()
def skinning_psd_block_solve(model: GHUM, verts: slice, sums: dict, cfg: TrainConfig) -> tuple:
    """Solve one vertex block from its summed normal equations: returns (verts, omega (v, I),
    pair indices (p,), their PSD weights (p, 9, 3)), what :func:`apply_block_solutions` writes."""
    from ghum_pipe.model.solvers import pair_mask, skinning_psd_solve

    table = pair_table(model.psd.pair_vert, model.n_verts)[verts]
    notface = torch.ones(model.n_verts, dtype=torch.bool)
    notface[model.face_index] = False
    w, W = skinning_psd_solve(sums, model.skin_allowed[verts], model.skin_weights[verts].detach(), table,
                              cfg.skin_ridge, cfg.psd_ridge, notface[verts], model.start_skin_weights[verts],
                              cfg.skin_prior_scans, cfg.psd_prior_scans)
    valid = pair_mask(table, notface[verts])
    return verts, w.float(), table[valid], W[valid].float()


@torch.no_grad()
def apply_block_solutions(model: GHUM, solutions) -> dict:
    """Write the blocks' omega and PSD weights into ``model`` (as ``model_step`` does); returns
    its new state_dict."""
    W_new = torch.zeros_like(model.psd.weight)
    for verts, w, pairs, W in solutions:
        model.skin_logits[verts] = torch.log(w.clamp_min(1e-8))
        W_new[pairs] = W
    model.psd.weight.copy_(W_new)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def add_sums(a: dict | None, b: dict) -> dict:
    """Element-wise sum of two normal-equation dicts (a may be None)."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def train_inline(data: RegistrationSet, cfg: TrainConfig, batch_scans: int = 32) -> tuple[GHUM, TrainState, dict]:
    """The whole alternating training in this process (tests, notebooks); ``model_schedule.py``
    runs the same steps as Dask tasks (``batch_scans``: scans per subject batch of C's step)."""
    torch.manual_seed(cfg.seed)  # the VAEs' MLPs start random: same seed, same model
    model = GHUM(cfg.model)
    state = init_state(model, data)
    for _ in range(3):  # rest shapes and translations settle together (joints depend on shape)
        refresh_shapes(model, data, state)
    N = len(data)
    for r in range(cfg.rounds):
        for lo in range(0, N, cfg.chunk):
            idx = np.arange(lo, min(N, lo + cfg.chunk))
            state.pose[idx], state.translation[idx] = pose_step(model, data, state, idx, cfg.pose_iters)
        model_step(model, data, state, cfg, r, batch_scans)
        log.info("round %d: %s", r, state.history[-1])
    summary = fit_vaes(model, data, state, cfg, batch_scans)
    model.load_state_dict(state.model)
    return model, state, summary
