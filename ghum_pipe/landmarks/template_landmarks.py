"""The template's own landmarks, defined the way scan landmarks are found, so registration
compares like with like.

GHUM (Xu et al. 2020, Sec. 3.1) fits the template to the scan's triangulated keypoints. A
keypoint detector does not fire on anatomical points: MediaPipe's "hip" is where it believes the
hip joint is, its "nose" where it puts the nose tip. So the template's landmarks are not taken
from a hand-made vertex list; we run this same stage (render -> detect -> triangulate) once on
the rest-pose template, rendered with skin shading, and store each landmark as

- ``surface`` (face, fingertips, ears, heels...): barycentric weights on one template triangle
  (K=3 non-zero weights), so it moves with the surface;
- ``interior`` (shoulders, hips, knees, wrists... joint centres): affine weights over a shell of
  surface vertices around the point (the ring of skin around a limb joint), as close to uniform
  as reproduces the point exactly, so it moves with the limb like a joint regressor; averaged
  over the same stage run on a few other adult shapes (``from_found``).

``TemplateLandmarks.points(verts)`` evaluates them on any posed/shaped template (numpy or torch,
batched, differentiable). The result is cached in ``ghum_pipe.template.cache_dir()`` per
template hash, written atomically; building it takes ~30-60 s once (five stage runs).

>>> tl = load_template_landmarks(load_template())
>>> tl.names[:3], tl.kinds[:3]                   # ('nose', ...), ('surface', ...)
>>> pts = tl.points(verts)                       # (B, L, 3) for verts (B, V, 3)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ghum_pipe.errors import LandmarkError
from ghum_pipe.io.atomic import write_npz

log = logging.getLogger(__name__)

CACHE_VERSION = 4
INTERIOR_K = 32  # shell vertices per interior landmark
SHELL = 1.6  # shell radius as a multiple of the distance to the nearest surface vertex
CALIBRATION_SHAPES = 4  # other adult shapes the interior definitions are averaged over


@dataclass(frozen=True, eq=False)
class TemplateLandmarks:
    """Landmarks on the template as sparse vertex weights. L landmarks, K weights each.

    names: (L,) landmark names as in landmarks.json; vertex_ids: (L, K) int64 template vertex
    indices; weights: (L, K) float64, each row sums to 1 (unused slots have weight 0);
    kinds: (L,) ``"surface"`` or ``"interior"``; template_hash: the template they belong to.
    """

    names: tuple[str, ...]
    vertex_ids: np.ndarray
    weights: np.ndarray
    kinds: tuple[str, ...]
    template_hash: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def index(self, names) -> np.ndarray:
        """(N,) row indices of ``names`` (a KeyError names the first unknown one)."""
        lookup = {n: i for i, n in enumerate(self.names)}
        return np.array([lookup[n] for n in names], dtype=np.int64)

    def subset(self, names) -> "TemplateLandmarks":
        """The landmarks named ``names``, in that order."""
        idx = self.index(names)
        return TemplateLandmarks(tuple(self.names[i] for i in idx), self.vertex_ids[idx],
                                 self.weights[idx], tuple(self.kinds[i] for i in idx), self.template_hash)

    def points(self, verts):
        """Landmark positions on template vertices.

        verts: (B, V, 3) torch tensor or numpy array, or (V, 3). Returns (B, L, 3), or (L, 3)
        for unbatched input, same type/device/dtype as ``verts`` (differentiable in torch).
        """
        if isinstance(verts, np.ndarray):
            return np.einsum("...lkc,lk->...lc", verts[..., self.vertex_ids, :], self.weights)
        import torch

        ids = torch.as_tensor(self.vertex_ids, device=verts.device)
        w = torch.as_tensor(self.weights, dtype=verts.dtype, device=verts.device)
        return torch.einsum("...lkc,lk->...lc", verts[..., ids, :], w)

    def save(self, path: str | Path) -> None:
        write_npz(path, names=np.array(self.names), vertex_ids=self.vertex_ids, weights=self.weights,
                  kinds=np.array(self.kinds), template_hash=np.array(self.template_hash))

    @classmethod
    def load(cls, path: str | Path) -> "TemplateLandmarks":
        with np.load(path) as z:
            ids, w = z["vertex_ids"].astype(np.int64), z["weights"].astype(np.float64)
        ids.setflags(write=False), w.setflags(write=False)  # shared per process by the loader
        with np.load(path) as z:
            return cls(tuple(str(n) for n in z["names"]), ids, w, tuple(str(k) for k in z["kinds"]),
                       str(z["template_hash"]))


def surface_row(face: np.ndarray, bary: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One landmark row from a triangle (3,) and its barycentric weights (3,), padded to k."""
    ids = np.zeros(k, dtype=np.int64)
    w = np.zeros(k)
    ids[:3], w[:3] = face, bary / bary.sum()
    return ids, w


