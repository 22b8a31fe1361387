"""The registration store: a work dir's registrations packed once into chunked zarr arrays.

Training reads every registration many times (each round, each inner pass, both models).
Parsing ``scans/<id>/registration.ply`` each time costs more than the read, and loading all of
them at once costs ~0.2 MB per scan in every process. ``W/train_store.zarr`` holds them as
arrays that a task reads by (scans, vertex block):

- ``full/verts (R, V, 3)`` float32 internal metres, ``full/mask (R, V)`` float32 filter F;
- ``low/verts (R, Vl, 3)``, ``low/mask (R, Vl)``: GHUML's, downsampled once at packing
  (``data.to_lowres``);
- ``pose (R, J, 3)``, ``translation (R, 3)``, ``has_pose (R,)``, ``has_translation (R,)``.

Chunks: ``scan_chunk`` rows x ``vblock`` vertices, uncompressed (registration coordinates are
noise to a compressor; the store is ~0.2 MB per scan). ``index.json`` maps each scan id to its row,
the blake2b hash of its registration.ply + params.npz bytes, and its kind. It is written atomically
after the rows it lists, so a pack that is interrupted leaves rows the index does not list (or lists
with the old hash) and the next pack redoes them. New scans are appended (sorted by subject, so one
subject's scans are adjacent); a changed registration (another hash) is re-packed in its row; a
template change rebuilds the store. Subjects are not stored: they are resolved on every run
(``io.subjects.work_subjects``), as ``W/subjects.csv`` may change without any registration changing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ghum_pipe.io.atomic import write_json
from ghum_pipe.model.data import RegistrationSet, read_registration, scan_dirs, to_lowres

log = logging.getLogger(__name__)

STORE_NAME = "train_store.zarr"
STORE_VERSION = 1
RESOLUTIONS = ("full", "low")


def scan_hash(scan_dir: Path) -> str:
    """blake2b (16 bytes, hex) of the scan's registration.ply and params.npz contents."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("registration.ply", "params.npz"):
        p = Path(scan_dir) / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def template_key() -> dict:
    """What a store is valid for: the template's hash, vertex and joint counts, and the low-res
    template's vertex count."""
    from ghum_pipe.template import load_template
    from ghum_pipe.template.lowres import load_lowres

    t = load_template()
    return dict(template=t.hash, n_verts=int(t.n_verts), n_joints=int(t.n_joints),
                n_verts_low=int(load_lowres().template.n_verts))


