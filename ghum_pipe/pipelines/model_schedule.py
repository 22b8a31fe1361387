"""Training GHUM and GHUML as Dask tasks (the shell around ``train.py``'s pure steps).

The registrations are packed once into ``W/train_store.zarr`` (``model.store``); the training
subjects are cut into *subject batches* of about ``shard_scans`` scans (whole subjects, so the
per-subject centring of the skinning + PSD solve stays inside one batch). Each batch's state
(poses, translations, rest shapes, expressions, rest joints) is a small zarr group in
``OUT/.train_state/<model>/run-<id>/``; tasks read the chunks they need and write back their own batch,
and the driver moves only futures, the model's state_dict and small summaries. The plan (which
scans are in which batch) is written there too (``plan.json``) and travels to the tasks as its
path, and a phase of per-batch tasks that follows a whole phase waits on one gate task, so that
what the driver and the scheduler hold per task does not grow with the number of scans. Per round:

- (a) one pose task per subject batch;
- (b) ``inner`` times: one refresh task per batch (rest shapes, expressions, joints), in round 0
  once the joint step C (one task per batch: its subjects' joint centres and its scans' pose
  corrections, then one small task refitting C to all batches' subjects, then one per batch
  writing its rest joints), then per vertex block one normal-equation task per group of
  ``batches_per_sum`` batches (memory: one batch x one block; as many groups as keep the
  workers busy) and one solve task summing them (the problem is separable per vertex and its
  sums add over whole subjects; more than 4 partial sums are added in a tree first), then one
  task writing the blocks' solutions into the model;
- the posed error by batch (sums), the round's one number for the log.

At the end (:func:`submit_finish`), a last refresh by batch, then each VAE's fit (``train.fit_vae``)
by passes over the batches: its PCA basis by randomized subspace iteration (``blocked_pca``:
rows passes one task per batch, columns passes one task per block of vertices and group of
batches, summed, the small QR/SVD steps in the driver), the coefficients by batch, Adam on the
gathered coefficients (one task), the trained error by batch; then the save, which streams the
training shapes batch by batch. No task holds more than one batch of rest shapes.

After the start state, after round 0's C and after every round, each model's state is
checkpointed (``train_checkpoint``): a rerun after an interruption goes on from there.

GHUM's and GHUML's tasks are independent, so both models train in parallel on the cluster. The
result equals ``train.model_step`` in one process up to float rounding
(tests/test_train_scale.py). Without a client every task runs at once in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.io.atomic import write_json
from ghum_pipe.model.config import TrainConfig
from ghum_pipe.model.data import RegistrationSet, split_subjects
from ghum_pipe.pipelines.train_checkpoint import (CHECKPOINT, CURRENT, STATE_DIR, checkpoint_key, claim,
                                                  clear_state, read_checkpoint, run_dir, submit_checkpoint,
                                                  submit_restore)
from ghum_pipe.pipelines.train_status import record_training

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Shard:
    """A subject batch: its scans (store order within each subject) and their subjects."""

    index: int
    scan_ids: tuple[str, ...]
    subjects: tuple[str, ...]  # per scan
    path: str = ""  # its state group

    @property
    def subject_of(self) -> dict[str, str]:
        return dict(zip(self.scan_ids, self.subjects))

    def subject_index(self) -> np.ndarray:
        names = sorted(set(self.subjects))
        pos = {s: i for i, s in enumerate(names)}
        return np.array([pos[s] for s in self.subjects], dtype=np.int64)


@dataclass(frozen=True)
class Plan:
    """How one model's training is cut: subject batches and vertex blocks.

    Every task takes the plan, and by value it pickles to ~40 bytes per scan (its batches' scan
    ids, subjects and paths): tasks x scans bytes on the driver and the scheduler, i.e. growing
    as N^2. Once :func:`write_plan` has written it beside the batches' state (``file``), it
    pickles as that file's path and content hash, and each worker process reads it once."""

    store: str
    resolution: str
    n_verts: int
    shards: tuple[Shard, ...]
    vblock: int
    batches_per_sum: int
    blocks: tuple[tuple[int, int], ...] = field(default=())
    workers: int = 1  # task slots the plan keeps busy (groups of batches per vertex block)
    file: str = ""
    digest: str = ""

    def block_slices(self) -> list[slice]:
        return [slice(lo, hi) for lo, hi in self.blocks]

    def __reduce_ex__(self, protocol):
        if self.file:
            return _read_plan, (self.file, self.digest)
        return super().__reduce_ex__(protocol)


_PLANS: dict[tuple[str, str], Plan] = {}  # this process's plans read by _read_plan (a few: GHUM's, GHUML's)


def write_plan(plan: Plan, path: str | Path) -> Plan:
    """Write ``plan`` to ``path`` (JSON, atomically) and return it as pickled by reference."""
    import hashlib
    import json

    from ghum_pipe.io.atomic import atomic_path

    text = json.dumps(dataclasses.asdict(dataclasses.replace(plan, file="", digest="")), separators=(",", ":"))
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return dataclasses.replace(plan, file=str(path), digest=hashlib.sha1(text.encode()).hexdigest())


def _read_plan(path: str, digest: str) -> Plan:
    """The plan written by :func:`write_plan` (cached per process by path and content hash, so
    a long-lived worker never uses a previous training's plan of the same path)."""
    import json

    key = (path, digest)
    if key not in _PLANS:
        d = json.loads(Path(path).read_text())
        shards = tuple(Shard(s["index"], tuple(s["scan_ids"]), tuple(s["subjects"]), s["path"]) for s in d.pop("shards"))
        blocks = tuple(tuple(b) for b in d.pop("blocks"))
        while len(_PLANS) >= 4:  # the oldest out
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = Plan(**{**d, "file": path, "digest": digest}, shards=shards, blocks=blocks)
    return _PLANS[key]