def shell_ids(point: np.ndarray, verts: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(k,) vertex ids of the shell around ``point`` (3,): the candidate vertices within
    ``SHELL * d_min`` of it (d_min: distance to the nearest one), k of them spread evenly by
    distance. For a limb joint that is the ring of skin around the joint, for the hip the skin
    around it. verts: (V, 3); candidates: (C,) vertex ids allowed (the visible surface)."""
    d = np.linalg.norm(verts[candidates] - point, axis=1)
    order = np.argsort(d)
    n_shell = max(int((d < SHELL * d[order[0]]).sum()), k)
    return candidates[order[np.linspace(0, n_shell - 1, k).round().astype(np.int64)]]


def shell_weights(point: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """(k,) affine weights over shell vertices (k, 3) reproducing ``point`` (3,) exactly, with the
    minimum-norm deviation from uniform weights:
    ``min ||w - 1/k||^2  s.t.  shell^T w = p, sum(w) = 1``  (closed form, A = [shell^T; 1])."""
    k = len(shell)
    A = np.concatenate([shell.T, np.ones((1, k))])  # (4, k)
    b = np.concatenate([point, [1.0]])
    u = np.full(k, 1.0 / k)
    return u + A.T @ np.linalg.lstsq(A @ A.T, b - A @ u, rcond=None)[0]


def interior_row(point: np.ndarray, verts: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shell ids (k,) and weights (k,) reproducing ``point`` on ``verts`` (see ``shell_ids``,
    ``shell_weights``)."""
    ids = shell_ids(point, verts, candidates, k)
    return ids, shell_weights(point, verts[ids])


def from_found(found, template, k: int = INTERIOR_K, others=()) -> TemplateLandmarks:
    """Convert landmarks found on the rest-pose template into vertex weights.

    found: a ``find.FoundLandmarks`` for ``template.rest_verts`` / ``template.faces``.
    others: optional ``(verts (V, 3), FoundLandmarks)`` of the same stage run on other body
    shapes of the template. A detector places a joint centre slightly differently relative to
    the skin on different bodies (MediaPipe's hips sit 1-3 cm lower on some adult shapes than on
    the mean one), so an interior landmark's weights are the average of the exact shell weights
    of every run that found it: one definition that is right on average over shapes instead of
    exactly right on the mean shape only. Surface landmarks keep the rest template's triangle.
    """
    verts, faces = template.rest_verts, template.faces
    surface_vids = np.flatnonzero(template.masks["surface"])
    rows_ids, rows_w = [], []
    for i, name in enumerate(found.names):
        if found.kinds[i] == "surface" and found.tri_ids[i] >= 0:
            ids, w = surface_row(faces[found.tri_ids[i]], found.bary[i], k)
        else:
            ids, w = interior_row(found.points[i], verts, surface_vids, k)
            runs = [w] + [shell_weights(f.point(name), v[ids]) for v, f in others if name in f.names]
            w = np.mean(runs, axis=0)
        rows_ids.append(ids)
        rows_w.append(w)
    return TemplateLandmarks(tuple(found.names), np.stack(rows_ids), np.stack(rows_w),
                             tuple(found.kinds), template.hash)


def cache_path(template) -> Path:
    """Cache file per template, method version and default stage settings (a change to either
    rebuilds the definition instead of reusing a stale one)."""
    import hashlib
    import json

    from ghum_pipe.landmarks.stage import LandmarkConfig
    from ghum_pipe.template import cache_dir

    settings = hashlib.sha1(json.dumps(LandmarkConfig().to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir() / f"template-landmarks-v{CACHE_VERSION}-{template.hash}-{settings}.npz"


def build_template_landmarks(template, config=None, n_shapes: int = CALIBRATION_SHAPES) -> TemplateLandmarks:
    """Run the landmark stage on the rest-pose template (and, for the interior landmarks, on
    ``n_shapes`` other adult shapes from the template's phenotype bank, see ``from_found``) and
    convert to vertex weights."""
    import torch

    from ghum_pipe.landmarks.find import find_landmarks
    from ghum_pipe.landmarks.stage import LandmarkConfig

    config = config or LandmarkConfig()
    found = find_landmarks(template.rest_verts, template.faces, None, config, source="template")
    others = []
    for row in range(min(n_shapes, len(template.phenotype_bank_betas))):
        betas = torch.as_tensor(template.phenotype_bank_betas[row : row + 1], dtype=torch.float32)
        with torch.no_grad():
            verts = template.pose(shape=betas)[0][0].double().numpy()
        try:  # face points are all surface points: the face close-ups are not needed here
            others.append((verts, find_landmarks(verts, template.faces, None, replace(config, face=False),
                                                 source=f"template shape {row}")))
        except LandmarkError as e:  # a shape the detector does not read adds nothing
            log.warning("template landmarks: %s", e)
    return from_found(found, template, others=others)


_LOADED: dict[str, TemplateLandmarks] = {}


def load_template_landmarks(template=None) -> TemplateLandmarks:
    """The template's landmarks: from this process's memory, the cache file, or built once
    (~30-60 s) and cached atomically. Concurrent processes (Dask workers starting together) wait
    for one build instead of each doing it."""
    if template is None:
        from ghum_pipe.template import load_template

        template = load_template()
    path = cache_path(template)
    if str(path) in _LOADED:
        return _LOADED[str(path)]
    if not path.exists():
        from ghum_pipe.template.template import build_lock

        with build_lock(path):
            if not path.exists():  # another process may have built it while we waited
                log.info("building template landmarks into %s (once)", path)
                build_template_landmarks(template).save(path)
    _LOADED[str(path)] = TemplateLandmarks.load(path)
    return _LOADED[str(path)]
