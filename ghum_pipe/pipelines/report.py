"""``ghum-pipe report --work W``: ``W/report/index.html``, one static page that opens offline and
reads at a thousand scans.

- the review queue first: scans whose registration the review flagged (failed, look), then the
  scans that failed a stage, then the rest; a filter box and sortable columns (click a header);
- readable column labels with units; a default set of columns, the rest behind a toggle;
- per scan, links to its files (registration, params, landmarks, metrics, scan record, logs);
- the same table as ``W/report/scans.csv`` and ``scans.json``;
- histograms of the main errors and of the time per stage, where there are >= 10 values;
- per scan: the landmark contact sheet (with its legend) and the residual heat map (linked in
  place from ``W/scans/<id>/``, so keep ``report/`` and ``scans/`` side by side) and a multi-view
  image of the registration over the scan (``W/report/scans/<id>/overlay.png``, re-rendered only
  when the registration changed); a scan that failed before registering gets its scan-only views.
  Every image loads lazily.

CSS and JS are inline; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

from ghum_pipe.io.atomic import atomic_path
from ghum_pipe.pipelines.manifest import Manifest, scan_dir
from ghum_pipe.pipelines.report_plots import histogram_png, render_overlay
from ghum_pipe.pipelines.report_table import (
    MIN_HISTOGRAM_N, Column, histogram_columns, metric_columns, scan_rows, write_exports,
)
from ghum_pipe.pipelines.stages import ORDER
from ghum_pipe.pipelines.status import short_reason, status_counts

log = logging.getLogger(__name__)

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em} table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef;cursor:pointer;position:sticky;top:0} th:hover{background:#dde}
td.id,td.s,td.t{text-align:left} .done,.ok{color:#18794e} .failed{color:#c62828}
td.failed{white-space:normal;min-width:14em;max-width:30em;text-align:left}
.blocked,.look{color:#a36b00} .pending{color:#888} .plots{display:flex;flex-wrap:wrap}
.plots img{margin:4px;border:1px solid #ddd;background:#fff;width:420px}
table.compact .x{display:none} .tools{margin:.5em 0} .tools input[type=search]{width:20em}
.scan{background:#fff;border:1px solid #ddd;padding:8px 12px;margin:12px 0;content-visibility:auto;contain-intrinsic-size:auto 480px}
.scan img{max-width:560px;max-height:420px;margin:4px 0;border:1px solid #eee} .notes{color:#555;font-size:12px}
.imgs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start} .imgs figure{margin:0}
figcaption{font-size:12px;color:#555} .files a{margin-right:.6em}
.legend{font-size:12px;color:#555} .dot{color:#14aa28;font-weight:bold} .cross{color:#dc1e1e;font-weight:bold}
"""
SCRIPT = """
var table = document.getElementById('scans'), showAll = false;
function refresh(){
  // the first PAGE rows (the queue comes first) unless 'all rows' or a filter: a 10,000-row
  // table lays out only what is shown
  var q = document.getElementById('filter').value.toLowerCase(), n = 0;
  Array.from(table.tBodies[0].rows).forEach(function(r){
    var hit = !q || r.textContent.toLowerCase().indexOf(q) >= 0;
    r.style.display = (hit && (showAll || q || n < PAGE)) ? '' : 'none';
    if (hit) n++;
  });
  var more = document.getElementById('more');
  if (more) more.style.display = (showAll || q || n <= PAGE) ? 'none' : '';
}
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
    refresh();
  });
});
document.getElementById('allcols').addEventListener('change', function(e){
  table.classList.toggle('compact', !e.target.checked);
});
document.getElementById('filter').addEventListener('input', refresh);
var more = document.getElementById('more');
if (more) more.addEventListener('click', function(){ showAll = true; refresh(); });
"""
PAGE_ROWS = 200  # table rows shown before 'show all' (the queue comes first)
# what the contact sheet's marks mean (landmarks/contact_sheet.py draws them)
CONTACT_SHEET_LEGEND = ("<span class='dot'>&#9679;</span> landmark MediaPipe detected in that render (2D) &nbsp; "
                        "<span class='cross'>&#10005;</span> triangulated 3D landmark projected back into it &nbsp; "
                        "red frame: no detection in that view &nbsp; '(L/R swapped)': the view's left/right "
                        "labels were swapped to agree with the others")
# per-scan files linked from the table (those that exist)
SCAN_FILES = (("reg", "registration.ply"), ("params", "params.npz"), ("landmarks", "landmarks.json"),
              ("metrics", "metrics.json"), ("scan", "scan.json"))


def _overlay_jobs(manifest: Manifest, out_dir: Path) -> list[tuple]:
    """``(scan_path, scan_dir, registration.ply | None, overlay.png)`` for each overlay image that is
    missing or older than its registration; scans ingest read but that have no registration (a
    later stage failed) get scan-only views."""
    jobs = []
    for scan_id in manifest.ids():
        folder = scan_dir(manifest.work, scan_id)
        reg_file, out = folder / "registration.ply", out_dir / "scans" / scan_id / "overlay.png"
        if not (folder / "scan.json").exists():
            continue
        source = reg_file if reg_file.exists() else folder / "scan.json"
        if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
            continue
        jobs.append((manifest.scans[scan_id]["path"], str(folder), str(reg_file) if reg_file.exists() else None,
                     str(out)))
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
    return Path(os.path.relpath(path, start)).as_posix()


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _plots(out_dir: Path, rows: list[dict], stages: list[str], columns: list[Column]) -> list[tuple[str, str]]:
    """Histogram PNGs under ``out_dir/plots`` where there are >= MIN_HISTOGRAM_N values: time per
    stage and the main error metrics."""
    plots = []
    timing = {s: [r["seconds"][s] for r in rows if s in r["seconds"]] for s in stages}
    timing = {s: v for s, v in timing.items() if len(v) >= MIN_HISTOGRAM_N}
    if timing:
        histogram_png(out_dir / "plots" / "timing.png", timing, "time per scan and stage", "seconds")
        plots.append(("timing.png", "time per stage"))
    for col in histogram_columns(rows, columns):
        vals = [r["metrics"][col.key] for r in rows if col.key in r["metrics"]]
        name = col.key.replace("/", "_") + ".png"
        histogram_png(out_dir / "plots" / name, {col.label: vals}, col.header(), col.header())
        plots.append((name, col.header()))
    return plots


def _files(work: Path, scan_id: str, out_dir: Path) -> str:
    folder = scan_dir(work, scan_id)
    links = [(label, folder / name) for label, name in SCAN_FILES if (folder / name).exists()]
    links += [(f"log:{p.stem}", p) for p in sorted((folder / "logs").glob("*.log"))]
    return " ".join(f"<a href='{html.escape(_rel(p, out_dir))}'>{html.escape(t)}</a>" for t, p in links)