def _gate_task(*after) -> int:
    return 0


def gate(submit, after: list) -> list:
    """One future that ends after every future in ``after`` (as a list to splat). Each phase
    of tasks that must follow a whole phase gates its input with it, so that it depends on one
    task, not on all B of them (B^2 edges in the scheduler's graph per phase)."""
    return [submit(_gate_task, *after, pure=False)] if len(after) > 1 else list(after)


def plan_shards(scan_ids, subject_of: dict[str, str], rows: dict[str, int], shard_scans: int) -> list[tuple]:
    """Subject batches (``data.subject_batches``): subjects in sorted order, whole, about
    ``shard_scans`` scans each; scans by (subject, store row). Returns [(scan_ids, subjects)]."""
    from ghum_pipe.model.data import subject_batches

    ids = list(scan_ids)
    batches = subject_batches([subject_of[s] for s in ids], shard_scans, [rows[s] for s in ids])
    return [(tuple(ids[i] for i in b), tuple(subject_of[ids[i]] for i in b)) for b in batches]


@functools.lru_cache(maxsize=8)
def _store(path: str, stamp: int):
    from ghum_pipe.model.store import RegistrationStore

    return RegistrationStore(path)


def _open_store(path: str):
    return _store(path, (Path(path) / "index.json").stat().st_mtime_ns)


def _shard_data(plan: Plan, shard: Shard) -> RegistrationSet:
    return _open_store(plan.store).registration_set(shard.scan_ids, shard.subject_of, plan.resolution)


STATE_KEYS = ("pose", "translation", "rest", "expression")


def _shard_state(model_sd: dict, shard: Shard):
    from ghum_pipe.model.state import TrainState
    from ghum_pipe.model.store import read_shard_state

    a = read_shard_state(shard.path, STATE_KEYS)
    return TrainState(model_sd, *(torch.as_tensor(a[k]) for k in STATE_KEYS), [])


def _save_state(plan: Plan, shard: Shard, model, state, joints: bool = True) -> None:
    from ghum_pipe.model.store import write_shard_state
    from ghum_pipe.model.train import shard_joints

    arrays = {k: getattr(state, k).numpy() for k in STATE_KEYS}
    if joints:
        arrays["joints"] = shard_joints(model, state.rest).numpy()
    write_shard_state(shard.path, plan.vblock, **arrays)


def _model(cfg: TrainConfig, model_sd: dict | None):
    from ghum_pipe.model.train import model_from_state

    return model_from_state(cfg.model, model_sd)


def _model0_task(cfg: TrainConfig) -> dict:
    """The untrained model's state_dict (the VAEs' MLPs start random: seeded)."""
    from ghum_pipe.model.ghum import GHUM

    torch.manual_seed(cfg.seed)
    return {k: v.detach().clone() for k, v in GHUM(cfg.model).state_dict().items()}


def _init_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict) -> int:
    from ghum_pipe.model.train import init_state, refresh_shapes

    data = _shard_data(plan, shard)
    model = _model(cfg, model_sd)
    state = init_state(model, data)
    for _ in range(3):  # rest shapes and translations settle together (joints depend on shape)
        refresh_shapes(model, data, state)
    from ghum_pipe.model.store import write_shard_state
    from ghum_pipe.model.train import face_seen

    _save_state(plan, shard, model, state)
    write_shard_state(shard.path, plan.vblock, face_seen=face_seen(model, data.mask))
    return len(data)


def _pose_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict, *after) -> int:
    from ghum_pipe.model.store import write_shard_state
    from ghum_pipe.model.train import pose_step

    data = _shard_data(plan, shard)
    model = _model(cfg, model_sd)
    state = _shard_state(model_sd, shard)
    n = len(data)
    for lo in range(0, n, cfg.chunk):
        idx = np.arange(lo, min(n, lo + cfg.chunk))
        state.pose[idx], state.translation[idx] = pose_step(model, data, state, idx, cfg.pose_iters)
    write_shard_state(shard.path, plan.vblock, pose=state.pose.numpy(), translation=state.translation.numpy())
    return n


def _refresh_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict, *after) -> int:
    from ghum_pipe.model.train import refresh_shapes

    data = _shard_data(plan, shard)
    model = _model(cfg, model_sd)
    state = _shard_state(model_sd, shard)
    refresh_shapes(model, data, state)
    _save_state(plan, shard, model, state)
    return len(data)


def _joint_batch_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict, *after) -> dict | None:
    """C's step on one subject batch (``joints.joint_batch_step``): writes the batch's corrected
    poses and translations, returns its subjects' shape coefficients and fitted joint centres
    (what the refit needs: ~1.5 KB per subject)."""
    from ghum_pipe.model.joints import joint_batch_step
    from ghum_pipe.model.store import write_shard_state

    data = _shard_data(plan, shard)
    state = _shard_state(model_sd, shard)
    part = joint_batch_step(_model(cfg, model_sd), data, state, cfg)
    write_shard_state(shard.path, plan.vblock, pose=state.pose.numpy(), translation=state.translation.numpy())
    return part


def _joint_refit_task(cfg: TrainConfig, model_sd: dict, *parts) -> dict:
    """The reduction of C's step: C refitted to every batch's subjects; the new state_dict."""
    from ghum_pipe.model.joints import refit_joint_regressor

    model = _model(cfg, model_sd)
    refit_joint_regressor(model, parts, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _joints_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict) -> int:
    """The batch's rest joints by the refitted C (what the normal-equation tasks read)."""
    from ghum_pipe.model.store import read_shard_state, write_shard_state
    from ghum_pipe.model.train import shard_joints

    rest = torch.as_tensor(read_shard_state(shard.path, ("rest",))["rest"])
    write_shard_state(shard.path, plan.vblock, joints=shard_joints(_model(cfg, model_sd), rest).numpy())
    return len(shard.scan_ids)


