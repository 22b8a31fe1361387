"""The work dir's memory: ``W/manifest.json`` records, per scan and stage, what ran on which
input with which config, how it ended and where its log is, so a rerun does only what is new.

Layout (``format`` = 1)::

    {"format": 1,
     "configs": {"<config_hash>": {...the stage config...}},
     "scans": {"<id>": {"path": "/abs/scan.ply", "size": 123, "mtime_ns": 456, "input_hash": "blake2b…",
                        "stages": {"landmark": {"status": "done" | "failed",
                                                 "key": "…", "config_hash": "…",
                                                 "started": iso, "finished": iso, "seconds": 1.2, "cpu_s": 1.1,
                                                 "error": None | "one line", "error_type": "LandmarkError",
                                                 "log": "scans/<id>/logs/landmark.log",
                                                 "metrics": {"scalar.name": 1.0, ...},
                                                 "worker": "tcp://…", "peak_rss_mb": 812.0, "run": "…"}}}}}

A stage's ``key`` hashes its scan's content hash, its config and the keys of the stages it depends
on, so a changed config of ``landmark`` also redoes ``register``. A stage is skipped when its
record is ``done`` with the same key and its outputs still exist.

Only the client process writes the manifest (``ManifestLock`` enforces one run per work dir), always
atomically. Tasks also leave a small done marker (``scans/<id>/logs/<stage>.done.json``) next to
their outputs, so a run killed before the manifest was flushed loses nothing: the next run adopts the
markers whose key matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from ghum_pipe.errors import GhumPipeError
from ghum_pipe.io.atomic import json_default, atomic_path
from ghum_pipe.io.lock import DirLock

FORMAT = 1
MANIFEST_NAME = "manifest.json"


class WorkDirError(GhumPipeError):
    """The work dir cannot be used: a corrupt manifest, another run holding it, unknown scan ids."""


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (BLAKE2b-128, hex). Streams: memory use is one chunk."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(config_dict: dict) -> str:
    """Hash of a stage config's ``to_dict()`` (key order does not matter)."""
    text = json.dumps(config_dict, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def stage_key(stage: str, input_hash: str, cfg_hash: str, upstream_keys: Iterable[str] = ()) -> str:
    """What a stage's result depends on: its name, the scan content, its config, its upstream."""
    text = "|".join([stage, input_hash, cfg_hash, *upstream_keys])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def scan_dir(work: Path, scan_id: str) -> Path:
    return Path(work) / "scans" / scan_id


def log_path(work: Path, scan_id: str, stage: str) -> Path:
    return scan_dir(work, scan_id) / "logs" / f"{stage}.log"


def marker_path(work: Path, scan_id: str, stage: str) -> Path:
    return scan_dir(work, scan_id) / "logs" / f"{stage}.done.json"


def flatten_numeric(obj, prefix: str = "", max_keys: int = 12) -> dict[str, float]:
    """Finite numeric leaves of a nested dict as ``{"a.b": value}``. Lists, strings and dicts of
    more than ``max_keys`` entries (per-landmark tables) are left out: the manifest keeps these
    compact scalars (tens of thousands of scans), the full metrics stay in each scan's folder."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        if prefix and len(obj) > max_keys:
            return out
        for k, v in obj.items():
            out.update(flatten_numeric(v, f"{prefix}{k}.", max_keys))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix.rstrip(".")] = obj if isinstance(obj, int) else float(obj)
    return out


@dataclass
class Manifest:
    """In-memory manifest of work dir ``work``; ``save()`` writes it atomically.

    scans: ``{id: {"path", "size", "mtime_ns", "input_hash", "stages": {stage: record}}}``;
    configs: ``{config_hash: config dict}``, each stage config stored once, not per scan.
    """

    work: Path
    scans: dict
    configs: dict = field(default_factory=dict)

    @classmethod
    def load_existing(cls, work: str | Path) -> "Manifest":
        """Like :meth:`load`, for commands that only read a work dir (status, report)."""
        if not (Path(work) / MANIFEST_NAME).exists():
            raise WorkDirError("not a ghum-pipe work dir (no manifest.json)", work,
                               "Run e.g. 'ghum-pipe run SCANS --work W' first")
        return cls.load(work)

    @classmethod
    def load(cls, work: str | Path) -> "Manifest":
        work = Path(work)
        path = work / MANIFEST_NAME
        if not path.exists():
            return cls(work, {})
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WorkDirError(f"manifest is unreadable ({type(e).__name__})", path,
                               "Move it away; the next run rebuilds it from the done markers in scans/*/logs") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise WorkDirError(f"manifest format {data.get('format') if isinstance(data, dict) else '?'} "
                               f"is not {FORMAT}", path, "Use a new work dir or move the manifest away")
        return cls(work, data.get("scans", {}), data.get("configs", {}))

    def save(self) -> None:
        """Write atomically, one scan per line (``grep ID W/manifest.json`` shows a scan; tens of
        thousands of scans stay a few MB per stage and quick to rewrite)."""
        compact = {"separators": (",", ":"), "default": json_default}
        lines = [f'{{"format":{FORMAT},', f'"configs":{json.dumps(self.configs, **compact)},', '"scans":{']
        items = [f"{json.dumps(i)}:{json.dumps(self.scans[i], **compact)}" for i in sorted(self.scans)]
        lines.append(",\n".join(items))
        lines.append("}}\n")
        with atomic_path(self.work / MANIFEST_NAME) as tmp:
            tmp.write_text("\n".join(lines), encoding="utf-8")

    def config(self, cfg_hash: str) -> dict | None:
        """The stage config a record's ``config_hash`` stands for."""
        return self.configs.get(cfg_hash)

    # --- scans -------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(self.scans)

    def stage(self, scan_id: str, stage: str) -> dict | None:
        return self.scans.get(scan_id, {}).get("stages", {}).get(stage)

    def add_scans(self, paths: dict[str, Path], hash_threads: int = 8) -> None:
        """Record ``{id: path}``, (re)hashing only files whose size or mtime changed.

        Hashing runs in threads (hashlib releases the GIL) since it is disk bound.
        """
        todo = {}
        clashes = [f"{i} ({self.scans[i]['path']})" for i, p in paths.items()
                   if i in self.scans and self.scans[i].get("path") not in (None, str(Path(p).resolve()))
                   and Path(self.scans[i]["path"]).exists()]
        if clashes:
            raise WorkDirError(f"scan id(s) already used by other files in this work dir: {', '.join(clashes[:3])}"
                               + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""), self.work,
                               "Rename the new scans, or use another --work (a moved file is fine: its old "
                               "path no longer exists)")
        for scan_id, path in paths.items():
            path = Path(path).resolve()
            rec = self.scans.setdefault(scan_id, {"stages": {}})
            try:
                st = path.stat()
            except OSError:
                # the ingest stage reports a missing/unreadable file with a proper ScanError
                rec.update(path=str(path), size=None, mtime_ns=None, input_hash=f"missing:{path}")
                continue
            if rec.get("path") == str(path) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
                continue
            rec.update(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
            todo[scan_id] = path
        with ThreadPoolExecutor(hash_threads) as pool:
            hashes = dict(zip(todo, pool.map(_safe_hash, todo.values())))
        for scan_id, h in hashes.items():
            self.scans[scan_id]["input_hash"] = h

    # --- stage records -----------------------------------------------------------------------
    def is_current(self, scan_id: str, stage: str, key: str, outputs: Iterable[str]) -> bool:
        """True when ``stage`` of ``scan_id`` is done with ``key`` and its outputs exist.

        Adopts a matching done marker left by a task whose result the manifest never got.
        """
        folder = scan_dir(self.work, scan_id)
        if not all((folder / name).exists() for name in outputs):
            return False
        rec = self.stage(scan_id, stage)
        if rec and rec.get("status") == "done" and rec.get("key") == key:
            return True
        marker = marker_path(self.work, scan_id, stage)
        try:
            rec = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        if rec.get("status") == "done" and rec.get("key") == key:
            self.set_stage(scan_id, stage, rec)
            return True
        return False

    def set_stage(self, scan_id: str, stage: str, record: dict) -> None:
        """Store a task's record, compacted: its config goes to ``configs`` (once per hash), its
        metrics are reduced to scalars (see :func:`flatten_numeric`)."""
        record = dict(record)
        config = record.pop("config", None)
        if config is not None and record.get("config_hash"):
            self.configs.setdefault(record["config_hash"], config)
        if record.get("metrics"):
            record["metrics"] = flatten_numeric(record["metrics"])
        self.scans.setdefault(scan_id, {"stages": {}}).setdefault("stages", {})[stage] = record

    def clear_stage(self, scan_id: str, stage: str) -> None:
        self.scans.get(scan_id, {}).get("stages", {}).pop(stage, None)


def _safe_hash(path: Path) -> str:
    try:
        return file_hash(path)
    except OSError:
        return f"unreadable:{path}"


class ManifestLock(DirLock):
    """One run per work dir: ``W/.lock`` (:class:`~ghum_pipe.io.lock.DirLock`: released by the OS
    if the process dies, removed when the run ends)."""

    def __init__(self, work: str | Path):
        super().__init__(Path(work) / ".lock", lambda: WorkDirError(
            "another ghum-pipe run is using this work dir", Path(work),
            "Wait for it to finish or use another --work"))


class ThrottledSaver:
    """Saves the manifest after each result, unless saving takes a noticeable share of the time
    (tens of thousands of scans): then at most every ``20 x`` the last save's duration.
    Call ``flush()`` at the end and on interruption."""

    def __init__(self, manifest: Manifest, min_interval_s: float = 0.0):
        self.manifest = manifest
        self.min_interval_s = min_interval_s
        self._last = float("-inf")  # the first result is saved at once
        self._cost = 0.0
        self._dirty = False

    def touch(self) -> None:
        self._dirty = True
        if time.monotonic() - self._last >= max(self.min_interval_s, 20 * self._cost):
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        start = time.monotonic()
        self.manifest.save()
        self._last = time.monotonic()
        self._cost = self._last - start
        self._dirty = False


SCRATCH = ".dask-scratch"  # W/.dask-scratch: local Dask workers' spill space, removed at exit


def sweep_temp_files(work: str | Path) -> list[Path]:
    """Remove temp files that a killed worker left behind (``ghum_pipe.io.atomic`` names them
    ``.<stem>.<random>.tmp<suffix>``). Only safe while holding the work dir's lock."""
    removed = []
    # os.walk skips a folder that vanishes under it: after a Ctrl-C the local workers may still be
    # removing their scratch (not walked either) while this runs
    for root, dirs, files in os.walk(work):
        dirs[:] = [d for d in dirs if d != SCRATCH]
        for name in files:
            if name.startswith(".") and ".tmp" in name:
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
