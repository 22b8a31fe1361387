"""Batch runs: Dask scheduling, the resumable work dir, status and the HTML report.

``cluster`` (where workers come from), ``manifest`` (what is done, keyed by content and config
hashes), ``stages`` + ``ingest`` + ``task`` (one stage on one scan, on a worker, with its log),
``runner`` (the Dask graph over scans, progress, failures), ``status`` and ``report``.
No maths here: the stages' cores live in ``landmarks/`` and ``register/``.

>>> from ghum_pipe.pipelines import ClusterOptions, run_batch
>>> result = run_batch("W", {"s1": "scans/s1.ply"}, ("landmark",), cluster=ClusterOptions(workers=2))
>>> result.ok, result.failures
"""

from ghum_pipe.pipelines.cluster import ClusterError, ClusterOptions, open_client
from ghum_pipe.pipelines.manifest import Manifest, WorkDirError
from ghum_pipe.pipelines.runner import BatchResult, Failure, run_batch

__all__ = ["BatchResult", "ClusterError", "ClusterOptions", "Failure", "Manifest", "WorkDirError", "open_client",
           "run_batch"]
