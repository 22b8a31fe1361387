"""Where the Dask work runs: a LocalCluster on this machine, an existing scheduler, or a batch
system (SLURM, PBS, SGE) through dask-jobqueue.

Every batch command and the model trainer get their client the same way::

    from ghum_pipe.pipelines.cluster import ClusterOptions, open_client

    with open_client(ClusterOptions(workers=2)) as client:
        futures = client.map(run_one, paths)

- default: ``distributed.LocalCluster`` with one single-threaded *process* per core (the stages
  are Python/torch heavy, so processes, not threads, give the speed-up), bound to 127.0.0.1,
  no dashboard unless asked (then on a free port).
- ``scheduler="tcp://HOST:PORT"``: connect to a running ``dask scheduler`` whose ``dask worker``
  processes the user started (any machines that see the same file system).
- ``cluster="slurm"|"pbs"|"sge"`` with ``cluster_config=FILE``: dask-jobqueue (the ``cluster``
  extra, ``pip install ghum-pipe[cluster]``) submits ``workers`` jobs; the YAML/JSON file holds the
  keyword arguments of ``SLURMCluster``/``PBSCluster``/``SGECluster`` (``cores``, ``memory``,
  ``queue``, ``account``, ``walltime``, ``job_extra_directives``, ...), see docs/cluster.md.

Click users add the same options to their command with :func:`cluster_click_options`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ghum_pipe.errors import GhumPipeError

log = logging.getLogger(__name__)

CLUSTER_KINDS = ("slurm", "pbs", "sge")
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub", "sge": "qsub"}


class ClusterError(GhumPipeError):
    """The Dask cluster cannot be set up: bad cluster config file, scheduler unreachable,
    dask-jobqueue missing."""


@dataclass(frozen=True)
class ClusterOptions:
    """How to get Dask workers.

    workers: LocalCluster worker processes (None: one per core), or the number of batch jobs
        with ``cluster`` (None: 1). Ignored with ``scheduler``.
    threads_per_worker: threads per worker process (1 by default: the stages run torch/numpy
        code that does not release the GIL enough for threads to pay off).
    scheduler: address of a running scheduler, ``tcp://HOST:PORT``.
    cluster: ``slurm``, ``pbs`` or ``sge`` (dask-jobqueue).
    cluster_config: YAML or JSON file of keyword arguments for the dask-jobqueue cluster class.
    memory: memory limit per worker, e.g. ``"4GB"`` (LocalCluster: None = the machine's memory
        split evenly; jobqueue: overrides the file's ``memory``).
    dashboard: start the Dask dashboard (on a free port; its address is logged).
    local_directory: LocalCluster workers' scratch space (the commands put it in
        ``W/.dask-scratch``, so nothing is written outside the work dir; removed when the cluster
        closes if it was created for it); None = Dask's default.
    worker_log: LocalCluster worker processes' stderr (their own logs, warnings, the traceback
        of a worker that died) is appended to this file instead of the terminal (the commands:
        ``W/logs/workers.log``); None = the terminal.
    """

    workers: int | None = None
    threads_per_worker: int = 1
    scheduler: str | None = None
    cluster: str | None = None
    cluster_config: str | None = None
    memory: str | None = None
    dashboard: bool = False
    local_directory: str | None = None
    worker_log: str | None = None

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ClusterError(f"--workers {self.workers}: need at least 1 worker", hint="Pass --workers 1 or more")
        if self.threads_per_worker < 1:
            raise ClusterError(
                f"--threads-per-worker {self.threads_per_worker}: need at least 1", hint="Pass 1 or more"
            )
        if self.cluster is not None and self.cluster not in CLUSTER_KINDS:
            raise ClusterError(
                f"--cluster {self.cluster}: unknown batch system", hint=f"Use one of {', '.join(CLUSTER_KINDS)}"
            )
        if self.scheduler is not None and self.cluster is not None:
            raise ClusterError(
                "--scheduler and --cluster both given", hint="Use --scheduler for a running scheduler, "
                "or --cluster to submit jobs, not both"
            )
        if self.cluster_config is not None and self.cluster is None:
            raise ClusterError(
                "--cluster-config without --cluster", path=self.cluster_config,
                hint="Add --cluster slurm|pbs|sge",
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs: where the work runs."""
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        if self.cluster:
            return f"{self.cluster} via dask-jobqueue, {self.workers or 1} job(s), config {self.cluster_config}"
        return f"local: {self.local_workers()} worker process(es) x {self.threads_per_worker} thread(s)"

    def local_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def task_slots(self) -> int | None:
        """Tasks that can run at once, as far as known before the client starts: a local
        cluster's processes x threads, the jobs asked for with --cluster, None for --scheduler
        without --workers."""
        if self.scheduler or self.cluster:
            return self.workers
        return self.local_workers() * self.threads_per_worker


