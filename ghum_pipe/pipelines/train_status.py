"""Where the trainings of a work dir stand, for ``ghum-pipe status``.

``train`` records each model folder it trains into from W in ``W/trainings.json`` (the models,
their rounds, when it started), under W's training lock. ``status`` reads that and, per model
folder, whether a ``train`` still holds it (its lock), the finished ``training.json``, or each
model's last checkpoint (``train_checkpoint``): so a training of hours shows how far it got, and
an interrupted one says that a rerun resumes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ghum_pipe.io.atomic import write_json
from ghum_pipe.io.lock import lock_holder
from ghum_pipe.pipelines.train_checkpoint import CHECKPOINT, META, STATE_DIR

RUNS = "trainings.json"  # in W


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def record_training(work: Path, out: Path, rounds: dict[str, int]) -> None:
    """Note in ``W/trainings.json`` that ``out`` is being trained from W now (``rounds``: per
    model, its number of rounds). The caller holds W's training lock: one writer."""
    runs = _read(Path(work) / RUNS)
    runs[str(Path(out).resolve())] = dict(models=dict(rounds), started=round(time.time(), 1))
    write_json(Path(work) / RUNS, runs)


def training_status(work: Path) -> list[dict]:
    """The trainings recorded in W whose model folders still exist, newest first: ``{"out", "state": running|done|interrupted,
    "started", "seconds", "pid", "models": {name: {"rounds", "of", "stage", "checkpoint", "fit_mm"}}}``.
    ``rounds`` counts the rounds done (by the last checkpoint while not done); ``stage`` is the
    checkpoint's (init, joints, round) or "done"."""
    rows = []
    for out, rec in _read(Path(work) / RUNS).items():
        out = Path(out)
        if not out.is_dir():  # removed since: nothing to show
            continue
        pid = lock_holder(out / ".lock")
        started = float(rec.get("started", 0.0))
        result = out / "training.json"
        done = pid is None and result.exists() and result.stat().st_mtime >= started
        summary = _read(result).get("models", {}) if done else {}
        models = {}
        for name, total in rec.get("models", {}).items():
            if done and name in summary:
                history = summary[name].get("history") or [{}]
                models[name] = dict(rounds=total, of=total, stage="done", checkpoint=None,
                                    fit_mm=history[-1].get("fit_mm"))
                continue
            meta = _read(out / STATE_DIR / name / CHECKPOINT / META)
            models[name] = dict(rounds=meta.get("rounds", 0), of=total, stage=meta.get("stage"),
                                checkpoint=meta.get("time"), fit_mm=None)
        state = "running" if pid is not None else "done" if done else "interrupted"
        seconds = _read(result).get("seconds") if done else time.time() - started if state == "running" else None
        rows.append(dict(out=str(out), state=state, started=time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
                         seconds=seconds, pid=pid or None, models=models))
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def describe(row: dict) -> str:
    """One line per training for the terminal, e.g. ``running (pid 812, 35 min): ghum round 1 of
    3 done (checkpoint 07:40)``."""
    def model(name, m):
        if m["stage"] == "done":
            return f"{name} done" + (f", fit {m['fit_mm']:.2f} mm" if m.get("fit_mm") is not None else "")
        if m["stage"] is None:
            return f"{name} " + ("starting (no checkpoint yet)" if row["state"] == "running" else "no checkpoint")
        where = {"init": "start state ready", "joints": "round 0's joint step done"}.get(
            m["stage"], f"round {m['rounds']} of {m['of']} done")
        return f"{name} {where} (checkpoint {m['checkpoint']})"

    parts = "; ".join(model(n, m) for n, m in row["models"].items())
    mins = f"{row['seconds'] / 60:.0f} min" if row["seconds"] is not None else None
    head = {"running": f"running (pid {row['pid']}" + (f", {mins}" if mins else "") + ")",
            "done": "done" + (f" in {mins}" if mins else ""),
            "interrupted": "interrupted: the same 'ghum-pipe train' command resumes it"
            if any(m["stage"] for m in row["models"].values()) else
            "interrupted before its first checkpoint: the same 'ghum-pipe train' command starts it over"}[row["state"]]
    return f"{row['out']}: {head}: {parts}"
