"""What every ``ghum-pipe`` command shares: ``-w/--work``, ``-v``/``-q``, exit codes, logging,
and the checks that turn a user's set-up mistake into one line and exit code 2.

Only click and the standard library at import time: listing the commands must stay fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import click

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# W/.dask-scratch: local Dask workers' spill space, removed at exit; = pipelines.manifest.SCRATCH
# (not imported from there: listing the commands imports no numpy)
DASK_SCRATCH = ".dask-scratch"


class SetupError(click.ClickException):
    """A user error before any scan ran (bad work dir, cluster config, scan path, model): one
    line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def work_option(exists: bool = False, help: str | None = None):
    """``-w/--work W``, the same on every command. exists: the work dir must already exist
    (else one line, exit 2, not click's usage block)."""
    text = help or ("Work dir: manifest, per-scan outputs and logs, report" + ("." if exists else "; created if missing."))

    def check(ctx, param, value):
        if exists and value is not None and not Path(value).is_dir():
            raise SetupError(f"{value}: no such work dir. Pass the --work folder of an earlier "
                             "'ghum-pipe run' (or 'ghum-pipe synth --registrations')")
        return value

    return click.option("--work", "-w", "work", required=True, help=text, callback=check,
                        type=click.Path(file_okay=False, path_type=Path))


def verbosity_options(command):
    """``-v`` (repeatable: -vv debug, Dask's own logs from -v) and ``-q`` (errors only)."""
    command = click.option("--quiet", "-q", is_flag=True, help="No progress bars, errors only.")(command)
    return click.option("--verbose", "-v", count=True,
                        help="More log output: -v adds Dask's warnings, -vv debug.")(command)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Our messages at WARNING (-v: INFO, -vv: DEBUG; -q: ERROR) on stderr; Dask's own loggers
    at ERROR unless -v (their start-up and shutdown chatter is not the user's business)."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, console=Console(stderr=True))], force=True)
    if verbose < 2:
        # MediaPipe/TFLite (glog/absl) write C++ warnings straight to the workers' stderr; the
        # workers inherit this environment, the per-scan logs keep what matters.
        for var in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):
            os.environ.setdefault(var, "2")
    # distributed configures its own loggers at INFO on import; set them after that import
    import distributed  # noqa: F401

    from ghum_pipe.pipelines.cluster import set_dask_log_level

    set_dask_log_level((logging.ERROR, logging.WARNING, logging.DEBUG)[min(verbose, 2)])


def writable_dir(path: Path, what: str = "work dir") -> Path:
    """``path`` created if missing and checked writable (a probe file), else SetupError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SetupError(f"{path}: cannot write to this {what} ({reason}). "
                         f"Choose a folder you can write to, e.g. --work ~/ghum-work") from None
    return path


def in_work_dir(cluster, work: Path):
    """Local Dask workers keep their scratch files in ``W/.dask-scratch/<pid>`` (removed when the
    cluster closes, with ``W/.dask-scratch`` when empty) and write their stderr to
    ``W/logs/workers.log``: nothing is written outside W, and nothing of theirs in the terminal."""
    from ghum_pipe.pipelines.cluster import ClusterOptions

    if isinstance(cluster, ClusterOptions) and cluster.local_directory is None:
        work = Path(work).resolve()
        return dataclasses.replace(cluster, local_directory=str(work / DASK_SCRATCH / str(os.getpid())),
                                   worker_log=cluster.worker_log or str(work / "logs" / "workers.log"))
    return cluster
