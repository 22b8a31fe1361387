"""A trained GHUM/GHUML's mean body as an avatar (``ghum-pipe export --model M --out DIR``).

The mean rest shape, the learned joint centres C(mean) and the learned skinning omega go into
the same glTF layout as a registration's avatar (rest pose, the model template's UVs, the
template's 52 facial actions as morph targets at weight 0). What glTF cannot hold is left out
and said so in ``extras``: the pose-space deformation (PSD) and the shape/expression VAEs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ghum_pipe.errors import ExportError, GhumPipeError
from ghum_pipe.export.rig import Avatar, build_avatar
from ghum_pipe.export.files import sidecar
from ghum_pipe.export.scan import write_avatar

MODEL_KINDS = ("ghum", "ghuml")


def model_dirs(model: Path) -> list[Path]:
    """``M`` with ghum/ and/or ghuml/ inside, or one of those folders itself."""
    if (model / "config.json").exists():
        return [model]
    dirs = [model / k for k in MODEL_KINDS if (model / k / "config.json").exists()]
    if not dirs:
        raise ExportError("no trained model here (no config.json, nor ghum/ or ghuml/ with one)", model,
                          "Pass the folder `ghum-pipe train --out` wrote")
    return dirs


def model_avatar(m, name: str) -> Avatar:
    """The avatar of a loaded :class:`ghum_pipe.model.GHUM`'s mean body (no PSD, no expression)."""
    from ghum_pipe.model.ghum import template_for

    t = template_for(m.config.resolution, m.config.top_k)
    with torch.no_grad():
        rest = m.rest_shape(None).double()
        joints = m.joint_regressor(rest.float()).double()[0].numpy()
        weights = m.skin_weights.double().numpy()
    extras = {"ghum_pipe": {"model": name, "kind": m.meta.get("kind", ""), "template_hash": m.template_hash,
                            "not_exported": "pose-space deformation (PSD), shape and expression VAEs",
                            "morph_targets": "the template's 52 facial actions, not the model's expression space"},
              "gltf_to_scan_file": None}
    return build_avatar(t, np.zeros(0), np.zeros((t.n_joints, 3)), None, None, name=name, extras=extras,
                        skin_indices=m.skin_indices.numpy(), skin_weights=weights,
                        rest_verts=rest[0].numpy(), rest_joints=joints)


def export_model(model: str | Path, out: str | Path, template=None) -> list[Path]:
    """Write OUT/<ghum|ghuml>/avatar.glb, .obj/.mtl, registration.json; returns the folders.

    ``template`` is unused (each model loads its own) and kept for a uniform call."""
    from ghum_pipe.model import GHUM

    out = Path(out)
    done = []
    for d in model_dirs(Path(model)):
        try:
            m = GHUM.load(d)
        except GhumPipeError as e:
            raise ExportError(e.message, e.path, e.hint) from None
        a = model_avatar(m, d.name)
        meta = sidecar(a, np.zeros((len(a.joint_names), 3)), np.zeros(0), 1.0, np.zeros(3))
        write_avatar(a, out / d.name, None, meta)
        done.append(out / d.name)
    return done
