"""What a scan shows: a whole body, or a close-up of the head or of one hand (filter F).

GHUM trains on whole-body scans plus head and hand close-ups; a close-up is registered only over
its template region (``Template.masks[kind]``) and the model learns only that region from it.

The kind of a scan comes from, in order:

1. ``kinds.csv`` (``scan_id,kind``, header optional) in the work dir;
2. ``kinds.csv`` next to the scan file;
3. the scan id's suffix: ``-head``, ``-hand_left``, ``-hand_right`` (also ``_`` separators,
   ``-hand-left``, any case), which is how ``ghum-pipe synth --closeups`` names them;
4. otherwise ``body``.

Ids in kinds.csv are matched against the scan id and the file stem.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ghum_pipe.errors import ScanError

KINDS = ("body", "head", "hand_left", "hand_right")
CLOSEUP_KINDS = KINDS[1:]
KINDS_CSV = "kinds.csv"
_SUFFIX = re.compile(r"[-_](head|hand[-_]left|hand[-_]right)$", re.IGNORECASE)


def kind_from_id(scan_id: str) -> str:
    """The kind the id's suffix names ("syn0-00001-hand_left" -> "hand_left"), else "body"."""
    m = _SUFFIX.search(str(scan_id))
    return "body" if m is None else m.group(1).lower().replace("-", "_")


def check_kind(kind: str, path: str | Path | None = None) -> str:
    """``kind`` normalised (lower case, "-" -> "_"); ScanError when it is not one of KINDS."""
    k = str(kind).strip().lower().replace("-", "_")
    if k not in KINDS:
        raise ScanError(f"unknown scan kind {kind!r}", path, f"Use one of {', '.join(KINDS)}")
    return k


def read_kinds_csv(path: str | Path) -> dict[str, str]:
    """``{scan_id: kind}`` from a kinds.csv (``scan_id,kind`` rows; a ``scan_id,kind`` header and
    blank lines are skipped). Raises ScanError naming the file and line for a bad row."""
    path = Path(path)
    out: dict[str, str] = {}
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise ScanError(f"cannot read the kinds file ({e})", path, "Write it as UTF-8 text: scan_id,kind") from None
    for n, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or (n == 1 and [c.lower() for c in cells[:2]] == ["scan_id", "kind"]):
            continue
        if len(cells) < 2 or not cells[0]:
            raise ScanError(f"line {n} is not 'scan_id,kind': {','.join(row)!r}", path,
                            f"One scan per line, e.g. 'anna-head,head'; kinds: {', '.join(KINDS)}")
        try:
            out[cells[0]] = check_kind(cells[1])
        except ScanError:
            raise ScanError(f"line {n}: unknown kind {cells[1]!r} for {cells[0]}", path,
                            f"Use one of {', '.join(KINDS)}") from None
    return out


def resolve_kind(scan_id: str, scan_path: str | Path | None = None, work: str | Path | None = None) -> str:
    """The kind of one scan (see the module docstring for the order of the sources)."""
    names = [str(scan_id)] + ([Path(scan_path).stem] if scan_path is not None else [])
    tables = []
    if work is not None and (Path(work) / KINDS_CSV).is_file():
        tables.append(read_kinds_csv(Path(work) / KINDS_CSV))
    if scan_path is not None and (Path(scan_path).parent / KINDS_CSV).is_file():
        tables.append(read_kinds_csv(Path(scan_path).parent / KINDS_CSV))
    for table in tables:
        for name in names:
            if name in table:
                return table[name]
    found = [kind_from_id(n) for n in names]
    return next((k for k in found if k != "body"), "body")


def resolve_kinds(scans: dict[str, str | Path], work: str | Path | None = None) -> dict[str, str]:
    """``{scan_id: kind}`` for ``{scan_id: path}``, reading each kinds.csv once (batch form of
    :func:`resolve_kind`)."""
    cache: dict[Path, dict[str, str]] = {}

    def table(folder: Path) -> dict[str, str]:
        if folder not in cache:
            f = folder / KINDS_CSV
            cache[folder] = read_kinds_csv(f) if f.is_file() else {}
        return cache[folder]

    out = {}
    for scan_id, path in scans.items():
        names = [str(scan_id), Path(path).stem]
        tables = ([table(Path(work))] if work is not None else []) + [table(Path(path).parent)]
        hit = next((t[n] for t in tables for n in names if n in t), None)
        out[scan_id] = hit or next((k for k in map(kind_from_id, names) if k != "body"), "body")
    return out
