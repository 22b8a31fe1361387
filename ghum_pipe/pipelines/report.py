"""``ghum-pipe report --work W``: ``W/report/index.html``, one static page that opens offline.

- a sortable table of all scans (click a column header): status per stage and the numeric
  metrics each stage returned (``W/manifest.json``) or wrote (``W/scans/<id>/metrics.json``);
- per scan: the landmark contact sheet and the residual heat map (linked in place from
  ``W/scans/<id>/``, so keep ``report/`` and ``scans/`` side by side) and a multi-view image of the
  registration over the scan (``W/report/scans/<id>/overlay.png``, re-rendered only when the
  registration changed);
- histograms of the error metrics and of the time per stage (``W/report/plots/``).

CSS and JS are inline; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from pathlib import Path

from ghum_pipe.io.atomic import atomic_path
from ghum_pipe.pipelines.manifest import Manifest, flatten_numeric, scan_dir
from ghum_pipe.pipelines.report_plots import histogram_png, render_overlay
from ghum_pipe.pipelines.stages import ORDER
from ghum_pipe.pipelines.status import short_reason, stage_status, status_counts

log = logging.getLogger(__name__)

MAX_METRIC_COLUMNS = 24
STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em} table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef;cursor:pointer;position:sticky;top:0} th:hover{background:#dde}
td.id,td.s{text-align:left} .done{color:#18794e} .failed{color:#c62828;white-space:normal;min-width:20em;max-width:34em;text-align:left}
.blocked{color:#a36b00} .pending{color:#888} .plots{display:flex;flex-wrap:wrap} .plots img{margin:4px;border:1px solid #ddd;background:#fff;width:420px}
.scan{background:#fff;border:1px solid #ddd;padding:8px 12px;margin:12px 0}
.scan img{max-width:560px;max-height:420px;margin:4px 0;border:1px solid #eee} .notes{color:#555;font-size:12px}
.imgs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start} .imgs figure{margin:0}
figcaption{font-size:12px;color:#555}
"""
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tbody = th.closest('table').tBodies[0], rows = Array.from(tbody.rows);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function(r){ tbody.appendChild(r); });
  });
});
"""


def scan_rows(manifest: Manifest) -> list[dict]:
    """Per scan: id, status per stage, seconds per stage and numeric metrics (``stage.name``)."""
    rows = []
    for scan_id in manifest.ids():
        row = {"id": scan_id, "status": {}, "reason": {}, "seconds": {}, "metrics": {}}
        for stage in ORDER:
            status, detail = stage_status(manifest, scan_id, stage)
            row["status"][stage] = status
            rec = manifest.stage(scan_id, stage) or {}
            if status in ("failed", "blocked"):
                row["reason"][stage] = detail
            if status == "done" and rec.get("seconds") is not None:
                row["seconds"][stage] = rec["seconds"]
            for k, v in flatten_numeric(rec.get("metrics") or {}).items():
                row["metrics"][f"{stage}.{k}"] = v
        metrics_file = scan_dir(manifest.work, scan_id) / "metrics.json"
        if metrics_file.exists():
            try:
                for k, v in flatten_numeric(json.loads(metrics_file.read_text())).items():
                    row["metrics"].setdefault(f"register.{k}", v)
            except ValueError:
                log.warning("%s: unreadable metrics.json, left out of the report", metrics_file)
        rows.append(row)
    return rows


def _metric_columns(rows: list[dict]) -> list[str]:
    """The metric columns to show: error/distance metrics first, then the rest, at most
    ``MAX_METRIC_COLUMNS`` (the most frequently present)."""
    seen: dict[str, int] = {}
    for r in rows:
        for k in r["metrics"]:
            seen[k] = seen.get(k, 0) + 1
    def rank(k):
        errorish = any(w in k.lower() for w in ("mm", "err", "dist", "resid"))
        return (ORDER.index(k.split(".")[0]) if k.split(".")[0] in ORDER else 9, not errorish, -seen[k], k)
    return sorted(seen, key=rank)[:MAX_METRIC_COLUMNS]


def _overlay_jobs(manifest: Manifest, out_dir: Path) -> list[tuple]:
    """``(scan_path, scan_dir, registration.ply, overlay.png)`` for each overlay image that is
    missing or older than its registration."""
    jobs = []
    for scan_id in manifest.ids():
        folder = scan_dir(manifest.work, scan_id)
        reg_file, out = folder / "registration.ply", out_dir / "scans" / scan_id / "overlay.png"
        if not reg_file.exists() or not (folder / "scan.json").exists():
            continue
        if out.exists() and out.stat().st_mtime >= reg_file.stat().st_mtime:
            continue
        jobs.append((manifest.scans[scan_id]["path"], str(folder), str(reg_file), str(out)))
    return jobs


def _render_overlays(jobs: list[tuple], cluster) -> None:
    """Render the overlay images: on Dask workers when ``cluster`` options are given and there
    are several (a few seconds each: tens of thousands of scans need the cluster), else here."""
    if not jobs:
        return
    if cluster is not None and len(jobs) > 1:
        from ghum_pipe.pipelines.cluster import session_client

        with session_client(cluster) as client:
            errors = client.gather(client.map(render_overlay, *zip(*jobs), pure=False))
    else:
        errors = [render_overlay(*job) for job in jobs]
    for job, error in zip(jobs, errors):
        if error:
            log.warning("%s: no overlay image (%s)", job[0], error)


def _scan_notes(folder: Path) -> list[str]:
    """What ingest noticed about the scan (units/up detection, dropped points, extra bodies)."""
    try:
        return [str(n) for n in json.loads((folder / "scan.json").read_text()).get("notes", [])]
    except (OSError, ValueError):
        return []


def _rel(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start)).as_posix()


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _error_columns(columns: list[str], limit: int = 3) -> list[str]:
    """The error metrics worth a histogram: means first, then 95th percentiles, later stages first."""
    errorish = [c for c in columns if any(w in c.lower() for w in ("mm", "err", "dist", "resid"))]
    def rank(c):
        stage = c.split(".")[0]
        return (0 if "mean" in c else 1 if "p95" in c else 2, -ORDER.index(stage) if stage in ORDER else 0, c)
    return sorted(errorish, key=rank)[:limit]


def _plots(out_dir: Path, rows: list[dict], stages: list[str], columns: list[str]) -> list[tuple[str, str]]:
    """Histogram PNGs under ``out_dir/plots``: time per stage and the main error metrics."""
    plots = []
    timing = {s: [r["seconds"][s] for r in rows if s in r["seconds"]] for s in stages}
    if any(timing.values()):
        histogram_png(out_dir / "plots" / "timing.png", timing, "time per scan and stage", "seconds")
        plots.append(("timing.png", "time per stage"))
    for col in _error_columns(columns):
        vals = [r["metrics"][col] for r in rows if col in r["metrics"]]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", col) + ".png"
        histogram_png(out_dir / "plots" / name, {col: vals}, col, col)
        plots.append((name, col))
    return plots


def _table(rows: list[dict], stages: list[str], columns: list[str], paths: dict[str, str]) -> list[str]:
    out = ["<table class='sortable' id='scans'><thead><tr><th>scan</th>"
           + "".join(f"<th>{s}</th>" for s in stages) + "".join(f"<th>{s} s</th>" for s in stages)
           + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead><tbody>"]
    for r in rows:
        sid = html.escape(r["id"])
        cells = [f"<td class='id' data-v='{sid}'><a href='#scan-{sid}'>{sid}</a></td>"]
        for s in stages:
            st = r["status"][s]
            reason = short_reason(r["reason"].get(s, ""), paths.get(r["id"]))
            cells.append(f"<td class='s {st}' data-v='{st}' title='{html.escape(reason)}'>{st}"
                         + (f": {html.escape(reason[:140])}" if reason else "") + "</td>")
        for v in [r["seconds"].get(s) for s in stages]:
            cells.append(f"<td data-v='{'' if v is None else v}'>{'' if v is None else f'{v:.1f}'}</td>")
        for v in [r["metrics"].get(c) for c in columns]:
            cells.append(f"<td data-v='{'' if v is None else v}'>{'' if v is None else _fmt(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return out


def _scan_section(manifest: Manifest, r: dict, stages: list[str], out_dir: Path) -> str:
    folder = scan_dir(manifest.work, r["id"])
    figs = [(label, path) for label, path in (("landmarks (contact sheet)", folder / "views" / "contact_sheet.png"),
                                              ("scan to registration distance", folder / "residuals.png"))
            if path.exists()]
    overlay = out_dir / "scans" / r["id"] / "overlay.png"
    if overlay.exists():
        figs.append(("scan (top) and registration over it (bottom)", overlay))
    status = ", ".join(f"{s} <span class='{r['status'][s]}'>{r['status'][s]}</span>"
                       + (f" ({html.escape(r['reason'][s])})" if s in r["reason"] else "") for s in stages)
    sid = html.escape(r["id"])
    return (f"<div class='scan' id='scan-{sid}'><b>{sid}</b>: {status}"
            + "".join(f"<div class='notes'>{html.escape(n)}</div>" for n in _scan_notes(folder))
            + "<div class='imgs'>" + "".join(
                f"<figure><a href='{html.escape(_rel(p, out_dir))}'><img loading='lazy' "
                f"src='{html.escape(_rel(p, out_dir))}' alt='{html.escape(t)}'></a>"
                f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figs) + "</div></div>")


def write_report(work: str | Path, overlays: bool = True, cluster=None) -> Path:
    """Write ``W/report/index.html`` (+ plots and overlay images); return its path.

    cluster: ``ClusterOptions`` or a ``ClientSession`` to render the overlay images on Dask workers
        (None: in this process).
    """
    work = Path(work).resolve()
    manifest = Manifest.load_existing(work)
    out_dir = work / "report"
    rows = scan_rows(manifest)
    columns = _metric_columns(rows)
    stages = [s for s in ORDER if any(r["status"][s] != "pending" for r in rows)] or list(ORDER)
    plots = _plots(out_dir, rows, stages, columns)
    if overlays:
        _render_overlays(_overlay_jobs(manifest, out_dir), cluster)
    counts = status_counts(manifest, stages)
    paths = {i: manifest.scans[i].get("path") for i in manifest.ids()}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ghum-pipe report: {html.escape(str(work))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>ghum-pipe report</h1><p>Work dir <code>{html.escape(str(work))}</code>: {len(rows)} scans. ",
             "; ".join(f"<b>{s}</b>: " + ", ".join(f"<span class='{k}'>{n} {k}</span>" for k, n in counts[s].items())
                       for s in stages), "</p>",
             "<h2>Scans</h2><p>Click a column header to sort, a scan to see its pictures.</p>",
             *_table(rows, stages, columns, paths)]
    if plots:
        parts.append("<h2>Distributions</h2><div class='plots'>")
        parts += [f"<img src='plots/{html.escape(n)}' alt='{html.escape(t)}' title='{html.escape(t)}'>" for n, t in plots]
        parts.append("</div>")
    parts.append("<h2>Per scan</h2>")
    parts += [_scan_section(manifest, r, stages, out_dir) for r in rows]
    parts.append(f"<script>{SORT_JS}</script></body></html>")
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return index
