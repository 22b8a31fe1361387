"""Click commands ``train``, ``evaluate`` and ``sample`` (registered in ``ghum_pipe.cli``).

The model code (``ghum_pipe.model``) and its Dask schedule (``ghum_pipe.pipelines.model_schedule``)
are imported inside the commands, so listing the commands imports no torch."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ghum_pipe.cli.options import SetupError, in_work_dir, setup_logging, verbosity_options, work_option, writable_dir
from ghum_pipe.errors import GhumPipeError
from ghum_pipe.pipelines.cluster import cluster_click_options

log = logging.getLogger(__name__)


def _logging(verbose: int, quiet: bool) -> None:
    """Training reports its rounds at INFO: shown unless -q (Dask's own logs only with -v)."""
    setup_logging(verbose, quiet)
    if not quiet:
        logging.getLogger("ghum_pipe").setLevel(logging.INFO if verbose < 2 else logging.DEBUG)
        logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))


def check_subjects(work: Path, subject_pattern: str | None, one_subject_per_scan: bool) -> None:
    """Before any Dask work: W has registrations, and (unless allowed) its scans are not each
    their own subject; else one line (SetupError, exit 2) that says how to fix it."""
    from ghum_pipe.io.subjects import work_subjects

    ids = sorted(p.parent.name for p in (Path(work) / "scans").glob("*/registration.ply"))
    if not ids:
        raise SetupError(f"{work}: no registrations (scans/<id>/registration.ply) in this work dir. Run "
                         "'ghum-pipe run SCANS --work W' first, or pass the work dir of such a run")
    try:
        named = work_subjects(work, ids, subject_pattern)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    subjects = [named[i] or i for i in ids]
    if len(ids) > 1 and len(set(subjects)) == len(ids) and not one_subject_per_scan:
        unnamed = sum(named[i] is None for i in ids)
        why = (f"no subject is known for {unnamed} of them" if unnamed else "no two of them share a subject")
        raise SetupError(f"{work}: every one of the {len(ids)} scans would be its own subject ({why}). "
                         "Say who is who in W/subjects.csv (scan_id,subject) or with --subject-pattern REGEX "
                         "(group 1 of the scan id), or pass --one-subject-per-scan if each scan is another person")


@click.command("train")
@work_option(exists=True, help="Work dir with scans/<id>/registration.ply (+ params.npz, subjects.csv).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model folder: OUT/ghum and OUT/ghuml are written.")
@click.option("--lowres-only", is_flag=True, help="Train GHUML only.")
@click.option("--fullres-only", is_flag=True, help="Train GHUM only.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternations of (a) pose fits and (b) model updates.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Alias of --rounds.")
@click.option("--pose-iters", type=click.IntRange(min=1), default=5, show_default=True,
              help="L-BFGS iterations per scan and round in step (a).")
@click.option("--ghum-latent", type=click.IntRange(min=1), default=64, show_default=True,
              help="GHUM's shape latent size.")
@click.option("--ghuml-latent", type=click.IntRange(min=1), default=16, show_default=True,
              help="GHUML's shape latent size.")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Fraction of subjects kept out of training for 'evaluate'.")
@click.option("--subject-pattern", default=None, metavar="REGEX",
              help="Group 1 of this regex in the scan id is the subject (subjects.csv in W or next to the "
                   "scans wins; then what 'register' recorded).")
@click.option("--one-subject-per-scan", is_flag=True,
              help="Allow training when every scan is its own subject (each scan is another person).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subject split and the VAEs.")
@click.option("--batch-scans", type=click.IntRange(min=1), default=32, show_default=True,
              help="Scans per subject batch (whole subjects): the unit of the per-batch tasks (pose fits, rest "
                   "shapes, the joint step C) and of their memory; --inline cuts C's batches the same way.")
@click.option("--restart", is_flag=True,
              help="Start over, discarding what an interrupted training in OUT had done [default: a rerun resumes "
                   "after its last checkpoint when made from the same registrations and settings].")
