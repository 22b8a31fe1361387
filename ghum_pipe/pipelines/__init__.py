"""Batch runs: Dask scheduling, the resumable work dir, status and the HTML report.

``cluster`` (where workers come from), ``manifest`` (what is done, keyed by content and config
hashes), ``stages`` + ``ingest`` + ``task`` (one stage on one scan, on a worker, with its log),
``runner`` (the Dask graph over scans, progress, failures), ``status`` and ``report``.
No maths here: the stages' cores live in ``landmarks/`` and ``register/``.

>>> from ghum_pipe.pipelines import ClusterOptions, run_batch
>>> result = run_batch("W", {"s1": "scans/s1.ply"}, ("landmark",), cluster=ClusterOptions(workers=2))
>>> result.ok, result.failures
"""

import importlib

# Imported on first use (PEP 562): the CLI imports ``pipelines.cluster`` to list its options, and
# listing commands must not pull in numpy, the io stack or Dask.
_EXPORTS = {"ClusterError": "cluster", "ClusterOptions": "cluster", "open_client": "cluster",
            "Manifest": "manifest", "WorkDirError": "manifest",
            "BatchResult": "runner", "Failure": "runner", "run_batch": "runner"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ghum_pipe.pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ghum_pipe.pipelines.{_EXPORTS[name]}"), name)
