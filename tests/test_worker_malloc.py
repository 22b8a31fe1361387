"""The workers' allocator settings (pipelines/worker_malloc.py), on a real LocalCluster opened the
way every command opens it: a task that allocates and frees a 16 MiB array 50 times touches
fresh pages each time under Dask's settings (50 x 4,096 page faults), and reuses the first
array's pages under ours. torch, as the stages allocate: numpy asks for huge pages above 4 MiB,
which hides the faults."""

import sys

import pytest

from ghum_pipe.pipelines.cluster import ClusterOptions, open_client
from ghum_pipe.pipelines.worker_malloc import ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")

ARRAYS, PAGES = 50, 16 * 2**20 // 4096  # 16 MiB arrays, 4 KiB pages


def _churn() -> int:
    """Minor page faults of allocating, filling and freeing a 16 MiB array ARRAYS times."""
    import resource

    import torch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(ARRAYS):
        a = torch.ones(PAGES * 512, dtype=torch.float64)  # PAGES pages, every one written
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _faults(monkeypatch, setting: str | None) -> int:
    if setting is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, setting)
    with open_client(ClusterOptions(workers=1, memory="2GB")) as client:
        client.submit(_churn, pure=False).result()  # the worker's first use of the memory
        return client.submit(_churn, pure=False).result()


def test_workers_reuse_freed_memory_instead_of_faulting_it_in_again(monkeypatch):
    ours = _faults(monkeypatch, None)
    dask = _faults(monkeypatch, "dask")
    # Dask's settings: each array is a fresh mmap, all its pages fault (measured 204,857 for
    # 204,800 pages). Ours: the first arrays' pages serve the others (measured 2 arrays' worth,
    # 8,192, with 1 or 2 BLAS threads; the task before trimmed them away once). Bound: 3 arrays.
    assert dask >= 0.9 * ARRAYS * PAGES, dask
    assert ours <= 3 * PAGES, ours
