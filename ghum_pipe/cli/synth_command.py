"""``ghum-pipe synth OUT``: write synthetic scans with ground truth (click shell, no maths)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", "-n", type=click.IntRange(min=1), default=4, show_default=True, help="Subjects to make.")
@click.option("--seed", type=int, default=0, show_default=True, help="Scan i depends only on (seed, i).")
@click.option("--posed", is_flag=True, help="Random natural poses instead of the A-pose.")
@click.option("--expressions", is_flag=True, help="Random facial expressions.")
@click.option("--units", type=click.Choice(["m", "cm", "mm", "mixed"]), default=None,
              help="Units of the scan files; 'mixed' alternates m and mm. [default: m]")
@click.option("--up", type=click.Choice(["z", "y", "mixed"]), default=None,
              help="Up axis of the scan files; 'mixed' alternates. [default: z; y for --other-model]")
@click.option("--format", "fmt", type=click.Choice(["ply", "obj", "stl", "glb", "pcd", "xyz"]), default="ply",
              show_default=True, help="Scan file format (pcd/xyz imply --point-cloud).")
@click.option("--point-cloud", is_flag=True, help="Write the raw merged scanner points instead of a mesh.")
@click.option("--closeups", is_flag=True, help="Also head and hand close-up scans of each subject.")
@click.option("--other-model", is_flag=True,
              help="Instead of Anny scans, write plain meshes of a primitive mannequin (another topology).")
@click.option("--registrations", is_flag=True,
              help="Instead of scans, write ground-truth registrations for training (no scanner).")
@click.option("--textured", is_flag=True,
              help="Colour scans (body and --closeups) from the subject's known texture in the template's atlas "
                   "(OUT/truth/<id>.texture.png): OBJ/GLB as a textured mesh (UVs + PNG), other formats as vertex colours.")
@click.option("--population", type=click.Choice(["anny", "template"]), default="anny", show_default=True,
              help="Rest shapes: 'anny' = Anny's full phenotype model + person-specific soft tissue and "
                   "asymmetry (outside the template's shape space); 'template' = the template's 32 coefficients.")
@click.option("--planted", is_flag=True,
              help="Pose the people with a planted pose-space corrective, skinning and joint-centre shifts "
                   "(as --registrations does; written to OUT/truth) so a model trained from their scans has known targets.")
@click.option("--force", is_flag=True, help="Rewrite scans that already exist in OUT.")
@click.option("--workers", "jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (one subject each); the files do not depend on it.")
@click.option("--jobs", "-j", "jobs_old", type=click.IntRange(min=1), default=None, hidden=True)  # old spelling
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, errors only.")
def synth(out: Path, count: int, seed: int, posed: bool, expressions: bool, units: str | None, up: str | None,
          fmt: str, point_cloud: bool, closeups: bool, other_model: bool, registrations: bool, population: str,
          force: bool, jobs: int, jobs_old: int | None, verbose: int, quiet: bool, textured: bool = False,
          planted: bool = False) -> None:
    """Make COUNT synthetic scans with exact ground truth in OUT.

    Scans go to OUT/scans/<id>.<format>, their truth (template vertices in the scan's frame,
    phenotype, shape, pose, expression, transform) to OUT/truth/<id>.npz and .json, never
    beside the scans. The same seed gives the same files, and scan i depends only on (seed, i).

    \b
    Ids: syn<seed>-<i> (body), syn<seed>-<i>-head|-hand_left|-hand_right (--closeups),
    other<seed>-<i> (--other-model). All scans of one subject share its shape (truth 'subject');
    OUT/scans/subjects.csv says which scan shows whom, so 'ghum-pipe run OUT/scans' groups them.
    \b
    Examples:
      ghum-pipe synth data/synth --count 8 --posed --units mixed --up mixed
      ghum-pipe synth data/closeups --count 4 --expressions --closeups
      ghum-pipe synth data/clouds --count 4 --format pcd
      ghum-pipe synth data/other --count 2 --other-model
      ghum-pipe synth data/train --count 50 --registrations
    """
    import logging

    jobs = jobs_old or jobs
    logging.basicConfig(level=logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
                        format="%(message)s")
    try:
        (out / "scans").mkdir(parents=True, exist_ok=True)
        (out / "truth").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from ghum_pipe.cli.options import SetupError

        raise SetupError(f"{out}: cannot create the output folders ({e.strerror}). "
                         "Choose a folder you can write to") from None
    if registrations:
        from ghum_pipe.synth.registrations import make_registrations

        extra = {"closeups": True} if closeups else {}
        ids = make_registrations(out, count, seed, population=population, **extra)
        click.echo(f"{len(ids)} registrations in {out / 'scans'}, truth in {out / 'truth'}")
        return
    if fmt in ("pcd", "xyz"):
        point_cloud = True
    if point_cloud and fmt not in ("ply", "pcd", "xyz"):
        raise click.UsageError(f"--point-cloud writes ply, pcd or xyz, not {fmt}")
    if other_model:
        if point_cloud:
            raise click.UsageError("--other-model writes meshes (ply, obj, stl, glb), not point clouds")
        _other_models(out, count, seed, units or "m", up or "y", fmt)
        return
    from rich.progress import Progress

    from ghum_pipe.synth.generate import SynthConfig

    config = SynthConfig(posed=posed, expressions=expressions, units=units or "m", up=up or "z",
                         point_cloud=point_cloud, population=population, planted=planted)
    if planted:
        from ghum_pipe.synth.generate import write_batch_planted_truth
        from ghum_pipe.template import load_template

        write_batch_planted_truth(out, load_template(), seed)
    job = dict(out=out, seed=seed, config=config, closeups=closeups, fmt=fmt, force=force, textured=textured)
    written, t0 = 0, time.time()
    with Progress(transient=True, disable=quiet) as progress:
        task = progress.add_task("scanning", total=count)
        if jobs <= 1:
            for i in range(count):
                written += _subject_scans(index=i, **job)
                progress.advance(task)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(jobs, initializer=_worker_init) as pool:
                for fut in as_completed([pool.submit(_subject_scans, index=i, **job) for i in range(count)]):
                    written += fut.result()
                    progress.advance(task)
    n_subjects = write_subjects_csv(out)
    click.echo(f"{written} scans written ({count} subjects) in {time.time() - t0:.0f} s: "
               f"scans in {out / 'scans'}, truth in {out / 'truth'}, subjects of {n_subjects} scans in "
               f"{out / 'scans' / 'subjects.csv'}")


def write_subjects_csv(out: Path) -> int:
    """``OUT/scans/subjects.csv`` (``scan_id,subject``) from every truth record in ``OUT/truth``,
    so the pipeline groups a subject's body and close-up scans (``ghum_pipe.io.subjects``).
    Returns the number of rows."""
    import json

    from ghum_pipe.io.atomic import atomic_path

    rows = []
    for f in sorted((out / "truth").glob("*.json")):
        try:
            info = json.loads(f.read_text())
        except ValueError:
            continue
        if isinstance(info, dict) and info.get("scan_id") and info.get("subject"):
            rows.append(f"{info['scan_id']},{info['subject']}")
    with atomic_path(out / "scans" / "subjects.csv") as tmp:
        tmp.write_text("scan_id,subject\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core


def _subject_scans(out: Path, seed: int, index: int, config, closeups: bool, fmt: str, force: bool,
                   textured: bool = False) -> int:
    """Scan subject ``index`` (body, and close-ups when asked); skip files already written.
    Returns the number of scans written."""
    from ghum_pipe.synth.generate import CLOSEUP_KINDS, body_scan, closeup_scans, subject_id
    from ghum_pipe.synth.writers import write_scan
    from ghum_pipe.template import load_template

    sid = subject_id(seed, index)
    t = load_template() if (textured or force or not _done(out, sid, fmt)) else None
    texture = None
    n = 0
    if force or not _done(out, sid, fmt):
        scan = body_scan(t, seed, index, config)
        if textured:
            from ghum_pipe.synth.texture import known_subject_texture, write_known_texture

            texture = known_subject_texture(t, seed, index, config)
            scan = _textured(t, scan, texture, fmt)
            write_known_texture(out, scan.scan_id, texture)
        write_scan(out, scan, fmt)
        n += 1
    if closeups:
        todo = tuple(k for k in CLOSEUP_KINDS if force or not _done(out, f"{sid}-{k}", fmt))
        if todo:
            for scan in closeup_scans(t or load_template(), seed, index, config, kinds=todo):
                if textured:  # coloured from the subject's same known texture
                    from ghum_pipe.synth.texture import known_subject_texture

                    texture = known_subject_texture(t, seed, index, config) if texture is None else texture
                    scan = _textured(t, scan, texture, fmt)
                write_scan(out, scan, fmt)
                n += 1
    return n


def _textured(t, scan, texture, fmt: str):
    """The scan coloured from the known texture: OBJ/GLB carry the texture itself and UVs, other
    formats vertex colours sampled from it."""
    from ghum_pipe.synth.texture import textured_scan, uv_textured_scan

    return uv_textured_scan(t, scan, texture) if fmt in ("obj", "glb") else textured_scan(t, scan, texture)


def _done(out: Path, scan_id: str, fmt: str) -> bool:
    return (out / "scans" / f"{scan_id}.{fmt}").exists() and (out / "truth" / f"{scan_id}.json").exists()


def _other_models(out: Path, count: int, seed: int, units: str, up: str, fmt: str) -> None:
    from ghum_pipe.synth.mannequin import mannequin_scan
    from ghum_pipe.synth.writers import write_scan

    for i in range(count):
        write_scan(out, mannequin_scan(seed, i, units=units, up=up), fmt)
    write_subjects_csv(out)
    click.echo(f"{count} mannequins in {out / 'scans'}, truth in {out / 'truth'}")
