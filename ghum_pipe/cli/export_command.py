"""``ghum-pipe export``: registrations (or a trained model's mean body) as rigged avatars.

Files and messages only; the avatar is built in ``rig.py``/``gltf.py``, the files in ``scan.py``.
Exit code: 0 when every scan was exported, 1 when some failed (one line each), 2 for a usage
error (no work dir, unknown id, an output folder inside the scans).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ghum_pipe.errors import GhumPipeError

EXIT_FAILED, EXIT_USAGE = 1, 2


def _merge_closeups(work: Path, baked: list[Path], template, quiet: bool) -> None:
    """Merge each subject's baked head and hand close-ups into the textures of its body scans."""
    from ghum_pipe.export.bake_scan import merge_closeup_bakes
    from ghum_pipe.io.scan_record import read_scan_record
    from ghum_pipe.io.subjects import work_subjects

    subjects = work_subjects(work, tuple(d.name for d in baked))

    def kind(d: Path) -> str:  # what ingest recorded (the pipeline's one kind resolver)
        record = read_scan_record(d)
        return record.kind if record is not None else "body"

    groups: dict[str, dict[str, list[Path]]] = {}
    for d in baked:
        if subjects.get(d.name):
            groups.setdefault(subjects[d.name], {}).setdefault("body" if kind(d) == "body" else "closeup", []).append(d)
    for subject, g in sorted(groups.items()):
        for body in g.get("body", []) if g.get("closeup") else []:
            try:
                merge_closeup_bakes(body, g["closeup"], template)
            except GhumPipeError as e:
                click.echo(str(e), err=True)
                continue
            if not quiet:
                click.echo(f"{body.name}: merged the close-ups {', '.join(d.name for d in g['closeup'])} "
                           f"of subject {subject} into its texture")


class SetupProblem(click.ClickException):
    """Nothing to export (no work dir, an unknown id): exit code 2, like the other commands."""

    exit_code = EXIT_USAGE


def _scan_dirs(work: Path, only: tuple[str, ...]) -> list[Path]:
    root = work / "scans"
    if not root.is_dir():
        raise SetupProblem(f"{work}: no scans/ folder. Run `ghum-pipe run SCANS --work {work}` first.")
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if only:
        known = {d.name for d in dirs}
        unknown = [i for i in only if i not in known]
        if unknown:
            raise SetupProblem(f"{root}: no scan {', '.join(unknown)}. `ghum-pipe status --work {work}` lists them.")
        dirs = [d for d in dirs if d.name in set(only)]
    return dirs


@click.command("export")
@click.option("--work", "-w", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work dir whose registrations to export (W/scans/<id>/registration.ply + params.npz).")
@click.option("--model", "-m", "model", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A trained model dir (ghum/ or ghuml/ inside, or one of them): export its mean body.")
@click.option("--only", "--scans", "only", multiple=True, metavar="ID", help="Only these scan ids (repeat the option).")
@click.option("--format", "fmt", type=click.Choice(["glb"]), default="glb", show_default=True,
              help="Avatar format (an OBJ + MTL and registration.json are always written beside it).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write to OUT/<id>/ instead of W/scans/<id>/ (required with --model).")
@click.option("--texture", type=click.Choice(["auto", "bake", "none"]), default="auto", show_default=True,
              help="auto: use W/scans/<id>/texture.png when it was baked; bake: bake it from the scan's colours "
                   "first (fails for a scan without colours); none: untextured.")
@click.option("--texture-size", type=click.IntRange(64, 8192), default=2048, show_default=True,
              help="Baked texture size in texels (square).")
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--quiet", "-q", is_flag=True, help="Errors only.")
def export(work, model, only, fmt, out, texture, texture_size, verbose, quiet):
    """Export registrations as skinned glTF avatars (avatar.glb): the subject's rest mesh, the
    template's skeleton and skinning, the scan's pose and expression (morph targets), UVs and
    the baked texture; metres, +Y up. Also avatar.obj/.mtl and registration.json.

    Baking writes texture.png, texture_confidence.png, texture_mask.png and texture.json into
    W/scans/<id>/ (also with --out, which then gets a copy of texture.png). A subject's head and
    hand close-ups baked in the same run are merged into its body scans' textures (their finer
    colours weigh more where they saw the skin). Nothing is written outside W and --out.

    \b
    Examples:
      ghum-pipe export --work W
      ghum-pipe export --work W --texture bake --only anna_01
      ghum-pipe export --model MODEL --out avatars/
    """
    from ghum_pipe.cli.options import setup_logging
    from ghum_pipe.template import load_template

    setup_logging(verbose, quiet)
    if (work is None) == (model is None):
        raise click.UsageError("give --work W (registrations) or --model M (a trained model's mean body)")
    if model is not None:
        if out is None:
            raise click.UsageError("--model needs --out DIR")
        from ghum_pipe.export.model import export_model

        try:
            files = export_model(model, out, load_template())
        except GhumPipeError as e:
            click.echo(str(e), err=True)
            sys.exit(EXIT_FAILED)
        if not quiet:
            click.echo(f"exported {len(files)} model(s) to {out}")
        return
    from ghum_pipe.export.scan import export_registration

    dirs = _scan_dirs(work, only)
    template = load_template()
    failed = set()
    t0 = time.perf_counter()
    if texture == "bake":
        from ghum_pipe.export.bake_scan import bake_registration

        for d in dirs:
            try:
                bake_registration(d, template, size=texture_size)
            except GhumPipeError as e:
                failed.add(d)
                click.echo(str(e), err=True)
        _merge_closeups(work, [d for d in dirs if d not in failed], template, quiet)
    for d in dirs:
        if d in failed:
            continue
        target = d if out is None else out / d.name
        try:
            tex = d / "texture.png" if texture != "none" and (d / "texture.png").exists() else None
            res = export_registration(d, target, template, texture=tex)
            if not quiet:
                click.echo(f"{d.name}: {target / 'avatar.glb'} (posed = registration.ply within "
                           f"{res['roundtrip_max_mm']:.4f} mm{', textured' if tex else ''})")
        except GhumPipeError as e:
            failed.add(d)
            click.echo(str(e), err=True)
    failed = len(failed)
    click.echo(f"{'OK' if not failed else 'FAILED'}: {len(dirs) - failed} exported, {failed} failed "
               f"in {time.perf_counter() - t0:.0f} s", err=bool(failed))
    if failed:
        sys.exit(EXIT_FAILED)
