"""``ghum-pipe``: the command line. Scheduling, files and messages only; no maths here.

Batch commands share one work dir ``W`` (``W/manifest.json``, ``W/scans/<id>/``, ``W/report/``)
and the Dask options of :func:`ghum_pipe.pipelines.cluster.cluster_click_options`.
Exit code: 0 when every scan passed every requested stage, 1 when some failed (one line each,
then a summary line), 2 for a usage or set-up error, 130 when interrupted.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from ghum_pipe import __version__
from ghum_pipe.cli.options import (
    EXIT_FAILED, EXIT_INTERRUPTED, SetupError, in_work_dir, setup_logging, verbosity_options, work_option, writable_dir,
)
from ghum_pipe.errors import GhumPipeError
from ghum_pipe.pipelines.cluster import cluster_click_options, mute_dask_logs


def batch_options(command):
    """Options shared by the batch commands (landmark, register, run, ingest)."""
    opts = [
        work_option(),
        click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Extra attempts for a task that crashed or whose worker died (bad scans are not retried)."),
        click.option("--force", is_flag=True, help="Redo the requested stages even when up to date."),
        click.option("--only", "--scans", "only", multiple=True, metavar="ID",
                     help="Only these scan ids (repeat the option)."),
        click.option("--units", type=click.Choice(["m", "cm", "mm"]), default=None,
                     help="Units of the scan files (default: detected from the body's size)."),
        click.option("--up", default=None, metavar="AXIS",
                     help="Up axis of the scan files, e.g. +y, z, -y (default: detected)."),
        click.option("--subject-pattern", default=None, metavar="REGEX",
                     help="Group 1 of this regex in the scan id is the subject, e.g. '^(.+?)_' "
                          "(subjects.csv in W or next to the scans wins; default: those files only)."),
    ]
    command = cluster_click_options(verbosity_options(command))
    for opt in reversed(opts):
        command = opt(command)
    return command


renderer_option = click.option(
    "--renderer", type=click.Choice(["open3d", "pytorch3d"]), default="open3d", show_default=True,
    help="Landmark views: open3d ray casting (CPU), or PyTorch3D rasterisation (opt-in, needs CUDA).")


def _run_stages(stages, scans, work, cluster, retries, force, only, units, up, subject_pattern, verbose, quiet,
                extra_configs=None):
    """Shared body of the batch commands: run, print failures and the summary, return the result."""
    from ghum_pipe.pipelines.runner import run_batch
    from ghum_pipe.pipelines.scans import discover_scans
    from ghum_pipe.pipelines.stages import STAGES, closure

    setup_logging(verbose, quiet)
    writable_dir(work)
    try:
        scan_paths = discover_scans(scans) if scans else None
        configs = {s: STAGES[s].default_config(units=units, up=up, **(extra_configs or {}).get(s, {}))
                   for s in closure(stages)}
        result = run_batch(work, scan_paths, stages, configs=configs, cluster=in_work_dir(cluster, work),
                           retries=retries, force=force, only=only or None, progress=not quiet,
                           subject_pattern=subject_pattern)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    if result.interrupted:
        _interrupt_state["said"] = True  # the runner said it; what follows is the cluster's shutdown
    for failure in result.failures:
        click.echo(failure.line())
    click.echo(result.summary())
    return result


def _exit_for(result) -> None:
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not result.ok:
        sys.exit(EXIT_FAILED)


class _Main(click.Group):
    """The command group; Ctrl-C anywhere (also while Dask starts) ends with one line and 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED_LINE, err=True)
            _interrupt_state["said"] = True
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _device_option(help_text: str):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help=help_text + " auto: CUDA when this machine has a GPU, else CPU.")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (torch is imported only here)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
        signal.signal(signal.SIGTERM, _interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started ignoring it (`&`)
            signal.signal(signal.SIGINT, _interrupt)


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
@renderer_option
@batch_options
def landmark(scans, renderer, work, cluster, **kw):
    """Detect 3D landmarks on scans: render, MediaPipe, triangulate (W/scans/<id>/landmarks.json).

    \b
    Example:
      ghum-pipe landmark scans/*.ply --work W --workers 2
    """
    extra = {"landmark": {"renderer": renderer}}
    _exit_for(_run_stages(("landmark",), scans, work, cluster, extra_configs=extra, **kw))


@main.command()
@click.argument("scans", nargs=-1, type=click.Path(path_type=Path))
@_device_option("Torch device for registration.")
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
    extra = {"register": {"device": resolve_device(device), "lowres": lowres or None}}
    _exit_for(_run_stages(("register",), scans or None, work, cluster, extra_configs=extra, **kw))


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@_device_option("Torch device for registration.")
@click.option("--lowres", is_flag=True, help="Also write the GHUML low-res registration.")
@click.option("--no-report", is_flag=True, help="Do not write W/report at the end.")
@renderer_option
@batch_options
def run(scans, device, lowres, no_report, renderer, work, cluster, **kw):
    """The whole pipeline: ingest -> landmark -> register -> report.

    \b
    Example:
      ghum-pipe run scans/ --work W --workers 2
      ghum-pipe run scans/ --work W --scheduler tcp://10.0.0.5:8786 --retries 2
    """
    from ghum_pipe.pipelines.cluster import ClientSession

    extra = {"register": {"device": resolve_device(device), "lowres": lowres or None}, "landmark": {"renderer": renderer}}
    with ClientSession(in_work_dir(cluster, work)) as session:  # one cluster for the batch and the report's images
        result = _run_stages(("ingest", "landmark", "register"), scans, work, session, extra_configs=extra, **kw)
        if not no_report and not result.interrupted:
            _write_report(work, verbose=kw["verbose"], quiet=kw["quiet"], cluster=session)
    _exit_for(result)


@main.command()
@work_option(exists=True)
@click.option("--all", "show_all", is_flag=True, help="List every scan (default: all if at most 60, else those not done).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (per scan and stage, and totals).")
@verbosity_options
def status(work, show_all, as_json, verbose, quiet):
    """Per scan and stage: done / failed with the reason / pending, its subject, and totals;
    then a line per training from W (running, done or interrupted; each model's last checkpoint).

    Exit code 0 when every scan is done in every stage it was run with, 1 when anything failed
    or is pending (scripts can wait on it; trainings do not count), 2 when W is not a work dir.

    \b
    Example:
      ghum-pipe status --work W --all
      ghum-pipe status --work W --json | jq '.totals'
    """
    import json

    from ghum_pipe.pipelines.manifest import Manifest
    from ghum_pipe.pipelines.status import print_status, status_document

    try:
        manifest = Manifest.load_existing(work)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    if as_json:
        doc = status_document(manifest)
        click.echo(json.dumps(doc, indent=1))
        ok = doc["ok"]
    else:
        counts = print_status(manifest, show_all=show_all)
        ok = all(c["done"] == sum(c.values()) for c in counts.values())
    if not ok:
        sys.exit(EXIT_FAILED)


@main.command()
@work_option(exists=True)
@verbosity_options
@cluster_click_options
def report(work, verbose, quiet, cluster):
    """Write W/report/index.html: a sortable table of scans, images, error and timing histograms.

    Static and offline (inline CSS/JS): open it in any browser. It links the per-scan images in
    W/scans, so move or share W as a whole. Overlay images are rendered on Dask workers
    (same options as the batch commands) and only when a registration changed.

    \b
    Example:
      ghum-pipe report --work W && xdg-open W/report/index.html
    """
    _write_report(work, verbose, quiet, cluster)


def _write_report(work: Path, verbose: int = 0, quiet: bool = False, cluster=None) -> None:
    from ghum_pipe.pipelines.report import write_report

    setup_logging(verbose, quiet)
    writable_dir(work)
    try:
        index = write_report(work, cluster=in_work_dir(cluster, work))
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    if not quiet:
        click.echo(f"report: {index}")


INTERRUPTED_LINE = "interrupted: finished results are saved; run the same command again to resume"
_INTERRUPT_GRACE_S = (10.0, 20.0)  # re-interrupt after, then force the exit after as much again
_interrupt_state = {"watchdog": None, "said": False}


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: Dask's loggers in this process are muted at once (the same signal
    reaches the worker processes, and the scheduler here would log each dropped connection with
    a traceback before the interrupt unwinds), then the command stops as on Ctrl-C.

    An interrupt that lands inside an import or a library's cleanup can be swallowed there, and
    the command would then wait for workers the same signal has killed (seen about once in 40
    signals sent during start-up). So a watchdog delivers it again 10 s later and, if the
    process is still alive 20 s after that, ends it with the one line and exit 130."""
    import os
    import threading

    mute_dask_logs()
    if _interrupt_state["watchdog"] is None:
        main_thread = threading.main_thread().ident

        def watchdog():
            time.sleep(_INTERRUPT_GRACE_S[0])
            if not _interrupt_state["said"]:  # the command has not seen it (else: it is shutting down)
                signal.pthread_kill(main_thread, signal.SIGTERM)  # this handler again: a KeyboardInterrupt
            time.sleep(_INTERRUPT_GRACE_S[1])
            if not _interrupt_state["said"]:
                click.echo(INTERRUPTED_LINE, err=True)
            os._exit(EXIT_INTERRUPTED)

        _interrupt_state["watchdog"] = threading.Thread(target=watchdog, name="interrupt-watchdog", daemon=True)
        _interrupt_state["watchdog"].start()
    raise KeyboardInterrupt


def _add_commands() -> None:
    """The commands defined in their own modules (``synth``; ``train``, ``evaluate``, ``sample``;
    ``export``). Those modules import only click at the top, so listing the commands imports no torch."""
    from ghum_pipe.cli.model_commands import evaluate, sample, train
    from ghum_pipe.cli.export_command import export
    from ghum_pipe.cli.synth_command import synth

    for command in (synth, train, evaluate, sample, export):
        main.add_command(command)


_add_commands()
