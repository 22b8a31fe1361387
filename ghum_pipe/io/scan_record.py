"""A scan is read once: the ingest stage records what it found in ``W/scans/<id>/scan.json``
(frame, kind, subject, counts, notes) and every later stage rebuilds the scan's :class:`Frame`
and reads its kind and subject from that record instead of detecting them again, so all
stages agree by construction, not by detection being deterministic.

>>> scan, record = load_recorded_scan("scans/anna.ply", "W/scans/anna")
>>> record.kind, record.subject, scan.frame == record.frame
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ghum_pipe.io.frame import Frame, parse_units, parse_up

log = logging.getLogger(__name__)

SCAN_JSON = "scan.json"


@dataclass(frozen=True)
class ScanRecord:
    """What ingest decided about one scan file. path: the file read; frame: its units and axes;
    kind: body | head | hand_left | hand_right; subject: the person (None: not named)."""

    path: str
    frame: Frame
    kind: str
    subject: str | None


def read_scan_record(scan_dir: str | Path) -> ScanRecord | None:
    """The record in ``scan_dir/scan.json``, or None when there is none (or it is unreadable or
    from before frames were recorded: the caller then detects, as ingest would)."""
    try:
        doc = json.loads((Path(scan_dir) / SCAN_JSON).read_text())
        frame = Frame.from_dict(doc["frame"])
        return ScanRecord(path=str(doc.get("path", "")), frame=frame, kind=str(doc.get("kind") or "body"),
                          subject=doc.get("subject") or None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _agrees(record: ScanRecord, scan_path, units: str | None, up: str | None, kind: str | None) -> bool:
    """The record describes this file read with these options (else it is stale or another's)."""
    try:
        same_file = Path(record.path).resolve() == Path(scan_path).resolve()
        same_units = units is None or parse_units(units) == record.frame.units
        same_up = up is None or parse_up(up) == record.frame.up
    except (OSError, ValueError):
        return False
    return same_file and same_units and same_up and (kind is None or kind == record.kind)


def load_recorded_scan(scan_path, scan_dir, units: str | None = None, up: str | None = None,
                       kind: str | None = None):
    """``(Scan, ScanRecord)``: the scan read with the frame and kind its ``scan.json`` recorded.

    units/up/kind: what the caller was asked for (None: as recorded). Without a matching record
    (a notebook calling a stage on a bare scan folder, or a record for other options) the scan is
    read and detected once here, and that is logged; the returned record then describes this read.
    """
    from ghum_pipe.io.kinds import check_kind, resolve_kind
    from ghum_pipe.io.scan import load_scan
    from ghum_pipe.io.subjects import resolve_subject

    kind = None if kind is None else check_kind(kind, scan_path)
    record = read_scan_record(scan_dir)
    if record is not None and _agrees(record, scan_path, units, up, kind):
        scan = load_scan(scan_path, kind=record.kind, frame=record.frame)
        return scan, record
    kind = kind or resolve_kind(Path(scan_path).stem, scan_path)
    log.info("%s: no matching %s in %s, detecting its frame here (run the ingest stage to record it once)",
             scan_path, SCAN_JSON, scan_dir)
    scan = load_scan(scan_path, units=units, up=up, kind=kind)
    subject = record.subject if record is not None else resolve_subject(Path(scan_path).stem, scan_path)
    return scan, ScanRecord(path=str(scan_path), frame=scan.frame, kind=kind, subject=subject)
