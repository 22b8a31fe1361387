"""``ghum-pipe synth OUT``: write synthetic scans with ground truth (click shell, no maths)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

log = logging.getLogger(__name__)


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
@click.option("--force", is_flag=True, help="Rewrite scans that already exist in OUT.")
def synth(out: Path, count: int, seed: int, posed: bool, expressions: bool, units: str | None, up: str | None,
          fmt: str, point_cloud: bool, closeups: bool, other_model: bool, registrations: bool, force: bool) -> None:
    """Make COUNT synthetic scans with exact ground truth in OUT.

    Scans go to OUT/scans/<id>.<format>, their truth (template vertices in the scan's frame,
    phenotype, shape, pose, expression, transform) to OUT/truth/<id>.npz and .json, never
    beside the scans. The same seed gives the same files.
    """
    if registrations:
        from ghum_pipe.synth.registrations import make_registrations

        extra = {"closeups": True} if closeups else {}
        ids = make_registrations(out, count, seed, **extra)
        click.echo(f"{len(ids)} registrations in {out / 'scans'}, truth in {out / 'truth'}")
        return
    if fmt in ("pcd", "xyz"):
        point_cloud = True
    if point_cloud and fmt not in ("ply", "pcd", "xyz"):
        raise click.UsageError(f"--point-cloud writes ply, pcd or xyz, not {fmt}")
    if other_model:
        _other_models(out, count, seed, units or "m", up or "y", fmt)
        return
    from rich.progress import Progress

    from ghum_pipe.synth.generate import SynthConfig, body_scan, closeup_scans, subject_id
    from ghum_pipe.synth.writers import write_scan
    from ghum_pipe.template import load_template

    t = load_template()
    config = SynthConfig(posed=posed, expressions=expressions, units=units or "m", up=up or "z",
                         point_cloud=point_cloud)
    written, skipped, t0 = 0, 0, time.time()
    with Progress(transient=True) as progress:
        task = progress.add_task("scanning", total=count)
        for i in range(count):
            sid = subject_id(seed, i)
            if not force and _done(out, sid, fmt):
                skipped += 1
            else:
                write_scan(out, body_scan(t, seed, i, config), fmt)
                written += 1
                if closeups:
                    for scan in closeup_scans(t, seed, i, config):
                        write_scan(out, scan, fmt)
            progress.advance(task)
    click.echo(f"{written} subjects scanned ({skipped} already there) in {time.time() - t0:.0f} s: "
               f"scans in {out / 'scans'}, truth in {out / 'truth'}")


def _done(out: Path, scan_id: str, fmt: str) -> bool:
    return (out / "scans" / f"{scan_id}.{fmt}").exists() and (out / "truth" / f"{scan_id}.json").exists()


def _other_models(out: Path, count: int, seed: int, units: str, up: str, fmt: str) -> None:
    from ghum_pipe.synth.mannequin import mannequin_scan
    from ghum_pipe.synth.writers import write_scan

    for i in range(count):
        write_scan(out, mannequin_scan(seed, i, units=units, up=up), fmt)
    click.echo(f"{count} mannequins in {out / 'scans'}, truth in {out / 'truth'}")