def load_cluster_config(path: str | Path, kind: str) -> dict[str, Any]:
    """Read the keyword arguments for a dask-jobqueue cluster from a YAML or JSON file.

    Accepts a flat mapping (``cores: 8``, ``memory: 32GB``, ``queue: short``, ...) or Dask's own
    config layout (``jobqueue: {slurm: {...}}``), from which the ``kind`` section is taken.
    """
    path = Path(path)
    if not path.is_file():
        raise ClusterError("cluster config file not found", path, "Pass an existing YAML/JSON file to --cluster-config")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # a dependency of dask

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise ClusterError(f"cannot parse cluster config ({type(e).__name__}: {str(e).splitlines()[0]})", path,
                           "Write a YAML or JSON mapping, see docs/cluster.md") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ClusterError("cluster config is not a mapping", path, "Write keys like cores: 8, memory: 32GB")
    if "jobqueue" in data:
        section = data["jobqueue"]
        if not isinstance(section, dict) or kind not in section:
            raise ClusterError(f"no jobqueue.{kind} section", path, f"Add a 'jobqueue: {kind}:' mapping or use a flat one")
        data = section[kind] or {}
    return dict(data)


def build_jobqueue_cluster(options: ClusterOptions, scale: bool = True):
    """The dask-jobqueue cluster object for ``options.cluster`` (not scaled if ``scale`` is False).

    ``cluster.job_script()`` shows the batch script each job will run, a useful check before
    submitting (``ghum-pipe ... --cluster slurm --cluster-config c.yaml -v`` logs it).
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError(
            f"--cluster {options.cluster} needs dask-jobqueue, which is not installed",
            hint="pip install 'ghum-pipe[cluster]'",
        ) from None
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "sge": dask_jobqueue.SGECluster}[options.cluster]
    kwargs = load_cluster_config(options.cluster_config, options.cluster) if options.cluster_config else {}
    if options.memory:
        kwargs["memory"] = options.memory
    kwargs.setdefault("processes", 1)  # one worker process per job unless the file says otherwise
    # the dashboard on a free port: several runs may share a login node
    kwargs["scheduler_options"] = {"dashboard_address": ":0", **(kwargs.get("scheduler_options") or {})}
    missing = [k for k in ("cores", "memory") if k not in kwargs]
    if missing:
        raise ClusterError(
            f"{options.cluster} cluster config lacks {' and '.join(missing)}",
            options.cluster_config, "Set e.g. cores: 4 and memory: 16GB (per job) in the config file",
        )
    try:
        cluster = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ClusterError(f"invalid {options.cluster} cluster config: {e}", options.cluster_config,
                           "Use the keyword arguments of dask_jobqueue." + cls.__name__) from None
    if scale:
        cluster.scale(jobs=options.workers or 1)
    return cluster


@contextlib.contextmanager
def open_client(options: ClusterOptions | None = None) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client`` for ``options``; close it (and any cluster it started)
    on exit, also on Ctrl-C or an exception."""
    import distributed

    options = options or ClusterOptions()
    log.info("dask: %s", options.describe())
    if options.scheduler:
        try:
            client = distributed.Client(options.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ClusterError(
                f"cannot reach the Dask scheduler {options.scheduler} ({type(e).__name__})",
                hint="Start one with 'dask scheduler' and pass its tcp://HOST:PORT",
            ) from None
        with client:
            _tune_workers(client)
            yield client
        return
    if options.cluster:
        cluster = build_jobqueue_cluster(options, scale=False)
        log.info("job script:\n%s", cluster.job_script())
        submit = SUBMIT_COMMANDS[options.cluster]
        if shutil.which(submit) is None:
            cluster.close()
            raise ClusterError(f"--cluster {options.cluster}: '{submit}' is not on PATH here",
                               hint="Run ghum-pipe on the cluster's login node, or use --scheduler")
        cluster.scale(jobs=options.workers or 1)
    else:
        scratch = None if options.local_directory is None else Path(options.local_directory)
        made_scratch = scratch is not None and not scratch.exists()
        try:
            with _workers_stderr_to(options.worker_log):
                cluster = distributed.LocalCluster(
                    n_workers=options.local_workers(),
                    threads_per_worker=options.threads_per_worker,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    scheduler_kwargs={"dashboard": options.dashboard},
                    memory_limit=options.memory or "auto",
                    local_directory=options.local_directory,
                    silence_logs=logging.ERROR,
                )
        except KeyboardInterrupt:  # Ctrl-C while the workers start
            _abandon(None)
            _remove_scratch(scratch, made_scratch)
            raise
    interrupted = False
    try:
        with cluster, distributed.Client(cluster) as client:
            if options.dashboard:
                log.warning("dask dashboard: %s", client.dashboard_link)
            try:
                _tune_workers(client)  # inside: a Ctrl-C during it unwinds as one during the run
                yield client
            except KeyboardInterrupt:
                interrupted = True
                mute_dask_logs()  # before the workers' connections close under the scheduler
                raise
            finally:
                if not interrupted:
                    _quiet_shutdown(client)
    except KeyboardInterrupt:
        _abandon(cluster)
        raise
    finally:
        if not options.cluster:
            _remove_scratch(scratch, made_scratch)


def _tune_workers(client) -> None:
    """Every worker of ``client``'s cluster, now and later, keeps freed memory for its next
    tensor and trims it after each task (``worker_malloc``: 25-55 % of the workers' CPU time was
    page faults under Dask's allocator settings). ``GHUM_PIPE_WORKER_MALLOC=dask`` in the
    environment leaves Dask's settings (the benchmarks' peer)."""
    from ghum_pipe.pipelines.worker_malloc import register_worker_malloc

    register_worker_malloc(client)


@contextlib.contextmanager
def _workers_stderr_to(path: str | None):
    """Worker processes started inside this block write their stderr to ``path`` (appended),
    not to the terminal: their own logs and warnings, and the KeyboardInterrupt tracebacks of
    workers that a terminal's Ctrl-C (sent to the whole process group) hits while they import
    Dask. This process's messages return to the terminal when the block ends."""
    import sys

    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _remove_scratch(scratch: Path | None, made: bool) -> None:
    """The local workers' spill space (``W/.dask-scratch/<pid>``), and ``W/.dask-scratch`` when
    no other run uses it: nothing left behind."""
    if scratch is None or not made:
        return
    shutil.rmtree(scratch, ignore_errors=True)
    with contextlib.suppress(OSError):
        scratch.parent.rmdir()


DASK_LOGGERS = ("distributed", "dask_jobqueue", "bokeh", "tornado")


def set_dask_log_level(level: int, roots: tuple[str, ...] = DASK_LOGGERS) -> None:
    """``level`` for the loggers under ``roots`` in this process, each one that exists (distributed
    gives its own loggers levels of their own on import, so setting the roots is not enough)."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in roots]
    for name in names + list(roots):
        logging.getLogger(name).setLevel(level)


def mute_dask_logs() -> None:
    """Silence this process's Dask loggers for the rest of an interrupted run. Ctrl-C in a
    terminal (SIGTERM from a batch system, ``kill`` of the process group) reaches the worker
    processes too: the scheduler and nannies here then log every dropped connection and every
    worker that failed to start (asyncio: "Task exception was never retrieved"), with
    tracebacks, after the one-line message."""
    set_dask_log_level(logging.CRITICAL + 1, DASK_LOGGERS + ("asyncio",))


def _abandon(cluster) -> None:
    """After an interrupt: close ``cluster`` (or a LocalCluster whose start was interrupted,
    which the caller never got) quietly and within seconds. distributed's own exit hook would
    otherwise close it again and print an ``AssertionError`` traceback for a half-started one."""
    from distributed.deploy.spec import SpecCluster

    mute_dask_logs()
    clusters = [cluster] if cluster is not None else list(SpecCluster._instances)
    for c in clusters:
        with contextlib.suppress(BaseException):
            c.close(timeout=5)
        c.shutdown_on_close = False


def _quiet_shutdown(client) -> None:
    """Before a cluster we started is closed: a worker whose heartbeat fires after the scheduler
    went away logs an ERROR traceback ("Failed to communicate with scheduler during heartbeat")
    after the batch's summary. Errors during the run are still logged; only shutdown is muted."""
    def mute():
        for name in ("distributed.worker", "distributed.core", "distributed.nanny"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    with contextlib.suppress(Exception):
        client.run(mute)


class ClientSession:
    """A Dask client opened on first use and shared by the steps that follow (``run``: the batch,
    then the report's images), so a batch-system cluster is submitted once, and not at all when
    everything is up to date::

        with ClientSession(options) as session:
            run_batch(W, scans, stages, cluster=session)   # session.client() when there is work
            write_report(W, cluster=session)
    """

    def __init__(self, options: ClusterOptions | None = None):
        self.options = options or ClusterOptions()
        self._stack: contextlib.ExitStack | None = None
        self._client = None

    def client(self):
        if self._client is None:
            self._stack = contextlib.ExitStack()
            self._client = self._stack.enter_context(open_client(self.options))
        return self._client

    def __enter__(self) -> "ClientSession":
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.__exit__(*exc)  # an interrupt reaches open_client as one
        self._stack = self._client = None


@contextlib.contextmanager
def session_client(cluster: "ClusterOptions | ClientSession | None"):
    """Yield a client from options (opened and closed here) or from a shared session (kept open)."""
    if isinstance(cluster, ClientSession):
        yield cluster.client()
    else:
        with open_client(cluster) as client:
            yield client


def cluster_click_options(command: Callable) -> Callable:
    """Decorator adding ``--workers``, ``--threads-per-worker``, ``--scheduler``, ``--cluster``,
    ``--cluster-config``, ``--memory`` and ``--dashboard`` to a click command; the command
    receives them as one ``cluster: ClusterOptions`` keyword argument."""
    import functools

    import click

    opts = [
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes (default: one per core), or jobs with --cluster."),
        click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Threads per worker process."),
        click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
                     help="Use a running 'dask scheduler' (and its 'dask worker's) instead of a local cluster."),
        click.option("--cluster", "cluster_kind", type=click.Choice(CLUSTER_KINDS), default=None,
                     help="Submit workers as batch jobs with dask-jobqueue (see docs/cluster.md)."),
        click.option("--cluster-config", type=click.Path(dir_okay=False), default=None,
                     help="YAML/JSON keyword arguments for the dask-jobqueue cluster (cores, memory, queue, ...)."),
        click.option("--memory", default=None, metavar="SIZE", help="Memory limit per worker, e.g. 4GB."),
        click.option("--dashboard/--no-dashboard", default=False, help="Start the Dask dashboard on a free port."),
    ]

    @functools.wraps(command)
    def wrapper(*args, workers, threads_per_worker, scheduler, cluster_kind, cluster_config, memory, dashboard,
                **kwargs):
        try:
            options = ClusterOptions(workers=workers, threads_per_worker=threads_per_worker, scheduler=scheduler,
                                     cluster=cluster_kind, cluster_config=cluster_config, memory=memory,
                                     dashboard=dashboard)
        except ClusterError as e:
            raise click.UsageError(str(e)) from None
        return command(*args, cluster=options, **kwargs)

    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper
