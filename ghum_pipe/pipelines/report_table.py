"""The report's table: one row per scan (subject, kind, review verdict, status and time per stage,
numeric metrics), readable column labels with units, the default column set, the review-first
order, and the CSV / JSON exports of the same table (``W/report/scans.csv``, ``scans.json``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ghum_pipe.io.atomic import atomic_path, write_json
from ghum_pipe.pipelines.manifest import Manifest, flatten_numeric, scan_dir
from ghum_pipe.pipelines.stages import ORDER
from ghum_pipe.pipelines.status import stage_status

log = logging.getLogger(__name__)

# Metric columns shown by default (the rest sit behind the report's "all columns" toggle).
DEFAULT_METRICS = (
    "register.scan_to_reg_mean_mm", "register.scan_to_reg_p95_mm", "register.reg_to_scan_mean_mm",
    "register.reg_to_scan_p95_mm", "register.landmark_rms_mm.pose", "register.observed_fraction",
    "landmark.n_landmarks", "landmark.median_reproj_error_px", "ingest.height_m",
)
# Readable names of the metrics; units are read off the key's suffix (_mm, _m, _s, _px).
LABELS = {
    "scan_to_reg_mean_mm": "scan→reg mean", "scan_to_reg_p95_mm": "scan→reg p95",
    "reg_to_scan_mean_mm": "reg→scan mean", "reg_to_scan_p95_mm": "reg→scan p95",
    "landmark_rms_mm.pose": "landmark RMS body", "landmark_rms_mm.hand": "landmark RMS hands",
    "landmark_rms_mm.face": "landmark RMS face", "observed_fraction": "observed share",
    "n_landmarks": "landmarks", "median_reproj_error_px": "reprojection median", "height_m": "height",
    "init_landmark_rms_mm": "landmark RMS after similarity", "skeleton_landmark_rms_mm": "landmark RMS after skeleton",
    "seconds_total": "fit time", "seconds_wall": "wall time", "n_points": "points", "n_faces": "faces",
    "similarity_scale": "similarity scale", "matched_fraction": "matched share",
}
UNITS = (("_mm", "mm"), ("_m", "m"), ("_s", "s"), ("_px", "px"))
REVIEW_ORDER = {"failed": 0, "look": 1, "ok": 2, None: 3}
MIN_HISTOGRAM_N = 10  # fewer scans than this: a histogram says nothing


@dataclass(frozen=True)
class Column:
    """key: the metric's flattened name (``stage.name``); label/unit: what the header says."""

    key: str
    label: str
    unit: str
    default: bool

    def header(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


def label_of(key: str) -> tuple[str, str]:
    """(label, unit) for a metric key: ``register.scan_to_reg_mean_mm`` -> ("scan→reg mean", "mm")."""
    stage, _, name = key.partition(".")
    if not name:
        stage, name = "", key
    unit = ""
    tail = name.split(".")[-1]
    for suffix, u in UNITS:
        if tail.endswith(suffix) or f"{suffix}." in name:
            unit = u
            break
    if not unit and "seconds" in name:
        unit = "s"
    label = LABELS.get(name)
    if label is None:
        text = name
        for suffix, _ in UNITS:
            text = re.sub(re.escape(suffix) + r"(\.|$)", r"\1", text)
        label = text.replace("_", " ").replace(".", ": ")
        if stage and stage != "register":
            label = f"{stage}: {label}"
    return label, unit


def _review_of(metrics_doc: dict) -> tuple[str | None, list[str]]:
    # REVIEW column: the verdict the review stage writes into metrics.json
    # (``{"review": {"verdict": "ok|look|failed", "reasons": [...]}}``). When ghum_pipe.review
    # exposes its reader, call it here instead; nothing else in the report needs to change.
    review = metrics_doc.get("review") if isinstance(metrics_doc, dict) else None
    if not isinstance(review, dict) or review.get("verdict") not in ("ok", "look", "failed"):
        return None, []
    return review["verdict"], [str(r) for r in review.get("reasons") or []]


def scan_rows(manifest: Manifest) -> list[dict]:
    """Per scan: id, subject, kind, review verdict and reasons, status, reason and seconds per
    stage, numeric metrics (``stage.name``), sorted review queue first (failed, look, then the
    rest), then scans that failed a stage, then by id."""
    rows = []
    for scan_id in manifest.ids():
        folder = scan_dir(manifest.work, scan_id)
        row = {"id": scan_id, "subject": manifest.scans[scan_id].get("subject"), "kind": None,
               "review": None, "review_reasons": [], "status": {}, "reason": {}, "seconds": {}, "metrics": {}}
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
        for name, target in (("scan.json", "ingest"), ("metrics.json", "register")):
            try:
                doc = json.loads((folder / name).read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                log.warning("%s: unreadable, left out of the report", folder / name)
                continue
            row["kind"] = row["kind"] or doc.get("kind")
            if name == "metrics.json":
                row["review"], row["review_reasons"] = _review_of(doc)
                for k, v in flatten_numeric(doc).items():
                    row["metrics"].setdefault(f"{target}.{k}", v)
        rows.append(row)
    rows.sort(key=lambda r: (REVIEW_ORDER[r["review"]], not any(s in ("failed", "blocked") for s in r["status"].values()),
                             r["id"]))
    return rows


def metric_columns(rows: list[dict]) -> list[Column]:
    """Every metric present: the default set first (in ``DEFAULT_METRICS`` order), then the rest by
    stage, error-like metrics first, then by how often they are present."""
    seen: dict[str, int] = {}
    for r in rows:
        for k in r["metrics"]:
            seen[k] = seen.get(k, 0) + 1

    def rank(k):
        stage = k.split(".")[0]
        errorish = any(w in k.lower() for w in ("mm", "err", "dist", "resid"))
        return (k not in DEFAULT_METRICS, DEFAULT_METRICS.index(k) if k in DEFAULT_METRICS else 0,
                ORDER.index(stage) if stage in ORDER else 9, not errorish, -seen[k], k)

    return [Column(k, *label_of(k), default=k in DEFAULT_METRICS) for k in sorted(seen, key=rank)]


def histogram_columns(rows: list[dict], columns: list[Column], limit: int = 4) -> list[Column]:
    """Default error columns with at least ``MIN_HISTOGRAM_N`` values: means first, then p95."""
    def n(c):
        return sum(1 for r in rows if c.key in r["metrics"])

    errorish = [c for c in columns if c.default and c.unit == "mm" and n(c) >= MIN_HISTOGRAM_N]
    return sorted(errorish, key=lambda c: (0 if "mean" in c.key else 1 if "p95" in c.key else 2, c.key))[:limit]


def export_records(rows: list[dict], stages: list[str], columns: list[Column]) -> list[dict]:
    """The table as flat records (machine names as keys), as exported to CSV and JSON."""
    out = []
    for r in rows:
        rec = {"id": r["id"], "subject": r["subject"], "kind": r["kind"], "review": r["review"],
               "review_reasons": "; ".join(r["review_reasons"])}
        for s in stages:
            rec[f"status.{s}"] = r["status"][s]
            rec[f"error.{s}"] = r["reason"].get(s)
            rec[f"seconds.{s}"] = r["seconds"].get(s)
        for c in columns:
            rec[c.key] = r["metrics"].get(c.key)
        out.append(rec)
    return out


def write_exports(out_dir: Path, rows: list[dict], stages: list[str], columns: list[Column]) -> tuple[Path, Path]:
    """``out_dir/scans.csv`` and ``out_dir/scans.json`` (with a ``columns`` legend: key -> label,
    unit), atomically; returns their paths."""
    records = export_records(rows, stages, columns)
    fields = list(records[0]) if records else ["id"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in rec.items()} for rec in records)
    csv_path, json_path = out_dir / "scans.csv", out_dir / "scans.json"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    write_json(json_path, {"columns": {c.key: {"label": c.label, "unit": c.unit} for c in columns},
                           "scans": records})
    return csv_path, json_path
