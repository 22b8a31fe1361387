"""Who a scan shows: its subject, the person whose scans share one body shape when a model is
trained (GHUM's shape space is per person, its pose correctives per scan).

The subject of a scan comes from, in order:

1. ``subjects.csv`` (``scan_id,subject``, header optional) in the work dir;
2. ``subjects.csv`` next to the scan file (``ghum-pipe synth`` writes one in ``OUT/scans/``);
3. a regular expression whose group 1, searched in the scan id, is the subject
   (``--subject-pattern '^(.+?)_'`` makes ``anna_apose`` and ``anna_walk`` one subject ``anna``);
4. otherwise unknown (``None``): a later reader (training) may fall back to what an earlier stage
   recorded (``scan.json``, ``params.npz['subject']``), and finally to the scan's own id.

Ids in subjects.csv are matched against the scan id and the file stem, as in ``kinds.csv``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ghum_pipe.errors import ScanError

SUBJECTS_CSV = "subjects.csv"


def read_subjects_csv(path: str | Path) -> dict[str, str]:
    """``{scan_id: subject}`` from a subjects.csv (``scan_id,subject`` rows; a ``scan_id,subject``
    header and blank lines are skipped). Raises ScanError naming the file and line for a bad row."""
    path = Path(path)
    out: dict[str, str] = {}
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise ScanError(f"cannot read the subjects file ({e})", path,
                        "Write it as UTF-8 text: scan_id,subject") from None
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or (n == 1 and [c.lower() for c in cells[:2]] == ["scan_id", "subject"]):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ScanError(f"line {n} is not 'scan_id,subject': {','.join(row)!r}", path,
                            "One scan per line, e.g. 'anna_walk,anna'")
        out[cells[0]] = cells[1]
    return out


def compile_pattern(pattern: str | None) -> re.Pattern | None:
    """The ``--subject-pattern`` regex, checked: it must compile and have a group 1.
    Raises ScanError (a usage error: the CLI exits 2) otherwise."""
    if not pattern:
        return None
    try:
        rule = re.compile(pattern)
    except re.error as e:
        raise ScanError(f"--subject-pattern {pattern!r} is not a regular expression ({e})",
                        hint="e.g. --subject-pattern '^(.+?)_' (group 1 is the subject)") from None
    if rule.groups < 1:
        raise ScanError(f"--subject-pattern {pattern!r} has no group", hint="Put the subject part in "
                        "parentheses, e.g. '^(.+?)_' (group 1 is the subject)")
    return rule


def subject_from_pattern(scan_id: str, pattern: str | re.Pattern | None) -> str | None:
    """Group 1 of ``pattern`` searched in ``scan_id``, or None (no pattern, no match, empty group)."""
    rule = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    if rule is None:
        return None
    m = rule.search(str(scan_id))
    return (m.group(1) or None) if m else None


class SubjectResolver:
    """Resolves subjects for many scans, reading each subjects.csv once (see the module docstring
    for the order of the sources)::

        subjects = SubjectResolver(work=W, pattern="^(.+?)_")
        subjects("anna_walk", "/data/scans/anna_walk.ply")   # -> "anna" (or the csv's answer)
    """

    def __init__(self, work: str | Path | None = None, pattern: str | None = None):
        self.work = None if work is None else Path(work)
        self.rule = compile_pattern(pattern)
        self._tables: dict[Path, dict[str, str]] = {}

    def table(self, folder: Path) -> dict[str, str]:
        folder = Path(folder)
        if folder not in self._tables:
            f = folder / SUBJECTS_CSV
            self._tables[folder] = read_subjects_csv(f) if f.is_file() else {}
        return self._tables[folder]

    def __call__(self, scan_id: str, scan_path: str | Path | None = None) -> str | None:
        names = [str(scan_id)] + ([Path(scan_path).stem] if scan_path is not None else [])
        tables = ([self.table(self.work)] if self.work is not None else []) + (
            [self.table(Path(scan_path).parent)] if scan_path is not None else [])
        for table in tables:
            for name in names:
                if name in table:
                    return table[name]
        return subject_from_pattern(str(scan_id), self.rule)


def resolve_subject(scan_id: str, scan_path: str | Path | None = None, work: str | Path | None = None,
                    pattern: str | None = None) -> str | None:
    """The subject of one scan, or None when no source names it."""
    return SubjectResolver(work, pattern)(scan_id, scan_path)


def resolve_subjects(scans: dict[str, str | Path], work: str | Path | None = None,
                     pattern: str | None = None) -> dict[str, str | None]:
    """``{scan_id: subject | None}`` for ``{scan_id: path}`` (batch form of :func:`resolve_subject`)."""
    resolver = SubjectResolver(work, pattern)
    return {scan_id: resolver(scan_id, path) for scan_id, path in scans.items()}


def recorded_subject(scan_dir: str | Path) -> str | None:
    """What the pipeline recorded for a scan folder ``W/scans/<id>/``: ``params.npz['subject']``
    (register), else ``scan.json['subject']`` (ingest), else None."""
    import numpy as np

    scan_dir = Path(scan_dir)
    params = scan_dir / "params.npz"
    if params.is_file():
        try:
            with np.load(params, allow_pickle=False) as z:
                if "subject" in z.files and str(z["subject"]):
                    return str(z["subject"])
        except (OSError, ValueError):
            pass
    try:
        subject = json.loads((scan_dir / "scan.json").read_text()).get("subject")
    except (OSError, ValueError):
        return None
    return str(subject) if subject else None


def work_subjects(work: str | Path, scan_ids, pattern: str | None = None) -> dict[str, str | None]:
    """``{scan_id: subject | None}`` for scans already in work dir ``work`` (``W/scans/<id>/``):
    the sources above (the scan file's folder from ``scan.json['path']``), then what the pipeline
    recorded (:func:`recorded_subject`). None: nothing names the subject."""
    work = Path(work)
    resolver = SubjectResolver(work, pattern)
    out = {}
    for scan_id in scan_ids:
        folder = work / "scans" / scan_id
        try:
            path = json.loads((folder / "scan.json").read_text()).get("path")
        except (OSError, ValueError):
            path = None
        out[scan_id] = resolver(scan_id, path) or recorded_subject(folder)
    return out