def _normals_task(plan: Plan, batches: slice, block: slice, cfg: TrainConfig, model_sd: dict,
                  *after) -> dict:
    """Normal-equation sums of one vertex block over the subject batches ``plan.shards[batches]``
    (one batch in memory)."""
    from ghum_pipe.model.store import read_shard_state
    from ghum_pipe.model.train import add_sums, skinning_psd_block_normals

    model = _model(cfg, model_sd)
    store = _open_store(plan.store)
    sums = None
    for shard in plan.shards[batches]:
        target, mask = store.read(store.rows(shard.scan_ids), plan.resolution, block)
        a = read_shard_state(shard.path, ("pose", "translation", "expression", "joints", "rest"), block)
        t = {k: torch.as_tensor(v) for k, v in a.items()}
        sums = add_sums(sums, skinning_psd_block_normals(model, block, shard.subject_index(), t["pose"],
                                                         t["translation"], t["rest"], t["expression"], t["joints"],
                                                         target, mask))
    return sums


def _sum_task(*parts):
    """The sum of some partial sums (normal-equation dicts, or arrays)."""
    from ghum_pipe.model.train import add_sums

    if isinstance(parts[0], dict):
        total = None
        for p in parts:
            total = add_sums(total, p)
        return total
    return functools.reduce(lambda a, b: a + b, parts)


SUM_FAN_IN = 4  # partial sums one task adds: its memory is this many (a block's normal-equation sums: 39 MB)


def reduce_sums(submit, parts: list, fan_in: int = SUM_FAN_IN) -> list:
    """Sum tasks in a tree until at most ``fan_in`` partial sums are left (in order)."""
    while len(parts) > fan_in:
        parts = [submit(_sum_task, *parts[i:i + fan_in], pure=False) for i in range(0, len(parts), fan_in)]
    return parts


def batch_groups(n_batches: int, per_group: int) -> list[slice]:
    """Consecutive groups of ``per_group`` subject batches."""
    return [slice(lo, lo + per_group) for lo in range(0, n_batches, max(1, per_group))]


def batches_per_group(n_batches: int, n_blocks: int, workers: int) -> int:
    """Batches per group so that ``n_blocks`` x groups >= ``workers`` (1 group when blocks suffice)."""
    return math.ceil(n_batches / max(1, math.ceil(workers / n_blocks)))


def _solve_task(block: slice, cfg: TrainConfig, model_sd: dict, *sums) -> tuple:
    from ghum_pipe.model.train import add_sums, skinning_psd_block_solve

    total = None
    for s in sums:
        total = add_sums(total, s)
    return skinning_psd_block_solve(_model(cfg, model_sd), block, total, cfg)


def _apply_task(cfg: TrainConfig, model_sd: dict, *solutions) -> dict:
    from ghum_pipe.model.train import apply_block_solutions

    return apply_block_solutions(_model(cfg, model_sd), solutions)


def _error_task(plan: Plan, shard: Shard, cfg: TrainConfig, model_sd: dict, *after) -> tuple[float, float]:
    from ghum_pipe.model.train import posed_error_sums

    return posed_error_sums(_model(cfg, model_sd), _shard_data(plan, shard), _shard_state(model_sd, shard))


def _history_task(round_: int, *sums) -> dict:
    num, den = sum(s[0] for s in sums), sum(s[1] for s in sums)
    return dict(round=round_, fit_mm=1000 * num / max(den, 1.0))


# -- the end of training: the VAE fits as passes by subject batch (train.fit_vae's steps) --

def _vae_rows(plan: Plan, cfg: TrainConfig, which: str, shard: Shard | None,
              verts: slice | None = None) -> tuple[torch.Tensor, float]:
    """One batch of the ``which`` VAE's rows (n_b, d) float32 and its weight: a subject batch's
    rest shapes minus the model's mean (``shape``) or its face-seen scans' face offsets
    (``expression``), weight 1; ``shard`` None: the template's prior rows, weight
    sqrt(prior samples) (``train.vae_prior``). ``verts``: only those vertices (of V, or of
    the face's Vf) -> d = 3 x their number."""
    from ghum_pipe.model.store import read_shard_state
    from ghum_pipe.model.train import vae_prior

    model = _model(cfg, None)
    sl = verts if verts is not None else slice(None)
    if shard is None:
        prior, weight = vae_prior(model, which)
        return prior.reshape(prior.shape[0], -1, 3)[:, sl].reshape(prior.shape[0], -1), weight**0.5
    if which == "shape":
        rest = torch.as_tensor(read_shard_state(shard.path, ("rest",), verts)["rest"])
        x = rest - model.mean_rest[sl]
    else:
        a = read_shard_state(shard.path, ("expression", "face_seen"))
        x = torch.as_tensor(a["expression"][a["face_seen"]][:, sl])
    return x.reshape(x.shape[0], -1), 1.0


def _vae_dims_task(cfg: TrainConfig, which: str) -> tuple[int, int, int, float]:
    """The ``which`` VAE's row size D, its basis size, its prior's rows and their weight (on a
    worker: the driver builds no model)."""
    from ghum_pipe.model.train import vae_prior

    model = _model(cfg, None)
    vae = getattr(model, f"{which}_vae")
    prior, weight = vae_prior(model, which)
    return int(vae.dim), int(vae.max_basis), int(prior.shape[0]), float(weight)


def _vae_count_task(plan: Plan, shard: Shard, cfg: TrainConfig, which: str, *after) -> int:
    """How many rows a subject batch gives the ``which`` VAE."""
    if which == "shape":
        return len(set(shard.subjects))
    from ghum_pipe.model.store import read_shard_state

    return int(read_shard_state(shard.path, ("face_seen",))["face_seen"].sum())


