"""Click commands ``train``, ``evaluate`` and ``sample`` (registered in ``ghum_pipe.cli``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ghum_pipe.errors import GhumPipeError
from ghum_pipe.pipelines.cluster import cluster_click_options

log = logging.getLogger(__name__)


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    for noisy in ("distributed", "tornado", "bokeh"):  # Dask's own INFO lines drown ours
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command("train")
@click.option("--work", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Work dir with scans/<id>/registration.ply (+ params.npz, subjects.csv).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model folder: OUT/ghum and OUT/ghuml are written.")
@click.option("--lowres-only", is_flag=True, help="Train GHUML only.")
@click.option("--fullres-only", is_flag=True, help="Train GHUM only.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternations of (a) pose fits and (b) model updates.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Alias of --rounds.")
@click.option("--pose-iters", type=click.IntRange(min=1), default=5, show_default=True,
              help="L-BFGS iterations per scan and round in step (a).")
@click.option("--ghum-latent", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--ghuml-latent", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Fraction of subjects kept out of training for 'evaluate'.")
@click.option("--subject-pattern", default=None, metavar="REGEX",
              help="Group 1 of this regex on the scan id is the subject (if no subjects.csv / params subject).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--inline", is_flag=True, help="Run in this process, without Dask (debugging).")
@click.option("--quiet", "-q", is_flag=True)
@cluster_click_options
def train(work: Path, out: Path, lowres_only: bool, fullres_only: bool, rounds: int, epochs: int | None,
          pose_iters: int, ghum_latent: int, ghuml_latent: int, holdout: float, subject_pattern: str | None,
          seed: int, inline: bool, quiet: bool, cluster) -> None:
    """Train GHUM (full template) and GHUML (low-res template) from the registrations in WORK.

    Alternates per-scan pose fits (one Dask task per chunk of scans) with model updates (shape
    and expression VAEs, sparse pose-space deformation, joint regressor, skinning weights); the
    two models train as parallel Dask tasks. Writes OUT/ghum, OUT/ghuml (model.safetensors +
    config.json each) and OUT/training.json.

    \b
    Example:
      ghum-pipe synth data/regs --registrations --count 40
      ghum-pipe train --work data/regs --out models --workers 2
    """
    from ghum_pipe.model.config import TrainConfig, ghum_config, ghuml_config
    from ghum_pipe.model.schedule import train_models

    _logging(quiet)
    if lowres_only and fullres_only:
        raise click.UsageError("--lowres-only and --fullres-only exclude each other")
    common = dict(rounds=epochs or rounds, pose_iters=pose_iters, holdout=holdout, seed=seed)
    configs = {}
    if not lowres_only:
        configs["ghum"] = TrainConfig(model=ghum_config(shape_latent=ghum_latent), **common)
    if not fullres_only:
        configs["ghuml"] = TrainConfig(model=ghuml_config(shape_latent=ghuml_latent), **common)
    try:
        if inline:
            summaries = train_models(work, out, configs, None, subject_pattern)
        else:
            from ghum_pipe.pipelines.cluster import open_client

            with open_client(cluster) as client:
                summaries = train_models(work, out, configs, client, subject_pattern)
    except GhumPipeError as e:
        raise click.ClickException(str(e)) from None
    for name, s in summaries.items():
        click.echo(f"{name}: {s['n_scans']} scans, {s['n_subjects']} subjects, final fit "
                   f"{s['history'][-1]['fit_mm']:.2f} mm, shape VAE {s['shape_vae_train_mm']:.2f} mm, "
                   f"{s['seconds']:.0f} s -> {out / name}")


@click.command("evaluate")
@click.option("--model", "model_root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The --out folder of 'train' (or one model folder).")
@click.option("--work", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Registrations to evaluate on; subjects used in training are left out.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: MODEL/eval].")
@click.option("--max-scans", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--fit-iters", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--no-curve", is_flag=True, help="Skip the VAE-vs-PCA curve (trains one VAE per latent size).")
@click.option("--subject-pattern", default=None, metavar="REGEX")
@click.option("--truth", "truth_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Ground truth of synthetic scans (the OUT/truth folder of 'ghum-pipe synth'): also report "
                   "each fit's error to the true mesh.")
@click.option("--quiet", "-q", is_flag=True)
def evaluate(model_root: Path, work: Path, out: Path | None, max_scans: int, fit_iters: int, no_curve: bool,
             subject_pattern: str | None, truth_dir: Path | None, quiet: bool) -> None:
    """Measure trained models on held-out registrations: fit error (mm) vs PCA and template
    baselines, PSD and skinning recovery, joint error, VAE vs PCA, speed; tables + PNGs.

    \b
    Example:
      ghum-pipe evaluate --model models --work data/regs
    """
    from ghum_pipe.model.evaluate import EvalConfig, summarise
    from ghum_pipe.model.report import run_evaluation

    _logging(quiet)
    cfg = EvalConfig(fit_iters=fit_iters, max_scans=max_scans, dims=() if no_curve else EvalConfig().dims)
    try:
        results = run_evaluation(model_root, work, out, cfg, subject_pattern, truth_dir)
    except GhumPipeError as e:
        raise click.ClickException(str(e)) from None
    click.echo(summarise(results))
    click.echo(f"report: {(out or model_root / 'eval') / 'report.md'}")


@click.command("sample")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A model folder (e.g. MODEL/ghum).")
@click.option("--n", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["obj", "ply"]), default="obj", show_default=True)
def sample(model_dir: Path, n: int, out: Path, seed: int, fmt: str) -> None:
    """Write N random bodies (shape and expression drawn from the VAEs' N(0, I)) and a preview PNG."""
    import trimesh

    from ghum_pipe.io.atomic import atomic_path
    from ghum_pipe.model.evaluate import model_dirs
    from ghum_pipe.model.ghum import GHUM
    from ghum_pipe.model.plots import preview

    dirs = model_dirs(model_dir)
    try:
        model = GHUM.load(next(iter(dirs.values())))
    except GhumPipeError as e:
        raise click.ClickException(str(e)) from None
    verts, _ = model.sample(n, seed=seed)
    verts = verts.numpy()
    out.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(verts):
        with atomic_path(out / f"sample_{i:03d}.{fmt}") as tmp:
            trimesh.Trimesh(v, model.faces, process=False).export(tmp)
    with atomic_path(out / "preview.png") as tmp:
        preview(list(verts), model.faces, tmp)
    click.echo(f"{n} bodies in {out}, preview {out / 'preview.png'}")