class RegistrationStore:
    """Read access to a packed store (cheap to open: reads index.json; arrays opened lazily)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index = json.loads((self.path / "index.json").read_text())
        self._group = None

    @property
    def scans(self) -> dict:
        """{scan_id: {"row", "hash", "kind"}} of the packed scans."""
        return self.index["scans"]

    def group(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path), mode="r")
        return self._group

    def rows(self, scan_ids) -> np.ndarray:
        return np.array([self.scans[s]["row"] for s in scan_ids], dtype=np.int64)

    def read(self, rows: np.ndarray, resolution: str, verts: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Registrations (n, v, 3) float32 and filters (n, v) of store ``rows`` on the vertex range
        ``verts`` (None: all) at ``resolution`` (``full`` | ``low``); reads only those chunks."""
        g = self.group()
        sl = verts if verts is not None else slice(None)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            n = g[f"{resolution}/mask"].shape[1]
            v = len(range(*sl.indices(n)))
            return np.zeros((0, v, 3), np.float32), np.zeros((0, v), np.float32)
        return (np.asarray(g[f"{resolution}/verts"].oindex[rows, sl]),
                np.asarray(g[f"{resolution}/mask"].oindex[rows, sl]))

    def params(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """pose (n, J, 3), has_pose (n,), translation (n, 3), has_translation (n,) of ``rows``."""
        g = self.group()
        rows = np.asarray(rows, dtype=np.int64)
        return {k: np.asarray(g[k].oindex[rows]) for k in ("pose", "has_pose", "translation", "has_translation")}

    def registration_set(self, scan_ids, subject_of: dict[str, str], resolution: str) -> RegistrationSet:
        """The scans ``scan_ids`` (in that order) as a :class:`RegistrationSet`, subjects named by
        ``subject_of`` and indexed in sorted order."""
        scan_ids = tuple(scan_ids)
        rows = self.rows(scan_ids)
        verts, mask = self.read(rows, resolution)
        p = self.params(rows)
        subjects = tuple(sorted({subject_of[s] for s in scan_ids}))
        pos = {s: i for i, s in enumerate(subjects)}
        return RegistrationSet(scan_ids, tuple(self.scans[s]["kind"] for s in scan_ids), subjects,
                               np.array([pos[subject_of[s]] for s in scan_ids], dtype=np.int64), verts, mask,
                               p["pose"], p["has_pose"].astype(bool), p["translation"],
                               p["has_translation"].astype(bool))

    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def pack_registrations(work: str | Path, subject_of: dict[str, str] | None = None, scan_chunk: int = 8,
                       vblock: int = 1024, checkpoint: int = 256) -> tuple[RegistrationStore, dict]:
    """Bring ``W/train_store.zarr`` up to date with ``W/scans/*/registration.ply``: pack new and
    changed scans (by hash), drop removed ones from the index. Holds ``scan_chunk`` scans at a
    time. ``subject_of`` ({scan_id: subject}) orders new rows by subject. Returns the store and
    {"packed", "kept", "dropped", "seconds"}. Raises ModelError (naming the file) on a bad
    registration, after saving the index of the rows packed before it."""
    import zarr

    t0 = time.time()
    work = Path(work)
    path = work / STORE_NAME
    key = template_key()
    index = None
    if (path / "index.json").is_file():
        try:
            index = json.loads((path / "index.json").read_text())
        except ValueError:
            index = None
        if index is not None and (index.get("version") != STORE_VERSION or index.get("key") != key):
            log.info("%s: another template or store version: rebuilding it", path)
            index = None
    if index is None:
        if path.exists():
            shutil.rmtree(path)
        index = dict(version=STORE_VERSION, key=key, scan_chunk=scan_chunk, vblock=vblock, n_rows=0, scans={})
    dirs = {d.name: d for d in scan_dirs(work)}
    hashes = {sid: scan_hash(d) for sid, d in dirs.items()}
    old = index["scans"]
    dropped = [s for s in old if s not in dirs]
    for s in dropped:
        del old[s]
    subject_of = subject_of or {}
    todo = sorted((s for s in dirs if s not in old or old[s]["hash"] != hashes[s]),
                  key=lambda s: (str(subject_of.get(s, s)), s))
    g = zarr.open_group(str(path), mode="a")
    V, J, Vl = key["n_verts"], key["n_joints"], key["n_verts_low"]
    sc, vb = index["scan_chunk"], index["vblock"]
    specs = {"full/verts": ((V, 3), (vb, 3), "float32"), "full/mask": ((V,), (vb,), "float32"),
             "low/verts": ((Vl, 3), (vb, 3), "float32"), "low/mask": ((Vl,), (vb,), "float32"),
             "pose": ((J, 3), (J, 3), "float32"), "translation": ((3,), (3,), "float32"),
             "has_pose": ((), (), "bool"), "has_translation": ((), (), "bool")}
    arrays = {}
    for name, (tail, ctail, dtype) in specs.items():
        if name in g:
            arrays[name] = g[name]
        else:
            arrays[name] = g.create_array(name, shape=(0, *tail), chunks=(sc, *ctail), dtype=dtype,
                                          compressors=None, fill_value=0)
    new_rows = {}
    n_rows = index["n_rows"]
    for s in todo:
        if s in old:
            new_rows[s] = old[s]["row"]
        else:
            new_rows[s] = n_rows
            n_rows += 1
    if todo:
        for a in arrays.values():
            if a.shape[0] < n_rows:
                a.resize((n_rows, *a.shape[1:]))
    done = 0
    try:
        for lo in range(0, len(todo), sc):
            batch = todo[lo:lo + sc]
            rows = np.array([new_rows[s] for s in batch])
            read = [read_registration(dirs[s], V, J) for s in batch]
            verts = np.stack([r[0] for r in read])
            mask = np.stack([r[1] for r in read])
            low_v, low_m = to_lowres(verts, mask)
            values = {"full/verts": verts, "full/mask": mask, "low/verts": low_v, "low/mask": low_m,
                      "pose": np.stack([r[2] for r in read]), "has_pose": np.array([r[3] for r in read]),
                      "translation": np.stack([r[4] for r in read]),
                      "has_translation": np.array([r[7] for r in read])}
            contiguous = bool(np.all(np.diff(rows) == 1))
            for name, x in values.items():
                if contiguous:
                    arrays[name][int(rows[0]):int(rows[-1]) + 1] = x
                else:
                    for k, r in enumerate(rows):
                        arrays[name][int(r)] = x[k]
            for s, r in zip(batch, read):
                old[s] = dict(row=int(new_rows[s]), hash=hashes[s], kind=r[6])
            done += len(batch)
            index["n_rows"] = max(index["n_rows"], int(rows.max()) + 1)
            if done % checkpoint < sc:
                write_json(path / "index.json", index)
    finally:
        index["n_rows"] = max(index["n_rows"], max((v["row"] + 1 for v in old.values()), default=0))
        write_json(path / "index.json", index)
    stats = dict(packed=done, kept=len(dirs) - len(todo), dropped=len(dropped), seconds=round(time.time() - t0, 2))
    if todo or dropped:
        log.info("registration store %s: %d packed, %d kept, %d dropped (%.1f s)", path, done, stats["kept"],
                 len(dropped), stats["seconds"])
    return RegistrationStore(path), stats


def write_shard_state(path: str | Path, vblock: int, **arrays: np.ndarray) -> None:
    """Save one subject batch's training state (a zarr group at ``path``; arrays replaced
    whole). Arrays with a vertex axis second ((S, V, 3) rest shapes) are chunked by ``vblock``
    vertices, so a vertex-block task reads only its block."""
    import zarr

    g = zarr.open_group(str(path), mode="a")
    for name, x in arrays.items():
        x = np.ascontiguousarray(x)
        chunks = x.shape if name != "rest" else (max(1, x.shape[0]), vblock, *x.shape[2:])
        chunks = tuple(max(1, c) for c in chunks)
        a = g.create_array(name, shape=x.shape, chunks=chunks, dtype=x.dtype, compressors=None,
                           fill_value=0, overwrite=True)
        a[...] = x


def read_shard_state(path: str | Path, names, verts: slice | None = None) -> dict[str, np.ndarray]:
    """Arrays ``names`` of a subject batch's state; ``rest`` only on vertices ``verts`` if given."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in names:
        a = g[name]
        out[name] = np.asarray(a[:, verts]) if (name == "rest" and verts is not None) else np.asarray(a[...])
    return out