def _vae_rows_task(plan: Plan, shard: Shard | None, cfg: TrainConfig, which: str, z: torch.Tensor,
                   center: torch.Tensor | None) -> torch.Tensor:
    """The rows pass on one batch: its rows of R Z (n_b, l) (``blocked_pca.rows_times``)."""
    from ghum_pipe.model.blocked_pca import batch_rows, rows_times

    x, w = _vae_rows(plan, cfg, which, shard)
    return rows_times(batch_rows(x, center, w), z)


def _vae_columns_task(plan: Plan, prior: bool, cfg: TrainConfig, which: str, verts: slice, q: torch.Tensor,
                      center: torch.Tensor | None, batches: slice = slice(None), row0: int = 0) -> torch.Tensor:
    """The columns pass on one vertex block and the batches ``plan.shards[batches]`` (whose rows
    start at ``row0`` of Q): the sum over them (in order; then the prior's rows if ``prior``) of
    R_b^T Q_b on the block's 3 x v columns, (3v, l); one batch in memory."""
    from ghum_pipe.model.blocked_pca import batch_rows, transpose_times

    out, lo = None, row0
    c = center[3 * verts.start:3 * verts.stop] if center is not None else None
    for shard in tuple(plan.shards[batches]) + ((None,) if prior else ()):
        x, w = _vae_rows(plan, cfg, which, shard, verts)
        part = transpose_times(batch_rows(x, c, w), q[lo:lo + x.shape[0]])
        out = part if out is None else out + part
        lo += x.shape[0]
    return out


def _vae(cfg: TrainConfig, which: str, vae_sd: dict | None = None):
    """The ``which`` VAE of this process's model, with ``vae_sd`` (its state_dict) loaded."""
    vae = getattr(_model(cfg, None), f"{which}_vae")
    if vae_sd is not None:
        vae.load_state_dict(vae_sd)
    return vae


def _vae_state(vae) -> dict:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _vae_start_task(cfg: TrainConfig, model_sd: dict, which: str, directions: torch.Tensor,
                    singular_values: torch.Tensor, n_samples: int, center: torch.Tensor | None) -> dict:
    """The ``which`` VAE of ``model_sd`` at its linear start (``VAE.set_pca``): its state_dict
    (the tasks after it move only the VAE, ~4 bytes x 128 x D, not the model)."""
    from ghum_pipe.model.train import vae_prior

    model = _model(cfg, model_sd)
    _, weight = vae_prior(model, which)
    vae = getattr(model, f"{which}_vae")
    vae.set_pca(directions, singular_values, n_samples, weight, center)
    return _vae_state(vae)


def _vae_coefficients_task(plan: Plan, shard: Shard, cfg: TrainConfig, which: str, vae_sd: dict) -> tuple:
    """One batch's coefficients (n_b, M) and the start's error sums
    (``train.vae_coefficients_and_error``)."""
    from ghum_pipe.model.train import vae_coefficients_and_error

    x, _ = _vae_rows(plan, cfg, which, shard)
    return vae_coefficients_and_error(_vae(cfg, which, vae_sd), x)


def _vae_train_task(cfg: TrainConfig, which: str, vae_sd: dict, *parts) -> tuple[dict, list]:
    """Adam on the gathered coefficients (S x M, batch order) (``train.train_vae``, minibatches
    of ``cfg.vae_batch`` rows beyond that many: its cost stops growing with S): the trained
    VAE's state_dict and the start's error sums (for the choice after the error pass)."""
    from ghum_pipe.model.train import train_vae, vae_seed

    vae = _vae(cfg, which, vae_sd)
    train_vae(vae, torch.cat([p[0] for p in parts]), cfg.vae_steps, cfg.kl_weight, vae_seed(cfg, which),
              cfg.vae_batch)
    return _vae_state(vae), [p[1:] for p in parts]


def _vae_error_task(plan: Plan, shard: Shard, cfg: TrainConfig, which: str, trained: tuple) -> tuple[float, int]:
    """The trained VAE's error sums on one batch (``train.vae_error_sums``)."""
    from ghum_pipe.model.train import vae_error_sums

    x, _ = _vae_rows(plan, cfg, which, shard)
    return vae_error_sums(_vae(cfg, which, trained[0]), x)


def _vae_choose_task(cfg: TrainConfig, which: str, start_sd: dict, trained: tuple, *end_sums) -> tuple[dict, float]:
    """The trained VAE unless its start reconstructs better (``train.keep_better_vae``): the
    kept VAE's state_dict and its mean vertex error (mm)."""
    from ghum_pipe.model.train import keep_better_vae

    vae = _vae(cfg, which, trained[0])
    mm = keep_better_vae(vae, start_sd, trained[1], end_sums)
    return _vae_state(vae), mm


VAE_COLUMN_VERTS = 4096  # vertices per columns-pass task: 4 tasks for GHUM's shape VAE, 1 for the others


