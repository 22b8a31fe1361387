"""What one Dask task does on a worker: run one stage on one scan, with its own log file.

Tasks receive paths and a small config, never arrays: the worker reads the scan itself, so the
scheduler only carries a few hundred bytes per task. The template is loaded once per worker
process (``load_template`` is ``lru_cache``d), because the same process runs many tasks.

A stage's own errors (``ScanError``, ``LandmarkError``, ``RegistrationError``: bad input, not worth
retrying) come back as a ``failed`` record. Anything else (a bug, out of memory) is logged with
its traceback and re-raised, so Dask retries it ``--retries`` times, like a task whose worker died.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

from ghum_pipe.errors import GhumPipeError
from ghum_pipe.io.atomic import write_json


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def task_log(path: Path, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send this thread's log records (all loggers) to ``path`` while the block runs.

    A filter on the thread id keeps two tasks of a multi-threaded worker out of each other's logs.
    The file is a log, appended to as the task goes, so it is readable even if the worker dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")  # a fresh log per attempt; appended to by both Python and native code
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    handler.setLevel(level)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, level) if old_level else level)
    logging.captureWarnings(True)
    try:
        with _native_stderr_to(path):
            yield logging.getLogger("ghum_pipe.pipelines.task")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


@contextlib.contextmanager
def _native_stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while the task runs, so what C++ libraries print
    (MediaPipe/TFLite warnings, once per view) lands in the scan's log, not in the user's terminal.

    Only in a single-threaded Dask worker (the default): the descriptor is per process, and two
    tasks running at once in one process would swap each other's logs.
    """
    try:
        from distributed import get_worker

        single = get_worker().state.nthreads == 1
    except (ImportError, ValueError, AttributeError):
        single = False
    if not single:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def run_stage_task(stage: str, scan_id: str, scan_path: str, work: str, config, key: str, cfg_hash: str,
                   run_id: str, upstream: list | None = None) -> dict:
    """Run ``stage`` on one scan; return its manifest record (a small dict).

    upstream: the records of the stages this one depends on that ran in the same batch (Dask
        passes their results); if one of them did not finish, this stage is ``blocked`` and does
        not run.
    """
    from ghum_pipe.pipelines.manifest import log_path, marker_path, scan_dir
    from ghum_pipe.pipelines.stages import STAGES, config_record

    work_dir = Path(work)
    for up in upstream or ():
        if up.get("status") != "done":
            return {"status": "blocked", "key": key, "error": f"{up.get('stage')} did not finish", "stage": stage}
    folder = scan_dir(work_dir, scan_id)
    log_file = log_path(work_dir, scan_id, stage)
    record = {
        "stage": stage, "key": key, "config_hash": cfg_hash, "config": config_record(config), "run": run_id,
        "log": str(log_file.relative_to(work_dir)), "worker": _worker_address(), "started": now_iso(),
    }
    start = time.perf_counter()
    cpu0 = _process_cpu_s()
    with task_log(log_file) as log:
        log.info("%s %s: %s (config %s)", stage, scan_id, scan_path, record["config"])
        try:
            metrics = STAGES[stage].load_entry()(scan_path, folder, config)
        except GhumPipeError as e:
            log.error("%s failed: %s", stage, e)
            record.update(status="failed", error=str(e), error_type=type(e).__name__, metrics=None)
        except BaseException:
            log.error("%s crashed (will be retried if --retries allows):\n%s", stage, traceback.format_exc())
            raise
        else:
            record.update(status="done", error=None, error_type=None, metrics=_jsonable(metrics or {}))
        record.update(finished=now_iso(), seconds=round(time.perf_counter() - start, 3),
                      cpu_s=round(_process_cpu_s() - cpu0, 3),
                      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        log.info("%s %s in %.2f s", stage, record["status"], record["seconds"])
    if record["status"] == "done":
        write_json(marker_path(work_dir, scan_id, stage), record)
    return record


def worker_sees(work: str) -> bool:
    """Run on each worker before a batch: True when it sees the work dir (a shared file system)."""
    return os.path.isdir(work)


def _process_cpu_s() -> float:
    """CPU seconds (user + system) of this worker process so far, all its threads. With one task
    per worker process at a time, the difference over a task is the task's CPU time; ``cpu_s /
    seconds`` below the cores it could use means it waited for a CPU (a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _jsonable(obj):
    """Metrics as plain JSON types (numpy scalars/arrays become numbers/lists)."""
    import json

    from ghum_pipe.io.atomic import json_default

    return json.loads(json.dumps(obj, default=json_default))
