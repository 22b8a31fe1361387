"""Run stages over many scans as one Dask graph, resumably.

``run_batch(work, scans, stages, ...)``:

1. takes the work dir's lock, removes temp files a killed run left, loads ``W/manifest.json``;
2. records the scans (content hash, re-hashed only when size/mtime changed);
3. plans, per scan and stage (upstream first), ``skip`` when the manifest (or a done marker) holds
   a ``done`` record with the same key and the outputs exist, else ``run``; a stage whose upstream
   runs also runs;
4. submits one task per (scan, stage) with its upstream tasks as Dask dependencies, so scans flow
   through the stages without a barrier between stages (downstream tasks have priority, so scans
   finish end to end early);
5. streams results back with ``as_completed``, updating the manifest (atomically) and a progress
   bar per stage; a failing scan is recorded and the batch goes on;
6. returns a :class:`BatchResult`; Ctrl-C/SIGTERM cancels the rest and saves what finished.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ghum_pipe.pipelines.cluster import ClientSession, ClusterOptions, session_client
from ghum_pipe.pipelines.manifest import (
    Manifest, ManifestLock, ThrottledSaver, WorkDirError, config_hash, log_path, stage_key, sweep_temp_files,
)
from ghum_pipe.pipelines.stages import STAGES, closure, config_record
from ghum_pipe.pipelines.task import now_iso, run_stage_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """One scan that did not pass a stage. reason: the stage's one-line error."""

    scan_id: str
    stage: str
    reason: str
    log: Path | None

    def line(self) -> str:
        where = f"  (log: {self.log})" if self.log else ""
        return f"FAILED {self.scan_id} [{self.stage}]: {self.reason}{where}"


@dataclass
class BatchResult:
    """counts[stage] = {"done": n run and passed, "cached": n skipped as up to date,
    "failed": n, "blocked": n not run because an upstream stage failed}."""

    stages: tuple[str, ...]
    scan_ids: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(
            c["done"] + c["cached"] == len(self.scan_ids) for s, c in self.counts.items() if s in self.stages
        )

    def summary(self) -> str:
        parts = []
        # the requested stages, and upstream ones only when they had something to do
        shown = [s for s, c in self.counts.items()
                 if s in self.stages or c["done"] + c["failed"] + c["blocked"]]
        for stage in shown:
            c = self.counts[stage]
            text = f"{stage}: {c['done']} done, {c['cached']} up to date, {c['failed']} failed"
            if c["blocked"]:
                text += f", {c['blocked']} blocked"
            parts.append(text)
        head = "INTERRUPTED" if self.interrupted else ("OK" if self.ok else "FAILED")
        return f"{head}: {len(self.scan_ids)} scan(s); " + "; ".join(parts)


