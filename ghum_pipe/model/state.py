"""What training carries between its steps, and the small helpers every step uses on it.

Shared by ``train.py`` (the alternating steps) and ``joints.py`` (learning C), which imports
nothing from ``train.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainState:
    """Everything training carries between steps (all CPU tensors, picklable for Dask).

    model: the model's state_dict; pose (N, J, 3), translation (N, 3) per scan; rest (S, V, 3)
    per subject; expression (N, Vf, 3) per scan on the face vertices; history: loss log."""

    model: dict
    pose: torch.Tensor
    translation: torch.Tensor
    rest: torch.Tensor
    expression: torch.Tensor
    history: list


def model_rotmats(pose: torch.Tensor) -> torch.Tensor:
    """(N, J, 3) axis-angle or (N, J, 3, 3) -> (N, J, 3, 3) rotation matrices."""
    from ghum_pipe.template.lbs import as_rotmats

    return as_rotmats(pose)


def expand_face(model, face: torch.Tensor) -> torch.Tensor:
    """Face-vertex offsets (N, Vf, 3) -> offsets on all of ``model``'s vertices (N, V, 3)."""
    out = torch.zeros(face.shape[0], model.n_verts, 3)
    return out.index_add(1, model.face_index, face)


def psd_all(model, pose: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The model's pose-space deformation (N, V, 3) metres for poses (N, J, 3), in batches."""
    return torch.cat([model.psd(model_rotmats(pose[lo:lo + batch])) for lo in range(0, len(pose), batch)])
