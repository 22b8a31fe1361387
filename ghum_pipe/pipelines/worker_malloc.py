"""glibc's allocator on the Dask workers: keep freed memory for the next tensor, give it back
after each task.

A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``), so that freed memory goes back to the system. Setting
it also switches off glibc's dynamic mmap threshold, which then stays at 128 KiB: every array
above 128 KiB is a fresh ``mmap``, every page of it a page fault and a page cleared, and every
free an ``munmap``. The stages allocate tens of MB per torch operation (a batch of posed bodies,
per-vertex transforms), so the workers spent 25-55 % of their CPU time in the kernel. CPU
seconds, Dask's settings / these (docs/cluster.md, "The workers' memory allocator"):

    register, per body scan (2 workers, batch runner)   18.7 / 13.8
    train, GHUML, 250 scans, 1 round (2 workers)         87 (33 system) / 61 (9 system)

(``bench/scaling.py --compare-malloc``, ``bench/train_scaling.py --malloc-peer N``).

:class:`WorkerMalloc`, a worker plugin that ``cluster.open_client`` registers on every cluster it
opens (``GHUM_PIPE_WORKER_MALLOC=dask`` leaves Dask's settings), sets the mmap threshold to
glibc's maximum (32 MiB) and the trim threshold to 64 MiB in each worker process, so that a
freed tensor's memory serves the next one, and calls ``malloc_trim(0)`` after each task, so that
what a task freed does not stay with the worker for the next one (the peak RSS stays near a
task's own). On a system without glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 64 * 2**20
PLUGIN_NAME = "ghum-pipe-malloc"
ENV = "GHUM_PIPE_WORKER_MALLOC"  # "dask": leave Dask's settings (the benchmarks' peer)


def glibc():
    """This process's glibc (``ctypes.CDLL``), or None when the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(libc) -> bool:
    """Set this process's mmap and trim thresholds (see the module); True when glibc took both."""
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class WorkerMalloc(WorkerPlugin):
    """The allocator settings of the module docstring, in every worker of the cluster (also
    the workers that join later: Dask keeps a registered plugin)."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker) -> None:
        self._libc = glibc()
        if self._libc is not None and not tune_malloc(self._libc):
            log.warning("worker %s: mallopt refused the allocator settings; the workers keep Dask's", worker.address)
            self._libc = None

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        if start == "executing" and self._libc is not None:  # a task ended (memory, error, ...)
            self._libc.malloc_trim(0)


def register_worker_malloc(client) -> bool:
    """Register :class:`WorkerMalloc` on ``client``'s cluster, unless ``GHUM_PIPE_WORKER_MALLOC``
    is ``dask``; True when registered. A worker that cannot take it (one that cannot import
    ghum_pipe) leaves a log line (-v) here, not an error: the batch's own check of the workers'
    environment names the problem in one line."""
    if os.environ.get(ENV, "").lower() == "dask":
        log.info("%s=dask: the workers keep Dask's allocator settings", ENV)
        return False
    try:
        client.register_plugin(WorkerMalloc())
    except Exception as e:  # noqa: BLE001 - e.g. a worker without ghum_pipe: the batch's own check says so
        log.info("the workers keep Dask's allocator settings (%s: %s)", type(e).__name__, str(e).splitlines()[0][:200])
        return False
    return True