def _table(work: Path, rows: list[dict], stages: list[str], columns: list[Column], paths: dict[str, str],
           out_dir: Path) -> list[str]:
    def th(text, extra=False, title=""):
        return f"<th{' class=x' if extra else ''} title='{html.escape(title)}'>{html.escape(text)}</th>"

    head = [th("scan"), th("subject"), th("kind", True), th("review", title="review verdict: failed, look, ok")]
    head += [th(s) for s in stages] + [th(f"{s} time (s)", True) for s in stages]
    head += [th(c.header(), not c.default, c.key) for c in columns] + [th("files")]
    out = [f"<table class='sortable compact' id='scans'><thead><tr>{''.join(head)}</tr></thead><tbody>"]
    for k, r in enumerate(rows):
        sid = html.escape(r["id"])

        def td(value, text, cls="", extra=False, title=""):
            classes = " ".join(c for c in (cls, "x" if extra else "") if c)
            return (f"<td{f' class={chr(39)}{classes}{chr(39)}' if classes else ''} data-v='{html.escape(str(value))}'"
                    + (f" title='{html.escape(title)}'" if title else "") + f">{text}</td>")

        cells = [f"<td class='id' data-v='{sid}'><a href='#scan-{sid}'>{sid}</a></td>",
                 td(r["subject"] or "", html.escape(r["subject"] or ""), "t"),
                 td(r["kind"] or "", html.escape(r["kind"] or ""), "t", extra=True),
                 td(r["review"] or "~", html.escape(r["review"] or ""), f"t {r['review'] or ''}",
                    title="; ".join(r["review_reasons"]))]
        for s in stages:
            st = r["status"][s]
            reason = short_reason(r["reason"].get(s, ""), paths.get(r["id"]))
            cells.append(td(st, st + (f": {html.escape(reason[:140])}" if reason else ""), f"s {st}", title=reason))
        for s in stages:
            v = r["seconds"].get(s)
            cells.append(td("" if v is None else v, "" if v is None else f"{v:.1f}", extra=True))
        for c in columns:
            v = r["metrics"].get(c.key)
            cells.append(td("" if v is None else v, "" if v is None else _fmt(v), extra=not c.default))
        cells.append(f"<td class='t files'>{_files(work, r['id'], out_dir)}</td>")
        hidden = " style='display:none'" if k >= PAGE_ROWS else ""  # until 'show all' (see SCRIPT)
        out.append(f"<tr{hidden}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if len(rows) > PAGE_ROWS:
        out.append(f"<p><button id='more'>show all {len(rows)} rows</button> (the first {PAGE_ROWS} are shown; "
                   "the filter searches all)</p>")
    return out


def _scan_section(manifest: Manifest, r: dict, stages: list[str], out_dir: Path) -> str:
    folder = scan_dir(manifest.work, r["id"])
    figs = [(label, path) for label, path in (("landmarks (contact sheet)", folder / "views" / "contact_sheet.png"),
                                              ("scan to registration distance", folder / "residuals.png"))
            if path.exists()]
    overlay = out_dir / "scans" / r["id"] / "overlay.png"
    if overlay.exists():
        registered = (folder / "registration.ply").exists()
        figs.append(("scan (top) and registration over it (bottom)" if registered
                     else "the scan as ingest read it (no registration)", overlay))
    status = ", ".join(f"{s} <span class='{r['status'][s]}'>{r['status'][s]}</span>"
                       + (f" ({html.escape(r['reason'][s])})" if s in r["reason"] else "") for s in stages)
    sid = html.escape(r["id"])
    who = f" &middot; subject {html.escape(r['subject'])}" if r["subject"] else ""
    review = (f"<div class='{r['review']}'>review: {r['review']}"
              + (f" ({html.escape('; '.join(r['review_reasons']))})" if r["review_reasons"] else "") + "</div>"
              if r["review"] else "")
    legend = (f"<div class='legend'>{CONTACT_SHEET_LEGEND}</div>"
              if (folder / "views" / "contact_sheet.png").exists() else "")
    return (f"<div class='scan' id='scan-{sid}'><b>{sid}</b>{who}: {status}{review}"
            + "".join(f"<div class='notes'>{html.escape(n)}</div>" for n in _scan_notes(folder))
            + f"<div class='files'>{_files(manifest.work, r['id'], out_dir)}</div>"
            + "<div class='imgs'>" + "".join(
                f"<figure><a href='{html.escape(_rel(p, out_dir))}'><img loading='lazy' decoding='async' "
                f"src='{html.escape(_rel(p, out_dir))}' alt='{html.escape(t)}'></a>"
                f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figs) + "</div>" + legend + "</div>")


def write_report(work: str | Path, overlays: bool = True, cluster=None) -> Path:
    """Write ``W/report/index.html`` (+ ``scans.csv``, ``scans.json``, plots and overlay images);
    return its path.

    cluster: ``ClusterOptions`` or a ``ClientSession`` to render the overlay images on Dask workers
        (None: in this process).
    """
    work = Path(work).resolve()
    manifest = Manifest.load_existing(work)
    out_dir = work / "report"
    rows = scan_rows(manifest)
    columns = metric_columns(rows)
    stages = [s for s in ORDER if any(r["status"][s] != "pending" for r in rows)] or list(ORDER)
    plots = _plots(out_dir, rows, stages, columns)
    csv_path, json_path = write_exports(out_dir, rows, stages, columns)
    if overlays:
        _render_overlays(_overlay_jobs(manifest, out_dir), cluster)
    counts = status_counts(manifest, stages)
    paths = {i: manifest.scans[i].get("path") for i in manifest.ids()}
    n_subjects = len({r["subject"] or f"scan:{r['id']}" for r in rows})
    queue = sum(1 for r in rows if r["review"] in ("failed", "look"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ghum-pipe report: {html.escape(str(work))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>ghum-pipe report</h1><p>Work dir <code>{html.escape(str(work))}</code>: {len(rows)} scans of "
             f"{n_subjects} subjects. ",
             "; ".join(f"<b>{s}</b>: " + ", ".join(f"<span class='{k}'>{n} {k}</span>" for k, n in counts[s].items())
                       for s in stages), "</p>",
             "<h2>Scans</h2><p>" + (f"{queue} registration(s) to look at come first. " if queue else "")
             + "Click a column header to sort, a scan to see its pictures. Export: "
             f"<a href='{csv_path.name}'>CSV</a>, <a href='{json_path.name}'>JSON</a>.</p>",
             "<div class='tools'><input type='search' id='filter' placeholder='filter: scan, subject, status, "
             "reason'> <label><input type='checkbox' id='allcols'> all columns</label></div>",
             *_table(work, rows, stages, columns, paths, out_dir)]
    if plots:
        parts.append("<h2>Distributions</h2><div class='plots'>")
        parts += [f"<img loading='lazy' src='plots/{html.escape(n)}' alt='{html.escape(t)}' title='{html.escape(t)}'>"
                  for n, t in plots]
        parts.append("</div>")
    parts.append("<h2>Per scan</h2>")
    parts += [_scan_section(manifest, r, stages, out_dir) for r in rows]
    parts.append(f"<script>var PAGE = {PAGE_ROWS};{SCRIPT}</script></body></html>")
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return index