def submit_vae_fit(submit, scatter, plan: Plan, cfg: TrainConfig, which: str, model_sd, after: list,
                   oversample: int | None = None, column_verts: int = VAE_COLUMN_VERTS):
    """``train.fit_vae`` of the ``which`` VAE as tasks by subject batch: the basis by
    ``blocked_pca.randomized_basis``, this process running its small (n, l) and (D, l) steps
    and the cluster its passes (rows: one task per batch; columns: one task per block of
    ``column_verts`` vertices and group of batches, blocks x groups >= the plan's workers,
    then their sum); then the coefficients by batch, Adam on them (one task), the trained error by batch
    and the choice. Blocks until the basis is known; returns the future of (the VAE's
    state_dict, mm). ``scatter`` puts an array where the tasks can read it; ``oversample``: the
    sketch's extra columns (default ``blocked_pca.OVERSAMPLE``; tests narrow the sketch)."""
    from ghum_pipe.model.blocked_pca import OVERSAMPLE, randomized_basis
    from ghum_pipe.model.train import vae_seed

    dim, max_basis, n_prior, weight = submit(_vae_dims_task, cfg, which, pure=False).result()
    after = gate(submit, after)
    counts = [int(c.result()) for c in [submit(_vae_count_task, plan, s, cfg, which, *after, pure=False)
                                        for s in plan.shards]]
    n = sum(counts)
    n_verts = dim // 3
    blocks = [slice(lo, min(n_verts, lo + column_verts)) for lo in range(0, n_verts, column_verts)]
    # groups of batches per block, as for the normal equations: blocks x groups >= the plan's workers
    groups = batch_groups(len(plan.shards), batches_per_group(len(plan.shards), len(blocks), plan.workers))
    row0 = [sum(counts[:g.start]) for g in groups]
    parts = tuple(plan.shards) + ((None,) if weight > 0 else ())
    n_rows = n + (n_prior if weight > 0 else 0)
    center = None

    def columns_pass(q: torch.Tensor) -> torch.Tensor:
        q = scatter(q)
        per_block = []
        for b in blocks:  # per block, one task per group of batches (the prior's rows with the last), summed
            pieces = [submit(_vae_columns_task, plan, weight > 0 and i == len(groups) - 1, cfg, which, b, q, center,
                             g, r0, pure=False) for i, (g, r0) in enumerate(zip(groups, row0))]
            per_block.append(pieces[0] if len(pieces) == 1 else submit(_sum_task, *reduce_sums(submit, pieces),
                                                                            pure=False))
        return torch.cat([f.result() for f in per_block])

    def rows_pass(z: torch.Tensor) -> torch.Tensor:
        z = scatter(z)
        return torch.cat([f.result() for f in [submit(_vae_rows_task, plan, p, cfg, which, z, center, pure=False)
                                               for p in parts]])

    if weight <= 0:  # centred data: the mean first, as R^T 1 / N
        center = (columns_pass(torch.ones(n, 1, dtype=torch.float64))[:, 0] / max(n, 1)).float()
    directions, s = randomized_basis(rows_pass, columns_pass, n_rows, dim, max_basis, vae_seed(cfg, which),
                                     OVERSAMPLE if oversample is None else oversample)
    start = submit(_vae_start_task, cfg, model_sd, which, scatter(directions), s, n, center, pure=False)
    coeffs = [submit(_vae_coefficients_task, plan, sh, cfg, which, start, pure=False) for sh in plan.shards]
    trained = submit(_vae_train_task, cfg, which, start, *coeffs, pure=False)
    ends = [submit(_vae_error_task, plan, sh, cfg, which, trained, pure=False) for sh in plan.shards]
    return submit(_vae_choose_task, cfg, which, start, trained, *ends, pure=False)


