"""Linear blend skinning as small, pure, batched torch functions (after smplx/lbs.py).

Conventions: joint frames are world-aligned at rest (as in SMPL and GHUM), so a joint's
rotation is expressed in the world axes of the rest pose; joint 0 is the root and its
rotation is the global orientation about the root joint; ``parents[j] < j`` for j > 0.
All lengths are metres.
"""

from __future__ import annotations

import torch


def batch_rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N, 3) -> rotation matrices (N, 3, 3); exact and differentiable at 0."""
    angle = torch.linalg.norm(rot_vecs + 1e-12, dim=-1, keepdim=True)  # (N, 1)
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)
    return eye + sin * K + (1 - cos) * (K @ K)


def as_rotmats(pose: torch.Tensor) -> torch.Tensor:
    """Pose as (B, J, 3) axis-angle or (B, J, 3, 3) rotations -> (B, J, 3, 3)."""
    if pose.shape[-1] == 3 and pose.dim() == 3:
        B, J, _ = pose.shape
        return batch_rodrigues(pose.reshape(-1, 3)).reshape(B, J, 3, 3)
    if pose.dim() == 4 and pose.shape[-2:] == (3, 3):
        return pose
    raise ValueError(f"pose must be (B, J, 3) axis-angle or (B, J, 3, 3) rotations, got {tuple(pose.shape)}")


def chain_levels(parents: torch.Tensor) -> list[torch.Tensor]:
    """Group joints by depth in the tree, so forward kinematics loops over depth, not joints."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[int(parents[j])] + 1
    depth_t = torch.as_tensor(depth)
    return [torch.nonzero(depth_t == d).flatten() for d in range(max(depth) + 1)]


def batch_rigid_transform(
    rotmats: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor, levels: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics.

    Args:
        rotmats: (B, J, 3, 3) local rotations (world-aligned rest frames).
        joints: (B, J, 3) rest joint centres.
        parents: (J,) long, parents[0] = -1.
    Returns:
        posed_joints: (B, J, 3);
        rel_transforms: (B, J, 4, 4) the rest-to-posed transform of each joint, i.e. the
        world transform G_j composed with the inverse rest transform (translation by -J_j).
    """
    B, J = joints.shape[:2]
    levels = chain_levels(parents) if levels is None else levels
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(B, J, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rotmats
    local[..., :3, 3] = rel_joints
    local[..., 3, 3] = 1.0
    world_t = local
    for level in levels[1:]:
        world_t = world_t.clone()  # out-of-place per level keeps autograd happy
        world_t[:, level] = world_t[:, parents[level]] @ local[:, level]
    posed_joints = world_t[..., :3, 3]
    # G_j @ [I, -J_j]: translation becomes t_j - R_j J_j
    rel = world_t.clone()
    rel[..., :3, 3] = world_t[..., :3, 3] - torch.einsum("bjik,bjk->bji", world_t[..., :3, :3], joints)
    return posed_joints, rel


def skin(
    verts: torch.Tensor, transforms: torch.Tensor, skin_indices: torch.Tensor, skin_weights: torch.Tensor
) -> torch.Tensor:
    """Sparse LBS: verts (B, V, 3), transforms (B, J, 4, 4), indices/weights (V, I) -> (B, V, 3)."""
    # gather + elementwise products: ~1.5-2x faster on CPU than the equivalent einsums, which
    # become batches of tiny matrix products (forward + backward, 5k-14k vertices)
    B, J = transforms.shape[:2]
    top = transforms[:, :, :3, :].reshape(B, J, 12)[:, skin_indices]  # (B, V, I, 12)
    A = (skin_weights.to(transforms.dtype)[None, :, :, None] * top).sum(2).reshape(B, -1, 3, 4)  # (B, V, 3, 4)
    return (A[..., :3] * verts[:, :, None, :]).sum(-1) + A[..., 3]


def lbs(
    rest_verts: torch.Tensor,
    rest_joints: torch.Tensor,
    rotmats: torch.Tensor,
    parents: torch.Tensor,
    skin_indices: torch.Tensor,
    skin_weights: torch.Tensor,
    levels: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose shaped rest geometry.

    Args:
        rest_verts: (B, V, 3) rest-pose vertices (already shaped and with expression).
        rest_joints: (B, J, 3) rest joint centres.
        rotmats: (B, J, 3, 3) local joint rotations.
    Returns:
        verts (B, V, 3) and joints (B, J, 3), posed.
    """
    posed_joints, rel = batch_rigid_transform(rotmats, rest_joints, parents, levels)
    return skin(rest_verts, rel, skin_indices, skin_weights), posed_joints
