"""Reading registrations from a work dir for training and evaluation.

A work dir holds ``scans/<id>/registration.ply`` (template topology, in the scan file's frame and
units) and ``scans/<id>/params.npz``, all keys optional:

- ``verts_internal (V,3)``: the registration in internal metres (else ``transform`` or
  ``frame_matrix``, 4x4 internal metres -> file frame, converts the PLY; else it is internal);
- ``pose (J,3)``, ``translation (3,)`` internal metres: the starting pose of training;
- ``subject``, ``kind`` (``body`` | ``head`` | ``hand_left`` | ...);
- ``mask``, ``vertex_mask`` or ``region_mask (V,)``: the filter F, 1 where the registration saw
  scan data (all 1 when absent).

Subjects (all scans of one person share a shape) come from ``ghum_pipe.io.subjects.work_subjects``:
``WORK/subjects.csv`` (``scan_id,subject``), subjects.csv next to the scan file, a user regex whose
group 1 is the subject (``--subject-pattern``), what the pipeline recorded (``params.npz['subject']``,
``scan.json``), else each scan is its own subject.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ghum_pipe.errors import ModelError
from ghum_pipe.io.subjects import work_subjects


@dataclass(frozen=True, eq=False)
class RegistrationSet:
    """N registrations of one template resolution. Arrays: verts (N, V, 3) float32 metres,
    +Z up; mask (N, V) float32 filter F; pose (N, J, 3) (zeros where unknown) with has_pose (N,);
    translation (N, 3); subject_index (N,) into ``subjects``."""

    scan_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    subjects: tuple[str, ...]
    subject_index: np.ndarray
    verts: np.ndarray
    mask: np.ndarray
    pose: np.ndarray
    has_pose: np.ndarray
    translation: np.ndarray
    has_translation: np.ndarray

    def __len__(self) -> int:
        return len(self.scan_ids)

    def select(self, keep: np.ndarray) -> "RegistrationSet":
        """The subset of scans ``keep`` (bool (N,) or indices), subjects re-indexed."""
        idx = np.nonzero(keep)[0] if np.asarray(keep).dtype == bool else np.asarray(keep)
        subj = sorted({self.subjects[i] for i in self.subject_index[idx]})
        remap = {s: k for k, s in enumerate(subj)}
        return RegistrationSet(
            tuple(self.scan_ids[i] for i in idx), tuple(self.kinds[i] for i in idx), tuple(subj),
            np.array([remap[self.subjects[self.subject_index[i]]] for i in idx], dtype=np.int64),
            self.verts[idx], self.mask[idx], self.pose[idx], self.has_pose[idx], self.translation[idx],
            self.has_translation[idx])


def subject_batches(subjects, batch_scans: int, order=None) -> list[np.ndarray]:
    """Scan indices cut into batches of whole subjects (the unit of training's per-batch tasks
    and of C's step): subjects in sorted order, a batch closed once it holds ``batch_scans``
    scans or more; within a subject, scans by ``order`` (N,) (default: their position).
    ``subjects``: (N,) subject name per scan."""
    order = np.arange(len(subjects)) if order is None else np.asarray(order)
    by_subject: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        by_subject.setdefault(s, []).append(i)
    out, cur = [], []
    for subj in sorted(by_subject):
        cur.extend(sorted(by_subject[subj], key=lambda i: (order[i], i)))
        if len(cur) >= batch_scans:
            out.append(np.array(cur, dtype=np.int64))
            cur = []
    if cur:
        out.append(np.array(cur, dtype=np.int64))
    return out


def scan_dirs(work: Path) -> list[Path]:
    """Registered scans of a work dir, sorted by id."""
    return sorted(p.parent for p in (Path(work) / "scans").glob("*/registration.ply"))


def read_registration(scan_dir: Path, n_verts: int, n_joints: int):
    """One scan folder -> (verts (V,3) float32 internal metres, mask (V,) float32, pose (J,3),
    has_pose, translation (3,), subject | None, kind, has_translation); ModelError on a bad file."""
    import trimesh

    ply = scan_dir / "registration.ply"
    try:
        mesh = trimesh.load(ply, process=False, force="mesh")
        verts = np.asarray(mesh.vertices, dtype=np.float64)
    except Exception as e:  # trimesh raises many types on bad files
        raise ModelError(f"cannot read the registration ({type(e).__name__}: {e})", path=ply,
                         hint="Re-run 'ghum-pipe run' for this scan or remove its folder") from None
    if verts.shape != (n_verts, 3) or not np.isfinite(verts).all():
        raise ModelError(f"{verts.shape[0]} vertices (finite: {np.isfinite(verts).all()}), the template has {n_verts}",
                         path=ply, hint="Registrations must be in the template's topology: re-run the registration")
    params = {}
    if (scan_dir / "params.npz").is_file():
        with np.load(scan_dir / "params.npz", allow_pickle=False) as z:
            params = {k: z[k] for k in z.files}
    to_file = params.get("transform", params.get("frame_matrix"))  # 4x4 internal metres -> file frame
    if "verts_internal" in params and np.shape(params["verts_internal"]) == (n_verts, 3):
        verts = np.asarray(params["verts_internal"], dtype=np.float64)  # the registration stage writes it
    elif to_file is not None:
        T = np.linalg.inv(to_file)
        verts = verts @ T[:3, :3].T + T[:3, 3]
    mask = next((params[k] for k in ("mask", "vertex_mask", "region_mask") if k in params), np.ones(n_verts))
    mask = np.asarray(mask, dtype=np.float32).reshape(-1)
    if mask.shape != (n_verts,):
        mask = np.ones(n_verts, dtype=np.float32)
    pose = np.asarray(params.get("pose", np.zeros((n_joints, 3))), dtype=np.float32)
    has_pose = pose.shape == (n_joints, 3) and "pose" in params
    if not has_pose:
        pose = np.zeros((n_joints, 3), dtype=np.float32)
    trans = np.asarray(params.get("translation", np.zeros(3)), dtype=np.float32).reshape(-1)[:3]
    subject = str(params["subject"]) if "subject" in params else None
    kind = str(params["kind"]) if "kind" in params else "body"
    return verts.astype(np.float32), mask, pose, has_pose, trans, subject, kind, "translation" in params


@functools.lru_cache(maxsize=4)
def load_registrations(work: str | Path, resolution: str = "full", subject_pattern: str | None = None) -> RegistrationSet:
    """All registrations of ``work`` at ``resolution`` (``full``, or ``low`` through the fixed
    full->low map of ``ghum_pipe.template.lowres``). Cached per process (Dask workers load once)."""
    from ghum_pipe.template import load_template

    work = Path(work)
    dirs = scan_dirs(work)
    if not dirs:
        raise ModelError("no scans/<id>/registration.ply found", path=work,
                         hint="Run 'ghum-pipe run' (or 'ghum-pipe synth --registrations') into this work dir first")
    t = load_template()
    rows = [read_registration(d, t.n_verts, t.n_joints) for d in dirs]
    ids = tuple(d.name for d in dirs)
    named = work_subjects(work, ids, subject_pattern)  # the pipeline's one subject resolver
    subj = [named[sid] or sid for sid in ids]
    subjects = tuple(sorted(set(subj)))
    verts = np.stack([r[0] for r in rows])
    mask = np.stack([r[1] for r in rows])
    if resolution == "low":
        verts, mask = to_lowres(verts, mask)
    return RegistrationSet(
        ids, tuple(r[6] for r in rows), subjects, np.array([subjects.index(s) for s in subj], dtype=np.int64),
        verts, mask, np.stack([r[2] for r in rows]), np.array([r[3] for r in rows]), np.stack([r[4] for r in rows]),
        np.array([r[7] for r in rows]))


def to_lowres(verts: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution registrations (N, V, 3) and filters (N, V) -> GHUML's (N, Vl, 3), (N, Vl)
    float32, through the fixed full->low map of ``ghum_pipe.template.lowres``."""
    from ghum_pipe.template.lowres import load_lowres

    low = load_lowres()
    verts = low.downsample(verts).astype(np.float32)
    # a low-res vertex is kept only if every full-res vertex it interpolates saw data
    # (a weight-tolerance test let a 0.1 % share of a hole's garbage through)
    uses = (abs(low.full_to_low) > 0).astype(np.float32)
    mask = ((uses @ (mask < 0.5).T.astype(np.float32)).T == 0).astype(np.float32)
    return verts, mask


def split_subjects(subjects: tuple[str, ...], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out subject split (at least one subject trains)."""
    rng = np.random.default_rng(seed)
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    n_out = min(len(subjects) - 1, int(round(holdout * len(subjects))))
    return sorted(order[n_out:]), sorted(order[:n_out])
