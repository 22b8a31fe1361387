"""``ghum-pipe status``: per scan and stage, done / failed (with the reason) / pending, and totals."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from ghum_pipe.pipelines.manifest import Manifest
from ghum_pipe.pipelines.stages import ORDER
from ghum_pipe.pipelines.train_status import describe, training_status

STATUS_STYLE = {"done": "green", "failed": "red", "blocked": "yellow", "pending": "dim"}


def stage_status(manifest: Manifest, scan_id: str, stage: str) -> tuple[str, str]:
    """(status, detail): status in done|failed|blocked|pending; detail = seconds or the reason."""
    rec = manifest.stage(scan_id, stage)
    if not rec:
        return "pending", ""
    status = rec.get("status", "pending")
    if status == "done":
        secs = rec.get("seconds")
        return "done", "" if secs is None else f"{secs:.1f} s"
    return status, rec.get("error") or ""


def short_reason(reason: str, scan_path: str | None) -> str:
    """The error without the scan's path in front (the row already says which scan)."""
    if scan_path and reason.startswith(scan_path + ": "):
        return reason[len(scan_path) + 2:]
    return reason


def status_counts(manifest: Manifest, stages=ORDER) -> dict[str, Counter]:
    """``{stage: Counter(done=.., failed=.., blocked=.., pending=..)}`` over all scans."""
    return {s: Counter(stage_status(manifest, i, s)[0] for i in manifest.ids()) for s in stages}


def n_subjects(manifest: Manifest) -> int:
    """Distinct subjects over the scans (a scan with none counts as its own)."""
    return len({manifest.scans[i].get("subject") or f"scan:{i}" for i in manifest.ids()})


def status_document(manifest: Manifest) -> dict:
    """``ghum-pipe status --json``: ``{"work", "ok", "totals": {stage: {status: n}}, "scans": {id:
    {"path", "subject", "stages": {stage: {"status", "seconds", "error"}}}}, "trainings": [...]}``;
    ``ok`` is True when every scan is done in every stage the work dir has run (trainings do not
    count); ``trainings``: :func:`~ghum_pipe.pipelines.train_status.training_status`."""
    stages = [s for s in ORDER if any(manifest.stage(i, s) for i in manifest.ids())] or list(ORDER)
    scans = {}
    for scan_id in manifest.ids():
        per_stage = {}
        for s in stages:
            rec = manifest.stage(scan_id, s) or {}
            status, _ = stage_status(manifest, scan_id, s)
            per_stage[s] = {"status": status, "seconds": rec.get("seconds"), "error": rec.get("error")}
        scans[scan_id] = {"path": manifest.scans[scan_id].get("path"), "subject": manifest.scans[scan_id].get("subject"),
                          "stages": per_stage}
    totals = {s: dict(c) for s, c in status_counts(manifest, stages).items()}
    ok = all(v["status"] == "done" for rec in scans.values() for v in rec["stages"].values())
    return {"work": str(manifest.work), "ok": ok, "n_scans": len(scans), "n_subjects": n_subjects(manifest),
            "totals": totals, "scans": scans, "trainings": training_status(manifest.work)}


def print_status(manifest: Manifest, console: Console | None = None, show_all: bool = False,
                 max_rows: int = 60) -> dict[str, Counter]:
    """Print the table (every scan when ``show_all`` or at most ``max_rows`` scans, else only the
    scans that are not done everywhere), the totals and a line per training from W; return the
    counts."""
    console = console or Console()
    stages = [s for s in ORDER if any(manifest.stage(i, s) for i in manifest.ids())] or list(ORDER)
    ids = manifest.ids()
    if not show_all and len(ids) > max_rows:
        ids = [i for i in ids if any(stage_status(manifest, i, s)[0] != "done" for s in stages)]
    table = Table(title=f"{manifest.work}  ({len(manifest.ids())} scans, {n_subjects(manifest)} subjects)")
    table.add_column("scan", no_wrap=True)
    table.add_column("subject", no_wrap=True)
    for s in stages:
        table.add_column(s, overflow="fold")
    for scan_id in ids:
        cells = []
        for s in stages:
            status, detail = stage_status(manifest, scan_id, s)
            if status != "done":
                detail = short_reason(detail, manifest.scans[scan_id].get("path"))
            text = f"[{STATUS_STYLE[status]}]{status}[/]"
            cells.append(f"{text} {detail}".rstrip())
        table.add_row(scan_id, manifest.scans[scan_id].get("subject") or "-", *cells)
    counts = status_counts(manifest, stages)
    table.add_section()
    table.add_row("[b]total[/b]", "", *[", ".join(f"{counts[s][k]} {k}" for k in STATUS_STYLE if counts[s][k])
                                    for s in stages])
    console.print(table)
    for row in training_status(manifest.work):  # the trainings from this W: how far each got
        console.print(f"training {describe(row)}", highlight=False, soft_wrap=True)
    return counts