def write_training_shapes(path: str | Path, plan: Plan) -> None:
    """``training_shapes.safetensors`` ({"rest": (S, V, 3) float32}, every training subject's rest
    shape, subject batches in order) written one batch at a time: the safetensors layout (8-byte
    little-endian header size, JSON header, raw little-endian C-order bytes) by hand, so that no
    process holds all rest shapes; ``safetensors.torch.load_file`` reads it."""
    import json
    import struct

    from ghum_pipe.io.atomic import atomic_path
    from ghum_pipe.model.store import read_shard_state

    n_subj = [len(set(s.subjects)) for s in plan.shards]
    shape = [sum(n_subj), plan.n_verts, 3]
    nbytes = 4 * shape[0] * shape[1] * shape[2]
    header = json.dumps({"rest": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data start 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for shard, k in zip(plan.shards, n_subj):
            rest = read_shard_state(shard.path, ("rest",))["rest"]
            if rest.shape != (k, plan.n_verts, 3):
                raise ValueError(f"{shard.path}: rest shapes {rest.shape}, expected {(k, plan.n_verts, 3)}")
            f.write(np.ascontiguousarray(rest, dtype="<f4").tobytes())


def _finish_task(plan: Plan, subjects, held_out, cfg: TrainConfig, model_sd: dict, model_dir: str, work: str,
                 started: float, history: list, shape: tuple, expression: tuple) -> dict:
    """Save the model with both VAEs fitted (``shape``/``expression``: (VAE state_dict, mm) of
    :func:`submit_vae_fit`): weights, config, training shapes; return its summary."""
    model = _model(cfg, model_sd)
    model.shape_vae.load_state_dict(shape[0])
    model.expression_vae.load_state_dict(expression[0])
    summary = dict(shape_vae_train_mm=shape[1], expression_vae_train_mm=expression[1])
    n = sum(len(s.scan_ids) for s in plan.shards)
    summary.update(history=list(history), n_scans=n, n_subjects=len(subjects), train_subjects=list(subjects),
                   heldout_subjects=list(held_out), work=str(work), train_config=cfg.to_dict(),
                   seconds=round(time.time() - started, 1))
    model.save(model_dir, extra=dict(training=summary))
    write_training_shapes(Path(model_dir) / "training_shapes.safetensors", plan)
    return summary


def submit_finish(submit, scatter, plan: Plan, subjects, held_out, cfg: TrainConfig, model_sd, model_dir: str,
                  work: str, started: float, history: list, after: list):
    """The end of one model's training: a last refresh by batch, both VAE fits
    (:func:`submit_vae_fit`, independent of each other) and the save (:func:`_finish_task`);
    returns the summary's future."""
    after = gate(submit, after)
    refreshed = [submit(_refresh_task, plan, s, cfg, model_sd, *after, pure=False) for s in plan.shards]
    shape = submit_vae_fit(submit, scatter, plan, cfg, "shape", model_sd, refreshed)
    expression = submit_vae_fit(submit, scatter, plan, cfg, "expression", model_sd, refreshed)
    return submit(_finish_task, plan, subjects, held_out, cfg, model_sd, model_dir, work, started, history, shape,
                  expression, pure=False)


def make_plan(store, scan_ids, subject_of: dict[str, str], resolution: str, state_dir: Path, shard_scans: int = 32,
              vblock: int = 512, batches_per_sum: int = 0, workers: int = 1) -> Plan:
    """The subject batches (state groups under ``state_dir``) and vertex blocks of one model.
    ``batches_per_sum`` subject batches per normal-equation task; 0: as many as keep ``workers``
    busy (blocks x groups of batches >= workers; one task per block when blocks >= workers).
    Written to ``state_dir/plan.json``, so that tasks take it by reference (:class:`Plan`)."""
    n_verts = int(store.index["key"]["n_verts" if resolution == "full" else "n_verts_low"])
    rows = {s: store.scans[s]["row"] for s in scan_ids}
    shards = tuple(Shard(k, ids, subj, str(Path(state_dir) / f"batch_{k:05d}"))
                   for k, (ids, subj) in enumerate(plan_shards(scan_ids, subject_of, rows, shard_scans)))
    blocks = tuple((lo, min(n_verts, lo + vblock)) for lo in range(0, n_verts, vblock))
    batches_per_sum = batches_per_sum or batches_per_group(len(shards), len(blocks), workers)
    return write_plan(Plan(str(store.path), resolution, n_verts, shards, vblock, batches_per_sum, blocks, workers),
                      Path(state_dir) / "plan.json")


def submit_model_step(submit, plan: Plan, cfg: TrainConfig, model_sd, round_: int, after: list,
                      checkpoint=None, after_joints: bool = False):
    """Submit step (b) of one round; returns the future of the new model state_dict and the
    futures the next step must wait for. ``checkpoint(model_sd, after)``, if given, is called
    after round 0's joint step C (it returns what must finish before the batches change again);
    ``after_joints``: round 0 resumed from that checkpoint (its first refresh and C are done)."""
    for i in range(cfg.inner):
        joints = cfg.learn_joints and round_ == 0 and i == 0
        if not (joints and after_joints):
            after = gate(submit, after)
            after = [submit(_refresh_task, plan, s, cfg, model_sd, *after, pure=False) for s in plan.shards]
        if joints and not after_joints:
            # C: one task per subject batch, then the refit (a reduction over the batches)
            after = gate(submit, after)
            parts = [submit(_joint_batch_task, plan, s, cfg, model_sd, *after, pure=False) for s in plan.shards]
            model_sd = submit(_joint_refit_task, cfg, model_sd, *parts, pure=False)
            after = [submit(_joints_task, plan, s, cfg, model_sd, pure=False) for s in plan.shards]
            if checkpoint is not None:
                after = checkpoint(model_sd, gate(submit, after))
        after = gate(submit, after)
        groups = batch_groups(len(plan.shards), plan.batches_per_sum)
        solutions = []
        for block in plan.block_slices():
            sums = [submit(_normals_task, plan, g, block, cfg, model_sd, *after, pure=False) for g in groups]
            solutions.append(submit(_solve_task, block, cfg, model_sd, *reduce_sums(submit, sums), pure=False))
        model_sd = submit(_apply_task, cfg, model_sd, *solutions, pure=False)
        after = [model_sd]
    return model_sd, after


def train_models(work: Path, out: Path, configs: dict[str, TrainConfig], client=None,
                 subject_pattern: str | None = None, shard_scans: int = 32, vblock: int = 512,
                 batches_per_sum: int = 0, timings: dict | None = None, resume: bool = True,
                 workers: int | None = None) -> dict:
    """Train each named config (e.g. ``{"ghum": ..., "ghuml": ...}``) into ``out/<name>``.

    With ``resume``, a model whose training in ``out`` was interrupted goes on after its last
    checkpoint when that was made from the same registrations and settings
    (``train_checkpoint``), else (or without ``resume``) it starts over.

    Uses ``client`` (a ``distributed.Client``) when given, else runs every task in this process.
    The same subject split (``holdout`` of the first config) is used for all models and recorded.
    ``shard_scans``: scans per subject batch; ``vblock``: vertices per block; ``workers``: the
    task slots to keep busy, at least the client's threads now (a batch cluster's jobs may not
    have started yet, so the CLI passes what it asked for); ``timings``, if
    given, receives the wall seconds of each phase (store, init, per round: pose, model, error).
    """
    from ghum_pipe.errors import ModelError
    from ghum_pipe.io.lock import DirLock

    work = Path(work).resolve()
    out = Path(out).resolve()  # tasks write the state and the models: absolute, whatever a worker's cwd
    # one training per model folder, and none packing or rewriting the registration store another reads
    with DirLock(out / ".lock", lambda: ModelError(
            "another 'ghum-pipe train' is writing this model folder", out,
            "Wait for it to finish (a rerun then resumes or reuses its work), or pass another --out")), \
         DirLock(work / ".train_store.lock", lambda: ModelError(
            "another 'ghum-pipe train' is reading this work dir's registrations", work,
            "Wait for it to finish; to train GHUM and GHUML at once, run one train without "
            "--lowres-only/--fullres-only")):
        return _train_models(work, out, configs, client, subject_pattern, shard_scans, vblock, batches_per_sum,
                             timings if timings is not None else {}, resume, workers)


def _train_models(work: Path, out: Path, configs: dict[str, TrainConfig], client, subject_pattern: str | None,
                  shard_scans: int, vblock: int, batches_per_sum: int, timings: dict, resume: bool,
                  workers: int | None) -> dict:
    """:func:`train_models` with ``out`` and ``work``'s registrations locked."""
    import shutil

    from ghum_pipe.io.subjects import work_subjects
    from ghum_pipe.model.data import scan_dirs
    from ghum_pipe.model.store import pack_registrations

    t0 = time.time()
    ids = [d.name for d in scan_dirs(work)]
    if not ids:
        from ghum_pipe.errors import ModelError

        raise ModelError("no scans/<id>/registration.ply found", path=work,
                         hint="Run 'ghum-pipe run' (or 'ghum-pipe synth --registrations') into this work dir first")
    record_training(work, out, {name: cfg.rounds for name, cfg in configs.items()})  # for 'ghum-pipe status'
    named = work_subjects(work, ids, subject_pattern)
    subject_of = {s: named[s] or s for s in ids}
    store, stats = pack_registrations(work, subject_of)
    timings["store"] = dict(stats, bytes=store.nbytes())
    first = next(iter(configs.values()))
    train_subj, held = split_subjects(tuple(sorted(set(subject_of.values()))), first.holdout, first.seed)
    subjects = tuple(train_subj)
    keep = set(subjects)
    train_ids = [s for s in ids if subject_of[s] in keep]
    log.info("training on %d scans of %d subjects (%d subjects held out)", len(train_ids), len(subjects), len(held))
    started = time.time()
    submit = client.submit if client is not None else inline_submit
    workers = max(workers or 1, sum(client.nthreads().values()) if client is not None else 1)
    state_root = Path(out) / STATE_DIR
    hashes = [store.scans[s]["hash"] for s in train_ids]
    plans, keys, model_sd, after, history, done, resumed_at = {}, {}, {}, {}, {}, {}, {}
    begun, resumed = {}, {}  # when each model's training began, counting the interrupted runs it resumes
    t0 = time.time()
    for name, cfg in configs.items():
        state_dir = state_root / name
        plans[name] = make_plan(store, train_ids, subject_of, cfg.model.resolution, run_dir(state_dir), shard_scans,
                                vblock, batches_per_sum, workers)
        claim(plans[name])
        keys[name] = key = checkpoint_key(plans[name], cfg, hashes)
        meta = read_checkpoint(state_dir, key) if resume else None
        keep = (Path(plans[name].file).parent.name, CURRENT) + ((CHECKPOINT,) if meta else ())
        clear_state(state_dir, keep)  # earlier runs' batches (and a checkpoint not taken)
        if meta is None:
            model_sd[name] = submit(_model0_task, cfg, pure=False)
            after[name] = [submit(_init_task, plans[name], s, cfg, model_sd[name], pure=False)
                           for s in plans[name].shards]
            history[name], done[name], resumed_at[name], begun[name] = [], 0, None, started
            after[name] = submit_checkpoint(submit, plans[name], model_sd[name], dict(
                key=key, rounds=0, stage="init", history=[], begun=started), gate(submit, after[name]))
        else:
            model_sd[name], after[name] = submit_restore(submit, plans[name])
            history[name], done[name] = meta["history"], meta["rounds"]
            resumed_at[name] = meta["stage"] if meta["stage"] == "joints" else None
            begun[name] = started - meta.get("seconds", 0.0)
            resumed[name] = dict(stage=meta["stage"], rounds=meta["rounds"], seconds_before=meta.get("seconds"))
            log.info("%s: resuming after %s (checkpoint of %s in %s)", name,
                     "round 0's joint step" if meta["stage"] == "joints" else
                     f"round {meta['rounds']}" if meta["rounds"] else "the start state", meta["time"], state_dir)
    _wait([a for v in after.values() for a in v])
    timings["init"] = round(time.time() - t0, 2)
    rounds = max(cfg.rounds for cfg in configs.values())
    timings["rounds"] = []
    for r in range(rounds):
        active = {n: c for n, c in configs.items() if done[n] <= r < c.rounds}
        if not active:
            continue
        t0 = time.time()
        phase = {}
        for name, cfg in active.items():
            if r == done[name] and resumed_at[name] == "joints":
                continue  # round 0 resumed after C: its poses are C's
            gate_ = gate(submit, after[name])
            after[name] = [submit(_pose_task, plans[name], s, cfg, model_sd[name], *gate_, pure=False)
                           for s in plans[name].shards]
        _wait([a for n in active for a in after[n]])
        phase["pose"] = round(time.time() - t0, 2)
        t1 = time.time()
        for name, cfg in active.items():
            joints_meta = dict(key=keys[name], rounds=r, stage="joints", history=list(history[name]),
                               begun=begun[name])
            model_sd[name], after[name] = submit_model_step(
                submit, plans[name], cfg, model_sd[name], r, after[name],
                lambda sd, aft, plan=plans[name], meta=joints_meta: submit_checkpoint(submit, plan, sd, meta, aft),
                after_joints=(r == done[name] and resumed_at[name] == "joints"))
        _wait([a for n in active for a in after[n]])
        phase["model"] = round(time.time() - t1, 2)
        t1 = time.time()
        for name, cfg in active.items():
            gate_ = gate(submit, after[name])
            errs = [submit(_error_task, plans[name], s, cfg, model_sd[name], *gate_, pure=False)
                    for s in plans[name].shards]
            history[name].append(submit(_history_task, r, *errs, pure=False).result())
            meta = dict(key=keys[name], rounds=r + 1, stage="round", history=list(history[name]),
                        begun=begun[name])
            after[name] = submit_checkpoint(submit, plans[name], model_sd[name], meta, gate_)
        phase["error"] = round(time.time() - t1, 2)
        phase["seconds"] = round(time.time() - t0, 2)
        timings["rounds"].append(phase)
        log.info("round %d/%d (%.0f s): %s", r + 1, rounds, time.time() - t0, {n: history[n][-1] for n in active})
    t0 = time.time()
    futures = {}
    scatter = client.scatter if client is not None else _Done
    for name, cfg in configs.items():
        futures[name] = submit_finish(submit, scatter, plans[name], subjects, tuple(held), cfg, model_sd[name],
                                      str(Path(out) / name), str(work), begun[name], history[name], after[name])
    summaries = {name: f.result() for name, f in futures.items()}
    timings["finish"] = round(time.time() - t0, 2)
    for name in configs:  # another model's interrupted training (not run this time) keeps its state
        shutil.rmtree(state_root / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        state_root.rmdir()
    write_json(Path(out) / "training.json", dict(
        models=summaries, seconds=round(time.time() - min(begun.values()), 1),
        seconds_this_run=round(time.time() - started, 1), resumed=resumed))
    return summaries


# Peak RSS of a training worker, bytes (docs/cluster.md): a base (Python, torch, Dask, the model
# being trained), the per-batch tasks (pose fits, C's step, refresh) per scan of a subject batch,
# and per training scan what still grows with N: the VAE fits' (n, 160) float64 sketches and the
# Adam task's coefficients and activations over all rows (a subject's rest shape, a scan's face
# offsets). GHUML's base and per-batch term from bench/train_scaling.py (0.80 GB per worker at 200
# and at 400 training scans; 0.88 GB at 1,600, so the base was raised from 0.65 to 0.72 GB to
# cover it; with the workers' allocator settings (worker_malloc.py) 0.85 GB at 200 and 0.99 GB at
# 1,600, so 0.85 GB); the per-scan term measured by bench/vae_finish.py (full
# resolution, one process running every finish task: 0.66 GB at 2,000 scans, 0.82 GB at 10,000,
# i.e. 20 KB per scan; the rows do not depend on the resolution); GHUM's base and per-batch term
# are estimates above its measured peaks (0.89 GB at 200 training scans, 0.91 GB at 1,600, with
# Dask's allocator settings).
MEMORY_BASE = {"low": 0.85e9, "full": 0.9e9}
MEMORY_PER_BATCH_SCAN = {"low": 4e6, "full": 18e6}
MEMORY_PER_SCAN = {"low": 0.02e6, "full": 0.02e6}


# A block's normal-equation sums (vblock 512; 10 PSD pairs x 9 features = 90, 4 influences), float64:
# with more workers than vertex blocks a solve task takes up to SUM_FAN_IN groups' sums, not one.
SUMS_BYTES = 512 * (90 * 90 + 3 * 90 * 4 + 3 * 90 + 4 * 4 + 4) * 8


def worker_memory_needed(n_train: int, resolutions, batch_scans: int, workers: int = 1) -> int:
    """Estimated peak bytes of one worker training ``n_train`` scans at ``resolutions``
    (``full``/``low``) in subject batches of ``batch_scans`` scans, on ``workers`` task slots
    (more than a resolution's vertex blocks: its solve tasks sum several groups)."""
    from ghum_pipe.model.store import template_key

    key = template_key()
    blocks = {"full": math.ceil(key["n_verts"] / 512), "low": math.ceil(key["n_verts_low"] / 512)}
    return int(max(MEMORY_BASE[r] + MEMORY_PER_BATCH_SCAN[r] * batch_scans + MEMORY_PER_SCAN[r] * n_train
                   + (SUM_FAN_IN - 1) * SUMS_BYTES * (workers > blocks[r]) for r in resolutions))


def training_memory(work: Path, configs: dict[str, TrainConfig], options, subject_pattern: str | None,
                    batch_scans: int):
    """The cluster options for training ``configs`` on WORK: worker memory from the tasks'
    sizes (:func:`worker_memory_needed`). Raises ClusterError (one line with the number and the
    options that fix it) when the workers cannot get it: ``--memory`` below it, or, on a local
    cluster, this machine's RAM / ``--workers`` below it. Returns ``options`` with ``memory`` set
    (local cluster: 1.5 x the need, at most RAM / workers)."""
    import psutil
    from dask.utils import format_bytes, parse_bytes

    from ghum_pipe.model.data import scan_dirs
    from ghum_pipe.pipelines.cluster import ClusterError

    n = len(scan_dirs(work))
    first = next(iter(configs.values()))
    n_train = int(round(n * (1 - first.holdout)))
    need = worker_memory_needed(n_train, {c.model.resolution for c in configs.values()}, batch_scans,
                                options.task_slots() or 1)
    log.info("training ~%d scans: ~%s per worker", n_train, format_bytes(need))
    if options.memory:
        have = parse_bytes(options.memory)
        if have < need:
            raise ClusterError(f"training {n_train} scans needs ~{format_bytes(need)} per worker, --memory gives "
                               f"{format_bytes(have)}", hint=f"Pass --memory {math.ceil(need / 1e9)}GB, or a smaller "
                               f"--batch-scans (now {batch_scans}) when most of it is per batch")
        return options
    if options.scheduler or options.cluster:
        return options  # their workers' memory is set where they are started (docs/cluster.md)
    workers = options.local_workers()
    per = psutil.virtual_memory().total / workers
    if per < need:
        fit = int(psutil.virtual_memory().total // need)
        raise ClusterError(f"training {n_train} scans needs ~{format_bytes(need)} per worker; this machine's "
                           f"{format_bytes(psutil.virtual_memory().total)} give {workers} workers "
                           f"{format_bytes(per)} each", hint=f"Pass --workers {max(1, fit)}"
                           + (" (or fewer scans)" if fit < 1 else "") + ", or run on a cluster with --memory "
                           f"{math.ceil(need / 1e9)}GB per worker")
    return dataclasses.replace(options, memory=str(int(min(per, 1.5 * need))))


def _wait(futures) -> None:
    for f in futures:
        f.result()


class _Done:
    """A finished result with the ``Future.result()`` API, for running without Dask."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _resolve(x):
    if isinstance(x, _Done):
        return x.value
    if isinstance(x, list):
        return [_resolve(a) for a in x]
    return x


def inline_submit(f, *args, **kwargs):
    """``Client.submit`` without a client: run ``f`` now, on its arguments' results."""
    return _Done(f(*(_resolve(a) for a in args)))