def run_batch(
    work: str | Path,
    scans: Mapping[str, Path] | None,
    stages: tuple[str, ...],
    configs: Mapping[str, Any] | None = None,
    cluster: ClusterOptions | ClientSession | None = None,
    retries: int = 1,
    force: bool = False,
    only: tuple[str, ...] | None = None,
    progress: bool = True,
    subject_pattern: str | None = None,
) -> BatchResult:
    """Run ``stages`` (and the upstream stages they need) on ``scans`` in work dir ``work``.

    scans: ``{id: path}`` to add to the work dir, or None for the scans it already has.
    configs: ``{stage: config}``; missing ones get the stage's default config.
    cluster: where to run (``ClusterOptions``), or a ``ClientSession`` shared with later steps; the
        client is only opened when there is something to run.
    retries: extra attempts for a task that crashed or whose worker died (bad input is not retried).
    force: redo the requested stages even when up to date (upstream stages are kept if current).
    only: restrict to these scan ids.
    subject_pattern: regex whose group 1 in the scan id is the subject (``ghum_pipe.io.subjects``;
        subjects.csv in W or next to the scans wins).
    """
    work = Path(work).resolve()
    configs = dict(configs or {})
    plan_stages = closure(stages)
    for name in plan_stages:
        if name not in configs:
            configs[name] = STAGES[name].default_config()
    with ManifestLock(work):
        for tmp in sweep_temp_files(work):
            log.info("removed a temp file left by an interrupted run: %s", tmp)
        manifest = Manifest.load(work)
        if scans:
            manifest.add_scans(dict(scans))
        ids = sorted(scans) if scans else manifest.ids()
        if only:
            unknown = sorted(set(only) - set(ids))
            if unknown:
                raise WorkDirError(f"unknown scan id(s) {', '.join(unknown[:5])}", work,
                                   "See 'ghum-pipe status --work W' for the ids")
            wanted = set(only)
            ids = [i for i in ids if i in wanted]
        if not ids:
            raise WorkDirError("no scans to process", work, "Pass scan files or folders, e.g. "
                               "'ghum-pipe run scans/ --work W'")
        subjects = record_subjects(manifest, ids, subject_pattern)
        manifest.save()
        result = BatchResult(stages=tuple(stages), scan_ids=ids,
                             counts={s: dict(done=0, cached=0, failed=0, blocked=0) for s in plan_stages})
        saver = ThrottledSaver(manifest)
        plan = _plan(manifest, ids, plan_stages, configs, set(stages) if force else set(), subjects)
        for stage in plan_stages:
            result.counts[stage]["cached"] = sum(1 for (i, s), p in plan.items() if s == stage and p is None)
        todo = {k: v for k, v in plan.items() if v is not None}
        log.info("%d task(s) to run, %d up to date", len(todo), len(plan) - len(todo))
        if todo:
            try:
                _execute(work, manifest, saver, todo, plan_stages, configs, cluster, retries, progress, result)
            except KeyboardInterrupt:
                result.interrupted = True
                log.warning("interrupted: unfinished tasks cancelled, finished results saved; "
                            "run the same command again to resume")
            finally:
                saver.flush()
                sweep_temp_files(work)
        manifest.save()
    return result


def per_scan_config(config, kind: str):
    """The stage config for one scan: a config with a ``kind`` field left at None (auto) gets the
    scan's kind (body/head/hand_left/hand_right), so it is hashed into the stage key and a changed
    kind re-runs the scan."""
    names = {f.name for f in dataclasses.fields(config)}
    if "kind" in names and config.kind is None:
        return dataclasses.replace(config, kind=kind)
    return config


def with_subject(config, subject: str | None):
    """``config`` with its ``subject`` label set (configs that have one: ingest). A label is not
    hashed (``stages.config_record``): naming a subject never re-runs a scan."""
    if subject is not None and "subject" in {f.name for f in dataclasses.fields(config)}:
        return dataclasses.replace(config, subject=subject)
    return config


def record_subjects(manifest: Manifest, ids, pattern: str | None = None) -> dict[str, str | None]:
    """Resolve each scan's subject (``ghum_pipe.io.subjects``: W/subjects.csv, subjects.csv next
    to the scan, ``pattern``) and record it in the manifest. Scans whose outputs already exist are
    relabelled in place when a source names another subject (``scan.json``, ``params.npz``):
    a subject is a label, it never re-runs a scan. A subject once recorded is kept while no source
    names one (a run without ``--subject-pattern`` does not forget it)."""
    from ghum_pipe.io.subjects import recorded_subject, resolve_subjects

    resolved = resolve_subjects({i: manifest.scans[i]["path"] for i in ids}, manifest.work, pattern)
    out = {}
    for scan_id in ids:
        folder = manifest.work / "scans" / scan_id
        recorded = recorded_subject(folder)
        subject = resolved[scan_id] or recorded or manifest.scans[scan_id].get("subject")
        if resolved[scan_id] is not None and resolved[scan_id] != recorded:
            relabel_outputs(folder, resolved[scan_id])
        manifest.scans[scan_id]["subject"] = subject
        out[scan_id] = subject
    return out


