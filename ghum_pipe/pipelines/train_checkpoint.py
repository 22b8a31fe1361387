"""Resuming an interrupted training: one model's checkpoint in ``OUT/.train_state/<model>/``.

A training of tens of thousands of scans runs for hours, and a batch system's time limit, a
preemption or Ctrl-C may end it. At each checkpoint (after the start state, after round 0's
joint step C, after every round) the schedule copies every subject batch's state (one task per
batch) and then writes the model's state_dict and what the driver knows (rounds done, the
history) beside them, into ``checkpoint.tmp-<run>/``, which is renamed to ``checkpoint/`` only
when whole. A rerun of the same ``train`` reads ``checkpoint/checkpoint.json``; if its key (the
training registrations' content hashes, the plan, the settings but the number of rounds) is
this run's, the batches are restored from the copies into the new run's folder
(:func:`run_dir`) and training goes on after the checkpoint, so that the result is the
uninterrupted run's (tests/test_train_scale.py); otherwise the state is discarded and training
starts over. Each run writes its batches into a folder of its own and marks itself ``current``:
a task of an interrupted run that still runs on a shared scheduler's workers neither writes into
the new run's batches nor commits a checkpoint. The copies cost one batch's state per task, and
the driver holds only the small ``checkpoint.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

STATE_DIR = ".train_state"  # in OUT: one folder per model
CHECKPOINT, TMP, OLD = "checkpoint", "checkpoint.tmp", "checkpoint.old"  # TMP-<run>: a run's own
CURRENT = "current"  # the name of the run folder that may write checkpoints
META, WEIGHTS = "checkpoint.json", "model.safetensors"


def checkpoint_key(plan, cfg, hashes) -> str:
    """What a checkpoint is valid for: the plan (store, batches, blocks; not the run's paths, nor
    how many batches one sum takes, which follows the number of workers), the settings except
    ``rounds`` (a rerun with more rounds continues), and the training scans' content hashes."""
    cut = dict(store=plan.store, resolution=plan.resolution, n_verts=plan.n_verts, vblock=plan.vblock,
               blocks=plan.blocks, shards=[(s.scan_ids, s.subjects) for s in plan.shards])
    settings = {k: v for k, v in cfg.to_dict().items() if k != "rounds"}
    text = json.dumps(dict(plan=cut, settings=settings, scans=list(hashes)), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def run_dir(state_dir: str | Path) -> Path:
    """A new folder for this run's batches and plan. Each run writes its own, so that a task of
    an interrupted run still running on a shared cluster cannot write into the resumed run's."""
    import uuid

    return Path(state_dir) / f"run-{uuid.uuid4().hex[:12]}"


def _state_dir(plan) -> Path:
    """The model's state folder (the run's folder, :func:`run_dir`, is the plan's)."""
    return Path(plan.file).parent.parent


def _tmp(plan) -> Path:
    return _state_dir(plan) / f"{TMP}-{Path(plan.file).parent.name}"


def read_checkpoint(state_dir: str | Path, key: str) -> dict | None:
    """The checkpoint's metadata when it was made for ``key``, else None (and why, in the log).
    A checkpoint left as ``checkpoint.old`` by an interrupted swap is taken back first."""
    state_dir = Path(state_dir)
    final, old = state_dir / CHECKPOINT, state_dir / OLD
    if not final.exists() and old.exists():
        with contextlib.suppress(OSError):
            os.replace(old, final)
    try:
        meta = json.loads((final / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        log.warning("%s: a checkpoint from other registrations or settings: training starts over", final)
        return None
    return meta


def claim(plan) -> None:
    """Make the plan's run the model's current one (``current``: its folder's name). A task of an
    interrupted run that still runs on a shared cluster then writes no checkpoint."""
    from ghum_pipe.io.atomic import atomic_path

    with atomic_path(_state_dir(plan) / CURRENT) as tmp:
        tmp.write_text(Path(plan.file).parent.name)


def _is_current(plan) -> bool:
    try:
        return (_state_dir(plan) / CURRENT).read_text() == Path(plan.file).parent.name
    except OSError:
        return False


def clear_state(state_dir: str | Path, keep: tuple[str, ...] = ()) -> None:
    """Remove a model's training state (earlier runs' batches, checkpoints) but ``keep``
    (tolerating what an interrupted run's late task removes at the same time)."""
    state_dir = Path(state_dir)
    if state_dir.exists():
        for p in state_dir.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _copy_batch_task(plan, shard, *after) -> str:
    """Copy one batch's state into ``checkpoint.tmp/`` (after every task that writes it)."""
    dst = _tmp(plan) / Path(shard.path).name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(shard.path, dst)
    return dst.name


def _commit_task(plan, model_sd: dict, meta: dict, *copies) -> dict:
    """The model's weights and ``meta`` into ``checkpoint.tmp/``, then the swap to ``checkpoint/``."""
    from safetensors.torch import save_file

    state_dir = _state_dir(plan)
    tmp, final, old = _tmp(plan), state_dir / CHECKPOINT, state_dir / OLD
    if not _is_current(plan):  # a late task of an interrupted run: another run took over
        shutil.rmtree(tmp, ignore_errors=True)
        return dict(meta, superseded=True)
    save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / WEIGHTS))
    meta = dict(meta, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    if "begun" in meta:  # the training's seconds so far, the interrupted runs' included
        meta["seconds"] = round(time.time() - meta["begun"], 1)
    (tmp / META).write_text(json.dumps(meta))
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return meta


def _restore_batch_task(plan, shard) -> str:
    """Replace one batch's state by its copy in the checkpoint."""
    src = _state_dir(plan) / CHECKPOINT / Path(shard.path).name
    shutil.rmtree(shard.path, ignore_errors=True)
    shutil.copytree(src, shard.path)
    return shard.path


def _weights_task(plan) -> dict:
    from safetensors.torch import load_file

    return load_file(str(_state_dir(plan) / CHECKPOINT / WEIGHTS))


def submit_checkpoint(submit, plan, model_sd, meta: dict, after: list) -> list:
    """Write a checkpoint once ``after`` (one gate future, or a few) has finished; returns the
    future to wait on before anything writes a batch's state again."""
    shutil.rmtree(_tmp(plan), ignore_errors=True)
    _tmp(plan).mkdir(parents=True)
    copies = [submit(_copy_batch_task, plan, s, *after, pure=False) for s in plan.shards]
    return [submit(_commit_task, plan, model_sd, meta, *copies, pure=False)]


def submit_restore(submit, plan) -> tuple:
    """Restore every batch and the weights from the checkpoint: (state_dict future, futures
    to wait on before the batches are read)."""
    after = [submit(_restore_batch_task, plan, s, pure=False) for s in plan.shards]
    return submit(_weights_task, plan, pure=False), after
