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
    same_folder: dict[tuple, int] = {}
    for p in files:
        same_folder[(p.parent, p.stem)] = same_folder.get((p.parent, p.stem), 0) + 1
    # scan.ply and scan.obj side by side: scan_ply, scan_obj
    base = {p: p.stem if same_folder[(p.parent, p.stem)] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}"
            for p in files}
    depth = {p: 0 for p in files}
    while True:
        ids = {p: _safe("__".join([*p.parent.parts[len(p.parent.parts) - depth[p]:], base[p]])) for p in files}
        groups: dict[str, list[Path]] = {}
        for p, i in ids.items():
            groups.setdefault(i, []).append(p)
        clashes = [ps for ps in groups.values() if len(ps) > 1]
        if not clashes:
            return {i: p for p, i in ids.items()}
        for ps in clashes:  # prefix one more parent folder until the ids differ
            for n, p in enumerate(ps):
                if depth[p] < len(p.parent.parts):
                    depth[p] += 1
                else:  # names that differ only in characters _safe replaced: number them
                    base[p] = f"{base[p]}_{n}"


def _safe(name: str) -> str:
    """A folder-safe id: letters, digits, ``._-`` kept, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "scan"