def relabel_outputs(folder: Path, subject: str) -> None:
    """Write ``subject`` into a scan folder's ``scan.json`` and ``params.npz`` where they exist
    (atomically; the rest of each file unchanged)."""
    import json

    import numpy as np

    from ghum_pipe.io.atomic import write_json, write_npz

    if (folder / "scan.json").is_file():
        try:
            doc = json.loads((folder / "scan.json").read_text())
        except ValueError:
            doc = None  # a broken record: the ingest stage rewrites it
        if isinstance(doc, dict) and doc.get("subject") != subject:
            write_json(folder / "scan.json", dict(doc, subject=subject))
    if (folder / "params.npz").is_file():
        with np.load(folder / "params.npz", allow_pickle=False) as z:  # lazy: reads one member
            same = "subject" in z.files and str(z["subject"]) == subject
            arrays = None if same else {k: z[k] for k in z.files}
        if arrays is not None:
            write_npz(folder / "params.npz", **dict(arrays, subject=np.array(subject)))


def _plan(manifest: Manifest, ids, plan_stages, configs, forced: set, subjects: dict | None = None) -> dict:
    """``{(scan_id, stage): None (up to date) | (key, cfg_hash, config)}``; logs why stages run.
    Each scan's config carries its kind (``per_scan_config``, kinds from ``io.kinds``) and its
    subject label (``with_subject``, not hashed)."""
    from ghum_pipe.io.kinds import resolve_kinds

    plan: dict = {}
    why: Counter = Counter()
    kinds = resolve_kinds({i: manifest.scans[i]["path"] for i in ids}, manifest.work)
    cfg_cache: dict = {}
    for scan_id in ids:
        keys: dict[str, str] = {}
        input_hash = manifest.scans[scan_id].get("input_hash", "")
        for stage in plan_stages:
            spec = STAGES[stage]
            if (stage, kinds[scan_id]) not in cfg_cache:
                cfg = per_scan_config(configs[stage], kinds[scan_id])
                cfg_cache[(stage, kinds[scan_id])] = (cfg, config_hash(config_record(cfg)))
            cfg, cfg_hash = cfg_cache[(stage, kinds[scan_id])]
            cfg = with_subject(cfg, (subjects or {}).get(scan_id))
            key = stage_key(stage, input_hash, cfg_hash, [keys[d] for d in spec.depends])
            keys[stage] = key
            upstream_runs = any(plan.get((scan_id, d)) is not None for d in spec.depends)
            current = stage not in forced and not upstream_runs and manifest.is_current(
                scan_id, stage, key, spec.outputs)
            plan[(scan_id, stage)] = None if current else (key, cfg_hash, cfg)
            if not current:
                why[(stage, _reason(manifest, scan_id, stage, cfg_hash, forced, upstream_runs))] += 1
    for (stage, reason), n in sorted(why.items()):
        log.info("%s: %d scan(s) to run (%s)", stage, n, reason)
    return plan


def _reason(manifest: Manifest, scan_id: str, stage: str, cfg_hash: str, forced: set, upstream_runs: bool) -> str:
    """Why a stage that is not up to date runs, for the log (-v)."""
    rec = manifest.stage(scan_id, stage)
    if stage in forced:
        return "--force"
    if rec is None:
        return "new"
    if rec.get("status") != "done":
        return f"{rec.get('status')} before"
    if upstream_runs:
        return "an upstream stage runs"
    if rec.get("config_hash") != cfg_hash:
        return "config changed"
    if not all((manifest.work / "scans" / scan_id / o).exists() for o in STAGES[stage].outputs):
        return "outputs missing"
    return "scan or upstream result changed"


