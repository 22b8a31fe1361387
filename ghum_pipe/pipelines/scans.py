"""Which files are scans, and their ids (the names of their folders under ``W/scans/``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ghum_pipe.pipelines.manifest import WorkDirError

# What ghum_pipe.io.load_scan reads (meshes and point clouds).
SCAN_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb", ".gltf", ".pcd", ".xyz")


def discover_scans(args: Iterable[str | Path]) -> dict[str, Path]:
    """``{id: path}`` for scan files and folders.

    A file is taken whatever its suffix (ingest reports an unsupported one per scan); a folder is
    searched recursively for files with a scan suffix (hidden files skipped). The id is the file
    stem; stems that clash (``a/scan.ply``, ``b/scan.ply``) get their folders prefixed
    (``a__scan``, ``b__scan``) until unique.
    """
    files: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SCAN_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise WorkDirError("folder has no scan files", path, f"Scans end in {', '.join(SCAN_SUFFIXES)}")
            files.extend(found)
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise WorkDirError("no such scan file or folder", path, "Check the path")
    files = list(dict.fromkeys(p.resolve() for p in files))
    return _unique_ids(files)


def _unique_ids(files: list[Path]) -> dict[str, Path]:
    depth = {p: 0 for p in files}
    while True:
        ids = {p: _safe("__".join([*p.parent.parts[len(p.parent.parts) - depth[p]:], p.stem])) for p in files}
        seen: dict[str, list[Path]] = {}
        for p, i in ids.items():
            seen.setdefault(i, []).append(p)
        clashes = [ps for ps in seen.values() if len(ps) > 1]
        if not clashes:
            return {i: p for p, i in ids.items()}
        grew = False
        for ps in clashes:
            for p in ps:
                if depth[p] < len(p.parent.parts) - 1:
                    depth[p] += 1
                    grew = True
        if not grew:  # same stem, same folder: scan.ply and scan.obj
            for ps in clashes:
                for p in ps:
                    ids[p] = _safe(f"{ids[p]}_{p.suffix.lstrip('.')}")
            return {i: p for p, i in ids.items()}


def _safe(name: str) -> str:
    """A folder-safe id: letters, digits, ``._-`` kept, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "scan"