@click.option("--inline", is_flag=True, help="Run in this process, without Dask (debugging).")
@verbosity_options
@cluster_click_options
def train(work: Path, out: Path, lowres_only: bool, fullres_only: bool, rounds: int, epochs: int | None,
          pose_iters: int, ghum_latent: int, ghuml_latent: int, holdout: float, subject_pattern: str | None,
          one_subject_per_scan: bool, seed: int, batch_scans: int, restart: bool, inline: bool, verbose: int,
          quiet: bool, cluster) -> None:
    """Train GHUM (full template) and GHUML (low-res template) from the registrations in WORK.

    Packs the registrations once into WORK/train_store.zarr (new scans are appended, changed ones
    re-packed), then alternates per-scan pose fits with model updates (shape and expression VAEs,
    sparse pose-space deformation, joint regressor, skinning weights), as Dask tasks by subject
    batch and vertex block; the two models train in parallel. Worker memory is set from the
    tasks' sizes; a run that cannot fit stops before it starts (docs/cluster.md). Writes
    OUT/ghum, OUT/ghuml (model.safetensors + config.json each) and OUT/training.json.

    Interrupted (Ctrl-C, a batch system's time limit), the same command resumes after the last
    checkpoint in OUT/.train_state (the start, round 0's joint step, every round), with the
    result of an uninterrupted run; --restart starts over. One training at a time per OUT and
    per WORK (a second one stops with one line).

    \b
    Example:
      ghum-pipe synth data/regs --registrations --count 40
      ghum-pipe train --work data/regs --out models --workers 2
    """
    _logging(verbose, quiet)
    if lowres_only and fullres_only:
        raise click.UsageError("--lowres-only and --fullres-only exclude each other")
    check_subjects(work, subject_pattern, one_subject_per_scan)
    writable_dir(out, "model folder")
    from ghum_pipe.model.config import TrainConfig, ghum_config, ghuml_config
    from ghum_pipe.pipelines.model_schedule import train_models

    common = dict(rounds=epochs or rounds, pose_iters=pose_iters, holdout=holdout, seed=seed)
    configs = {}
    if not lowres_only:
        configs["ghum"] = TrainConfig(model=ghum_config(shape_latent=ghum_latent), **common)
    if not fullres_only:
        configs["ghuml"] = TrainConfig(model=ghuml_config(shape_latent=ghuml_latent), **common)
    try:
        if inline:
            summaries = train_models(work, out, configs, None, subject_pattern, shard_scans=batch_scans,
                                     resume=not restart)
        else:
            from ghum_pipe.pipelines.cluster import open_client

            from ghum_pipe.pipelines.model_schedule import training_memory

            cluster = training_memory(work, configs, cluster, subject_pattern, batch_scans)
            with open_client(in_work_dir(cluster, work)) as client:
                summaries = train_models(work, out, configs, client, subject_pattern, shard_scans=batch_scans,
                                         resume=not restart, workers=cluster.task_slots())
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    for name, s in summaries.items():
        click.echo(f"{name}: {s['n_scans']} scans, {s['n_subjects']} subjects, final fit "
                   f"{s['history'][-1]['fit_mm']:.2f} mm, shape VAE {s['shape_vae_train_mm']:.2f} mm, "
                   f"{s['seconds']:.0f} s -> {out / name}")


@click.command("evaluate")
@click.option("--model", "model_root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The --out folder of 'train' (or one model folder).")
@work_option(exists=True, help="Work dir of registrations to evaluate on; subjects used in training are left out.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: MODEL/eval].")
@click.option("--max-scans", type=click.IntRange(min=1), default=12, show_default=True,
              help="Held-out scans to fit (spread over the subjects).")
@click.option("--fit-iters", type=click.IntRange(min=1), default=60, show_default=True,
              help="L-BFGS iterations per model fit.")
@click.option("--no-curve", is_flag=True, help="Skip the VAE-vs-PCA curve (trains one VAE per latent size).")
@click.option("--subject-pattern", default=None, metavar="REGEX",
              help="Group 1 of this regex in the scan id is the subject (as for 'train').")
@click.option("--truth", "truth_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Ground truth of synthetic scans (the OUT/truth folder of 'ghum-pipe synth'): also report "
                   "each fit's error to the true mesh.")
@verbosity_options
def evaluate(model_root: Path, work: Path, out: Path | None, max_scans: int, fit_iters: int, no_curve: bool,
             subject_pattern: str | None, truth_dir: Path | None, verbose: int, quiet: bool) -> None:
    """Measure trained models on held-out registrations: fit error (mm) vs PCA and template
    baselines, PSD and skinning recovery, joint error, VAE vs PCA, speed; tables + PNGs.

    \b
    Example:
      ghum-pipe evaluate --model models --work data/regs
    """
    from ghum_pipe.model.evaluate import EvalConfig, summarise
    from ghum_pipe.model.report import run_evaluation

    _logging(verbose, quiet)
    cfg = EvalConfig(fit_iters=fit_iters, max_scans=max_scans, dims=() if no_curve else EvalConfig().dims)
    try:
        results = run_evaluation(model_root, work, out, cfg, subject_pattern, truth_dir)
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    click.echo(summarise(results))
    click.echo(f"report: {(out or model_root / 'eval') / 'report.md'}")


@click.command("sample")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A model folder (e.g. MODEL/ghum).")
@click.option("--count", "-n", "n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Bodies to write.")
@click.option("--n", "n_old", type=click.IntRange(min=1), default=None, hidden=True)  # the old spelling of --count
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for sample_<i>.<format> and preview.png.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latent draws.")
@click.option("--format", "fmt", type=click.Choice(["obj", "ply"]), default="obj", show_default=True,
              help="Mesh file format.")
@verbosity_options
def sample(model_dir: Path, n: int, n_old: int | None, out: Path, seed: int, fmt: str, verbose: int,
           quiet: bool) -> None:
    """Write N random bodies (shape and expression drawn from the VAEs' N(0, I)) and a preview PNG."""
    import trimesh

    from ghum_pipe.io.atomic import atomic_path
    from ghum_pipe.model.evaluate import model_dirs
    from ghum_pipe.model.ghum import GHUM
    from ghum_pipe.model.plots import preview

    n = n_old or n
    setup_logging(verbose, quiet)
    try:
        dirs = model_dirs(model_dir)
        model = GHUM.load(next(iter(dirs.values())))
    except GhumPipeError as e:
        raise SetupError(str(e)) from None
    except StopIteration:
        raise SetupError(f"{model_dir}: no model here (config.json + model.safetensors). "
                         "Pass the --out folder of 'ghum-pipe train' or one of its model folders") from None
    writable_dir(out, "output folder")
    verts, _ = model.sample(n, seed=seed)
    verts = verts.numpy()
    for i, v in enumerate(verts):
        with atomic_path(out / f"sample_{i:03d}.{fmt}") as tmp:
            trimesh.Trimesh(v, model.faces, process=False).export(tmp)
    with atomic_path(out / "preview.png") as tmp:
        preview(list(verts), model.faces, tmp)
    click.echo(f"{n} bodies in {out}, preview {out / 'preview.png'}")
