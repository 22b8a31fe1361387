"""Reading synthetic ground truth for evaluation (the model never imports ``ghum_pipe.synth``).

Two layouts, both written by ``ghum-pipe synth``:

- ``synth --registrations`` work dirs: ``W/truth/{corrective,skinning,joints}.npz`` (the planted
  corrective, skinning and joint shifts) and ``W/truth/subjects/<subject>.npz`` (rest shapes
  and joints): :func:`planted_truth`, :func:`subject_truth`;
- synthetic *scans*: ``OUT/truth/<scan_id>.npz`` with the template's vertices in the scan
  file's frame (``verts``), in internal metres (``verts_m``) and the subject's rest shape
  (``rest_verts``): :func:`scan_truth`, for scans registered by ``ghum-pipe run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def corrective_offsets(fields: np.ndarray, joints: np.ndarray, rotmats: np.ndarray) -> np.ndarray:
    """(V, 3) rest-space corrective for one pose: sum_k field_k * sin^2(angle_k / 2), with
    sin^2(a/2) = (3 - trace R_k) / 4 from the joint's local rotation matrix (J, 3, 3)."""
    s = (3.0 - np.trace(rotmats[joints], axis1=1, axis2=2)) / 4.0
    return np.einsum("k,kvc->vc", s, fields)


def load_truth_corrective(out_dir: Path) -> dict:
    """The planted corrective as written by ``synth --registrations`` (fields (K, V, 3),
    joints (K,), names, spec)."""
    with np.load(Path(out_dir) / "truth" / "corrective.npz") as z:
        d = {k: z[k] for k in z.files}
    d["spec"] = json.loads((Path(out_dir) / "truth" / "corrective.json").read_text())["items"]
    return d


def planted_truth(work: Path) -> dict | None:
    """The planted corrective, skinning and joint shifts of a ``synth --registrations`` dir,
    or None for any other data."""
    work = Path(work)
    if not (work / "truth" / "corrective.npz").is_file():
        return None
    with np.load(work / "truth" / "skinning.npz") as z:
        skin = {k: z[k] for k in z.files}
    planted = np.zeros(0, dtype=np.int64)
    if (work / "truth" / "joints.npz").is_file():
        with np.load(work / "truth" / "joints.npz") as z:
            planted = z["joints"]
    return dict(corrective=load_truth_corrective(work), skinning=skin, planted_joints=planted)


def subject_truth(work: Path, subjects) -> tuple[np.ndarray, np.ndarray]:
    """Rest shapes (S, V, 3) and rest joints (S, J, 3) of ``subjects`` from W/truth/subjects."""
    rest, joints = [], []
    for s in subjects:
        with np.load(Path(work) / "truth" / "subjects" / f"{s}.npz") as z:
            rest.append(z["rest_verts"])
            joints.append(z["rest_joints"])
    return np.stack(rest), np.stack(joints)


@dataclass(frozen=True)
class ScanTruth:
    """Ground truth of registered synthetic scans: verts (N, V, 3) posed, internal metres (the
    registration's frame); mask (N, V) bool, where to score (the template's surface, within the
    region of a close-up); rest (N, V, 3) the subject's rest shape or NaN where unknown."""

    verts: np.ndarray
    mask: np.ndarray
    rest: np.ndarray


def scan_truth(truth_dir: Path, work: Path, scan_ids, surface: np.ndarray) -> ScanTruth:
    """Truth of ``scan_ids`` from ``truth_dir/<id>.npz``, brought into each registration's
    internal frame: the truth's file-frame vertices through the inverse of the registration's
    ``frame_matrix`` (params.npz), else its ``verts_m``. ``surface`` (V,) bool: scored vertices.
    Raises ``ModelError`` naming the first scan without truth."""
    from ghum_pipe.errors import ModelError

    verts, masks, rests = [], [], []
    for sid in scan_ids:
        path = Path(truth_dir) / f"{sid}.npz"
        if not path.is_file():
            raise ModelError(f"no ground truth for scan {sid}", path=path,
                             hint="Pass the truth/ folder 'ghum-pipe synth' wrote for these scans, or drop --truth")
        with np.load(path) as z:
            tr = {k: z[k] for k in z.files}
        params = Path(work) / "scans" / sid / "params.npz"
        v = tr["verts_m"]
        if params.is_file():
            with np.load(params) as z:
                if "frame_matrix" in z.files:
                    T = np.linalg.inv(z["frame_matrix"])
                    v = tr["verts"] @ T[:3, :3].T + T[:3, 3]
        m = surface.copy()
        if "region_mask" in tr:
            m &= tr["region_mask"].astype(bool)
        verts.append(v)
        masks.append(m)
        rests.append(tr["rest_verts"] if "rest_verts" in tr else np.full_like(v, np.nan))
    return ScanTruth(np.stack(verts), np.stack(masks), np.stack(rests))