def _execute(work, manifest, saver, todo, plan_stages, configs, cluster, retries, show_progress, result):
    from distributed import as_completed

    from ghum_pipe.pipelines.progress import StageProgress

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    totals = {s: sum(1 for (_, st) in todo if st == s) for s in plan_stages}
    with session_client(cluster) as client, StageProgress(totals, enabled=show_progress) as bars:
        check_workers(client, work)
        futures: dict = {}
        meta: dict = {}
        for stage_index, stage in enumerate(plan_stages):
            for (scan_id, st), (key, cfg_hash, cfg) in todo.items():
                if st != stage:
                    continue
                upstream = [futures[(scan_id, d)] for d in STAGES[stage].depends if (scan_id, d) in futures]
                fut = client.submit(
                    run_stage_task, stage, scan_id, manifest.scans[scan_id]["path"], str(work), cfg,
                    key, cfg_hash, run_id, upstream or None,
                    key=f"{stage}-{scan_id}-{run_id}", retries=retries, priority=stage_index, pure=False,
                )
                futures[(scan_id, stage)] = fut
                meta[fut.key] = (scan_id, stage, key, cfg_hash, upstream, cfg)
        try:
            for fut in as_completed(list(futures.values())):
                scan_id, stage, key, cfg_hash, upstream, cfg = meta.pop(fut.key)
                record = _collect(fut, work, scan_id, stage, key, cfg_hash, cfg, run_id, upstream)
                _apply(manifest, result, work, scan_id, stage, record)
                bars.advance(stage, record["status"])
                saver.touch()
                futures.pop((scan_id, stage), None)
        except KeyboardInterrupt:
            client.cancel(list(futures.values()), force=True)
            raise


def check_workers(client, work: Path) -> None:
    """Fail fast, before submitting thousands of tasks, when a connected worker cannot import
    ghum_pipe or does not see the work dir (workers on other machines need the same environment
    and a shared file system). Workers that join later (batch jobs) are not checked here."""
    from ghum_pipe.pipelines.task import worker_sees

    if not client.scheduler_info().get("workers"):
        return
    try:
        sees = client.run(worker_sees, str(work))  # unpickling it on the worker imports ghum_pipe
    except Exception as e:  # noqa: BLE001 - whatever the worker says, the cause is its environment
        raise WorkDirError(f"a Dask worker cannot import ghum_pipe ({type(e).__name__}: {e})", work,
                           "Start 'dask worker' from the environment where ghum-pipe is installed") from None
    blind = sorted(a for a, ok in sees.items() if not ok)
    if blind:
        raise WorkDirError(f"Dask worker(s) {', '.join(blind[:3])} do not see the work dir", work,
                           "Put W (and the scans) on a file system all machines share, at the same path")


def _collect(fut, work, scan_id, stage, key, cfg_hash, config, run_id, upstream) -> dict:
    """The task's record, or a ``failed`` one when it crashed on every attempt or its workers died
    (``blocked`` when that happened to an upstream task: the failure is reported there, once)."""
    try:
        return fut.result()
    except Exception as e:  # noqa: BLE001 - whatever killed the task is reported per scan
        if any(up.status == "error" for up in upstream):
            return {"stage": stage, "status": "blocked", "key": key, "error": "an upstream stage did not finish"}
        first = (str(e).strip().splitlines() or [""])[0][:300]
        kind = type(e).__name__
        reason = (f"worker died running it ({kind}: {first}); out of memory? try fewer --workers or more --memory"
                  if kind == "KilledWorker" else f"internal error {kind}: {first}")
        return {"stage": stage, "status": "failed", "key": key, "config_hash": cfg_hash, "config": config_record(config),
                "run": run_id, "error": reason, "error_type": kind, "finished": now_iso(),
                "log": str(log_path(work, scan_id, stage).relative_to(work)), "metrics": None}


def _apply(manifest, result, work, scan_id, stage, record) -> None:
    status = record["status"]
    result.counts[stage][status] += 1
    if status == "blocked":
        manifest.set_stage(scan_id, stage, {"status": "blocked", "key": record["key"], "error": record["error"]})
        return
    manifest.set_stage(scan_id, stage, record)
    if status == "failed":
        result.failures.append(Failure(scan_id, stage, record["error"], work / record["log"]))
