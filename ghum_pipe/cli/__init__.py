"""``ghum-pipe``: the command line. Scheduling, files and messages only; no maths here.

Batch commands share one work dir ``W`` (``W/manifest.json``, ``W/scans/<id>/``, ``W/report/``)
and the Dask options of :func:`ghum_pipe.pipelines.cluster.cluster_click_options`.
Exit code: 0 when every scan passed every requested stage, 1 when some failed (one line each,
then a summary line), 2 for a usage or set-up error, 130 when interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import click

from ghum_pipe import __version__
from ghum_pipe.errors import GhumPipeError
from ghum_pipe.pipelines.cluster import ClusterOptions, cluster_click_options

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class SetupError(click.ClickException):
    """A GhumPipeError before any scan ran (bad work dir, cluster config, scan path)."""

    exit_code = EXIT_USAGE


def _setup_logging(verbose: int, quiet: bool) -> None:
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, console=_stderr_console())], force=True)
    if verbose < 2:
        # MediaPipe/TFLite (glog/absl) write C++ warnings straight to the workers' stderr; the
        # workers inherit this environment, the per-scan logs keep what matters.
        for var in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):
            os.environ.setdefault(var, "2")
    # distributed configures its own loggers at INFO on import; its chatter is not ours to show
    import distributed  # noqa: F401

    dask_level = (logging.ERROR, logging.WARNING, logging.DEBUG)[min(verbose, 2)]
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "dask_jobqueue", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(dask_level)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def batch_options(command):
    """Options shared by the batch commands (landmark, register, run, ingest)."""
    opts = [
        click.option("--work", "-w", "work", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Work dir: manifest, per-scan outputs and logs, report. Created if missing."),
        click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Extra attempts for a task that crashed or whose worker died (bad scans are not retried)."),
        click.option("--force", is_flag=True, help="Redo the requested stages even when up to date."),
        click.option("--only", "--scans", "only", multiple=True, metavar="ID",
                     help="Only these scan ids (repeat the option)."),
        click.option("--units", type=click.Choice(["m", "cm", "mm"]), default=None,
                     help="Units of the scan files (default: detected from the body's size)."),
        click.option("--up", default=None, metavar="AXIS",
                     help="Up axis of the scan files, e.g. +y, z, -y (default: detected)."),
        click.option("--verbose", "-v", count=True, help="More log output (-vv for debug)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars, errors only."),
    ]
    command = cluster_click_options(command)
    for opt in reversed(opts):
        command = opt(command)
    return command


def _in_work_dir(cluster, work: Path):
    """Local Dask workers keep their scratch files in W/.dask-scratch: nothing outside W."""
    if isinstance(cluster, ClusterOptions) and cluster.local_directory is None:
        return dataclasses.replace(cluster, local_directory=str(Path(work).resolve() / ".dask-scratch"))
    return cluster


def _run_stages(stages, scans, work, cluster, retries, force, only, units, up, verbose, quiet, extra_configs=None):
    """Shared body of the batch commands: run, print failures and the summary, return the result."""
    from ghum_pipe.pipelines.runner import run_batch
    from ghum_pipe.pipelines.scans import discover_scans
    from ghum_pipe.pipelines.stages import STAGES, closure

    _setup_logging(verbose, quiet)
    try:
        scan_paths = discover_scans(scans) if scans else None
        configs = {s: STAGES[s].default_config(units=units, up=up, **(extra_configs or {}).get(s, {}))
                   for s in closure(stages)}
        result = run_batch(work, scan_paths, stages, configs=configs, cluster=_in_work_dir(cluster, work),
                           retries=retries, force=force, only=only or None, progress=not quiet)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    for failure in result.failures:
        click.echo(failure.line())
    click.echo(result.summary())
    return result


def _exit_for(result) -> None:
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(version=__version__, prog_name="ghum-pipe")
def main():
    """Register raw 3D body scans to the rigged template and build GHUM/GHUML datasets.

    \b
    Typical use:
      ghum-pipe run scans/ --work W            # ingest -> landmark -> register -> report
      ghum-pipe status --work W                # what is done, failed (and why), pending
      ghum-pipe report --work W                # W/report/index.html
    Reruns skip what is up to date; --force redoes. Runs on all local cores by default,
    on a running Dask scheduler with --scheduler, or on SLURM/PBS/SGE with --cluster.
    """
    import threading

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a batch system's cancel, `kill`) stops like Ctrl-C: finished results are saved.
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@batch_options
def ingest(scans, work, cluster, **kw):
    """Check scans can be read and look like a person; write W/scans/<id>/scan.json.

    SCANS are files or folders (searched recursively for .ply .obj .stl .off .glb .gltf .pcd .xyz).

    \b
    Example:
      ghum-pipe ingest scans/ --work W --units mm
    """
    _exit_for(_run_stages(("ingest",), scans, work, cluster, **kw))


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@batch_options
def landmark(scans, work, cluster, **kw):
    """Detect 3D landmarks on scans: render, MediaPipe, triangulate (W/scans/<id>/landmarks.json).

    \b
    Example:
      ghum-pipe landmark scans/*.ply --work W --workers 2
    """
    _exit_for(_run_stages(("landmark",), scans, work, cluster, **kw))


@main.command()
@click.argument("scans", nargs=-1, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Torch device (default: the stage's).")
@click.option("--lowres", is_flag=True, help="Also write the GHUML low-res registration.")
@batch_options
def register(scans, device, lowres, work, cluster, **kw):
    """Register the template to scans (W/scans/<id>/registration.ply, params.npz, metrics.json).

    Without SCANS, registers the scans already in W (landmarking those that need it first).

    \b
    Examples:
      ghum-pipe register --work W
      ghum-pipe register --work W --scans subject01 --device cuda --lowres
    """
    extra = {"register": {"device": device, "lowres": lowres or None}}
    _exit_for(_run_stages(("register",), scans or None, work, cluster, extra_configs=extra, **kw))


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Torch device for registration.")
@click.option("--lowres", is_flag=True, help="Also write the GHUML low-res registration.")
@click.option("--no-report", is_flag=True, help="Do not write W/report at the end.")
@batch_options
def run(scans, device, lowres, no_report, work, cluster, **kw):
    """The whole pipeline: ingest -> landmark -> register -> report.

    \b
    Example:
      ghum-pipe run scans/ --work W --workers 2
      ghum-pipe run scans/ --work W --scheduler tcp://10.0.0.5:8786 --retries 2
    """
    from ghum_pipe.pipelines.cluster import ClientSession

    extra = {"register": {"device": device, "lowres": lowres or None}}
    with ClientSession(_in_work_dir(cluster, work)) as session:  # one cluster for the batch and the report's images
        result = _run_stages(("ingest", "landmark", "register"), scans, work, session, extra_configs=extra, **kw)
        if not no_report and not result.interrupted:
            _write_report(work, quiet=kw["quiet"], cluster=session)
    _exit_for(result)


@main.command()
@click.option("--work", "-w", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Work dir.")
@click.option("--all", "show_all", is_flag=True, help="List every scan (default: all if few, else those not done).")
def status(work, show_all):
    """Per scan and stage: done / failed with the reason / pending, and totals.

    \b
    Example:
      ghum-pipe status --work W --all
    """
    from ghum_pipe.pipelines.manifest import Manifest
    from ghum_pipe.pipelines.status import print_status

    try:
        print_status(Manifest.load_existing(work), show_all=show_all)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None


@main.command()
@click.option("--work", "-w", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Work dir.")
@click.option("--quiet", "-q", is_flag=True)
@cluster_click_options
def report(work, quiet, cluster):
    """Write W/report/index.html: a sortable table of scans, images, error and timing histograms.

    Static and offline (inline CSS/JS): open it in any browser. It links the per-scan images in
    W/scans, so move or share W as a whole. Overlay images are rendered on Dask workers
    (same options as the batch commands) and only when a registration changed.

    \b
    Example:
      ghum-pipe report --work W && xdg-open W/report/index.html
    """
    _write_report(work, quiet, cluster)


def _write_report(work: Path, quiet: bool, cluster=None) -> None:
    from ghum_pipe.pipelines.report import write_report

    _setup_logging(0, quiet)
    try:
        index = write_report(work, cluster=_in_work_dir(cluster, work))
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    if not quiet:
        click.echo(f"report: {index}")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _add_commands() -> None:
    """The commands defined in their own modules (``synth``; ``train``, ``evaluate``, ``sample``).
    Those modules import only click at the top, so listing the commands imports no torch."""
    from ghum_pipe.cli.model_commands import evaluate, sample, train
    from ghum_pipe.synth.command import synth

    for command in (synth, train, evaluate, sample):
        main.add_command(command)


_add_commands()
