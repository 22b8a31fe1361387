"""The ``ingest`` stage: read a scan once, check it is a usable body scan, and record what was
found (units, up axis, frame, kind, subject, counts, notes) in ``W/scans/<id>/scan.json``.

Later stages rebuild the scan's ``Frame`` and read its kind and subject from that record
(:func:`read_scan_record`) instead of detecting them again.

It is cheap (a file read), so the batch runner puts it first: a corrupt, empty or non-human file
fails here in a second with its ``ScanError`` instead of deep inside rendering or registration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import write_json


@dataclass(frozen=True)
class IngestConfig:
    """units: force the file's units ("m"|"cm"|"mm"), None = detect from the body's size;
    up: force the file's up axis ("+z", "y", "-y", ...), None = detect;
    min_points: fewer points than this is not a body scan;
    kind: body | head | hand_left | hand_right, None = from kinds.csv next to the scan or the id
    suffix (``ghum_pipe.io.kinds``; the batch runner sets it per scan);
    subject: the person the scan shows, a label recorded in scan.json (None = from subjects.csv next
    to the scan, ``ghum_pipe.io.subjects``; the batch runner sets it per scan and does not hash it)."""

    units: str | None = None
    up: str | None = None
    min_points: int = 2000
    kind: str | None = None
    subject: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def scan_summary(scan) -> dict:
    """JSON-able description of a loaded ``ghum_pipe.io.Scan`` (internal metres, +Z up)."""
    verts = np.asarray(scan.verts, dtype=np.float64)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    frame = scan.frame
    return {
        "id": scan.id,
        "path": str(scan.path),
        "units": frame.units,
        "up": frame.up,
        "metres_per_unit": float(frame.metres_per_unit),
        "frame": frame.to_dict() if hasattr(frame, "to_dict") else None,
        "is_point_cloud": bool(scan.is_point_cloud),
        "n_points": int(len(verts)),
        "n_faces": 0 if scan.faces is None else int(len(scan.faces)),
        "has_normals": scan.normals is not None,
        "has_colors": scan.colors is not None,
        "height_m": float(hi[2] - lo[2]),
        "bbox_min_m": lo.tolist(),
        "bbox_max_m": hi.tolist(),
        "notes": list(getattr(scan, "notes", []) or []),
    }


def run_ingest(scan_path: str | Path, scan_dir: str | Path, config: IngestConfig) -> dict:
    """Load ``scan_path`` with ``ghum_pipe.io.load_scan`` and write ``scan_dir/scan.json``.

    Raises ``ScanError`` (missing, unreadable, empty, too small, not a person, ...) and then
    writes nothing. Returns the summary's scalar metrics.
    """
    from ghum_pipe.io import load_scan
    from ghum_pipe.io.kinds import check_kind, resolve_kind
    from ghum_pipe.io.subjects import resolve_subject

    kind = check_kind(config.kind, scan_path) if config.kind else resolve_kind(Path(scan_path).stem, scan_path)
    subject = config.subject or resolve_subject(Path(scan_path).stem, scan_path)
    scan = load_scan(scan_path, units=config.units, up=config.up, min_points=config.min_points, kind=kind)
    summary = dict(scan_summary(scan), kind=kind, subject=subject)
    write_json(Path(scan_dir) / "scan.json", summary)
    return {k: summary[k] for k in ("kind", "units", "up", "n_points", "n_faces", "height_m", "is_point_cloud")}

