"""Training GHUM and GHUML as Dask tasks (the shell around ``train.py``'s pure steps).

Per round and per model: (a) one pose task per chunk of scans (embarrassingly parallel),
(b) one model-step task; GHUM's and GHUML's tasks are independent, so the two models train in
parallel on the cluster. Training state stays on the workers as futures; the driver only
moves the small per-chunk pose results. Workers read the registrations from the shared work
dir once per process (``data.load_registrations`` is cached), so ``--scheduler`` clusters on
machines that see the same file system work unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.io.atomic import write_json
from ghum_pipe.model.config import TrainConfig
from ghum_pipe.model.data import RegistrationSet, load_registrations, split_subjects

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _training_set(work: str, resolution: str, pattern: str | None, subjects: tuple[str, ...]) -> RegistrationSet:
    data = load_registrations(work, resolution, pattern)
    keep = np.isin(np.array(data.subjects)[data.subject_index], subjects)
    return data.select(keep)


def _init_task(work, resolution, pattern, subjects, cfg: TrainConfig):
    from ghum_pipe.model.train import init_state, model_from_state, refresh_shapes

    data = _training_set(work, resolution, pattern, subjects)
    model = model_from_state(cfg.model, None)
    torch.manual_seed(cfg.seed)  # the VAEs' MLPs start random: same seed, same model
    model.load_state_dict(type(model)(cfg.model).state_dict())  # a fresh start, not a cached one
    state = init_state(model, data)
    for _ in range(3):
        refresh_shapes(model, data, state)
    return state


def _pose_task(work, resolution, pattern, subjects, cfg: TrainConfig, state, idx: np.ndarray):
    from ghum_pipe.model.train import model_from_state, pose_step

    data = _training_set(work, resolution, pattern, subjects)
    model = model_from_state(cfg.model, state.model)
    return idx, *pose_step(model, data, state, idx, cfg.pose_iters)


def _apply_poses(state, results):
    for idx, pose, trans in results:
        state.pose[idx], state.translation[idx] = pose, trans
    return state


def _model_task(work, resolution, pattern, subjects, cfg: TrainConfig, state, round_: int):
    from ghum_pipe.model.train import model_from_state, model_step

    data = _training_set(work, resolution, pattern, subjects)
    model_step(model_from_state(cfg.model, state.model), data, state, cfg, round_)
    return state


def _finish_task(work, resolution, pattern, subjects, held_out, cfg: TrainConfig, state, model_dir: str,
                 started: float):
    """Fit the VAEs, save the model (weights, config, training shapes) and return its summary."""
    from safetensors.torch import save_file

    from ghum_pipe.io.atomic import atomic_path
    from ghum_pipe.model.train import fit_vaes, model_from_state

    data = _training_set(work, resolution, pattern, subjects)
    model = model_from_state(cfg.model, state.model)
    summary = fit_vaes(model, data, state, cfg)
    model.load_state_dict(state.model)
    summary.update(history=state.history, n_scans=len(data), n_subjects=len(data.subjects),
                   train_subjects=list(subjects), heldout_subjects=list(held_out), work=str(work),
                   train_config=cfg.to_dict(), seconds=round(time.time() - started, 1))
    model.save(model_dir, extra=dict(training=summary))
    with atomic_path(Path(model_dir) / "training_shapes.safetensors") as tmp:
        save_file({"rest": state.rest.contiguous()}, str(tmp))
    return summary


def train_models(work: Path, out: Path, configs: dict[str, TrainConfig], client=None,
                 subject_pattern: str | None = None) -> dict:
    """Train each named config (e.g. ``{"ghum": ..., "ghuml": ...}``) into ``out/<name>``.

    Uses ``client`` (a ``distributed.Client``) when given, else runs every task in this process.
    The same subject split (``holdout`` of the first config) is used for all models and recorded.
    """
    work = str(Path(work).resolve())
    first = next(iter(configs.values()))
    full = load_registrations(work, "full", subject_pattern)
    train_subj, held = split_subjects(full.subjects, first.holdout, first.seed)
    subjects = tuple(train_subj)
    n = int(np.isin(np.array(full.subjects)[full.subject_index], subjects).sum())
    log.info("training on %d scans of %d subjects (%d subjects held out)", n, len(subjects), len(held))
    started = time.time()
    submit = client.submit if client is not None else (lambda f, *a, **k: _Done(f(*a)))
    common = lambda cfg: (work, cfg.model.resolution, subject_pattern, subjects)  # noqa: E731
    states = {name: submit(_init_task, *common(cfg), cfg, pure=False) for name, cfg in configs.items()}
    rounds = max(cfg.rounds for cfg in configs.values())
    for r in range(rounds):
        t0 = time.time()
        for name, cfg in configs.items():
            if r >= cfg.rounds:
                continue
            chunks = [np.arange(lo, min(n, lo + cfg.chunk)) for lo in range(0, n, cfg.chunk)]
            results = [submit(_pose_task, *common(cfg), cfg, states[name], idx, pure=False) for idx in chunks]
            states[name] = submit(_apply_poses, states[name], results, pure=False)
            states[name] = submit(_model_task, *common(cfg), cfg, states[name], r, pure=False)
        hist = {name: s.result().history[-1] for name, s in states.items() if r < configs[name].rounds}
        log.info("round %d/%d (%.0f s): %s", r + 1, rounds, time.time() - t0, hist)
    futures = {name: submit(_finish_task, *common(cfg), tuple(held), cfg, states[name], str(Path(out) / name),
                            started, pure=False) for name, cfg in configs.items()}
    summaries = {name: f.result() for name, f in futures.items()}
    write_json(Path(out) / "training.json", dict(models=summaries, seconds=round(time.time() - started, 1)))
    return summaries


class _Done:
    """A finished result with the ``Future.result()`` API, for running without Dask."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _resolve(x):
    return x.value if isinstance(x, _Done) else x


# without a client the tasks receive _Done objects: unwrap them
for _name in ("_init_task", "_pose_task", "_apply_poses", "_model_task", "_finish_task"):
    _f = globals()[_name]

    @functools.wraps(_f)
    def _unwrapping(*args, _f=_f, **kwargs):
        args = [[_resolve(a) for a in x] if isinstance(x, list) else _resolve(x) for x in args]
        torch.set_num_threads(max(1, torch.get_num_threads()))
        return _f(*args, **kwargs)

    globals()[_name] = _unwrapping
