"""Anny's own phenotype model: phenotype -> rest mesh and joints, without the template's PCA.

The template's shape space (``ghum_pipe.template``) is a 32-coefficient PCA of Anny rest meshes
whose hidden phenotypes (cup size, firmness, ethnic mix) sit at Anny's default 0.5. Synthetic
people drawn from that basis can be described exactly by it. Here Anny's mesh is evaluated as
Anny does it: its phenotype values go through Anny's nonlinear interpolation
(``anny.models.phenotype.phenotype_blendshape_weights``: products of piecewise-linear weights
over the anchors of every phenotype) into coefficients of its 136 compact blendshapes, to which
the rest vertices and bone heads are linear. Those arrays are read from Anny once and cached in
``cache_dir()`` (~25 MB; building Anny takes ~15-90 s), so a process only imports Anny's small
interpolation function afterwards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ghum_pipe.template.template import atomic_save_npz, cache_dir

CACHE_VERSION = 1
# Every phenotype Anny's blendshapes vary with. The first six are Anny's exposed (and the
# template's) phenotypes; cup size, firmness and the three ethnic weights are hidden in Anny's
# default model (fixed at 0.5), so the template's basis never saw them.
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions", "cupsize", "firmness",
              "african", "asian", "caucasian")


def anny_shapes_cache_path():
    from importlib.metadata import version

    return cache_dir() / f"anny-shapes-v{CACHE_VERSION}-anny{version('anny')}.npz"


def build_anny_shape_arrays() -> dict:
    """Read what :class:`AnnyShapes` needs from an Anny model (the slow part, done once)."""
    import anny

    with torch.no_grad():
        model = anny.Anny(facial_actions="none")
        out = dict(
            template_vertices=model.template_vertices.double().numpy(),
            blendshapes=model.blendshapes.float().numpy(),
            template_bone_heads=model.template_bone_heads.double().numpy(),
            bone_heads_blendshapes=model.bone_heads_blendshapes.double().numpy(),
            mask=model.stacked_phenotype_blend_shapes_mask.double().numpy(),
            projection=model.phenotype_blendshape_projection.double().numpy(),
            extrapolate=np.array(bool(model.extrapolate_phenotypes)),
        )
        for k in ("age", "gender", "muscle", "weight", "height", "proportions", "cupsize", "firmness"):
            out[f"anchor_{k}"] = model.anchors[k].double().numpy()
    return out


@dataclass(frozen=True, eq=False)
class AnnyShapes:
    """Anny's rest mesh as a function of its phenotypes (metres, +Z up, the template's vertex
    order and frame)."""

    arrays: dict

    @functools.cached_property
    def _tensors(self) -> dict:
        return {k: torch.as_tensor(v) for k, v in self.arrays.items()}

    def coefficients(self, phenotype: np.ndarray) -> torch.Tensor:
        """(B, 11) phenotypes in [0, 1] (order :data:`PHENOTYPES`) -> (B, 136) blendshape weights."""
        from anny.models.phenotype import phenotype_blendshape_weights

        a = self._tensors
        anchors = {k[len("anchor_"):]: v for k, v in a.items() if k.startswith("anchor_")}
        w = phenotype_blendshape_weights(torch.as_tensor(np.atleast_2d(phenotype), dtype=torch.float64),
                                         list(PHENOTYPES), anchors, a["mask"], bool(a["extrapolate"]))
        return w @ a["projection"]

    def rest(self, phenotype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 11) phenotypes -> rest vertices (B, V, 3) and rest joints (B, J, 3), float64 metres."""
        a = self._tensors
        c = self.coefficients(phenotype)
        verts = a["template_vertices"] + torch.einsum("bk,kvc->bvc", c.float(), a["blendshapes"]).double()
        joints = a["template_bone_heads"] + torch.einsum("bk,kjc->bjc", c, a["bone_heads_blendshapes"])
        return verts.numpy(), joints.numpy()


@functools.lru_cache(maxsize=1)
def load_anny_shapes() -> AnnyShapes:
    """The cached arrays (built from Anny on first use, atomically, one process at a time)."""
    from filelock import FileLock

    path = anny_shapes_cache_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_suffix(".lock"))):  # one builder; the others wait and read
            if not path.is_file():
                atomic_save_npz(path, **build_anny_shape_arrays())
    with np.load(path) as z:
        return AnnyShapes({k: z[k] for k in z.files})
