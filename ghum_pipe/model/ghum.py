"""GHUM / GHUML: the runtime model (Xu et al. 2020, Eq. 1)

    X(theta, beta) = M( X~(beta_b) + dX~_f(beta_f) + dX~(theta), theta, c = C(X~(beta_b)), omega )

with X~ the shape VAE decoder, dX~_f the expression VAE decoder (face vertices only), dX~(theta)
the sparse pose-space deformation, C the joint-centre regressor, omega the learned skinning
weights and M linear blend skinning (``ghum_pipe.template.lbs``, world-aligned joint frames,
rest-to-posed transforms from the inverse rest transforms).

>>> m = GHUM.load("model/ghum")
>>> verts, joints = m(pose, shape_latent, expression_latent)   # (B, V, 3), (B, J, 3) metres
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ghum_pipe.errors import ModelError
from ghum_pipe.io.atomic import atomic_path, write_json
from ghum_pipe.model.config import ModelConfig
from ghum_pipe.model.networks import VAE, JointRegressor, SparsePSD, psd_pairs, skinning_weights
from ghum_pipe.template.lbs import as_rotmats, batch_rigid_transform, chain_levels

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def template_for(resolution: str, top_k: int = 4):
    """The template a model of ``resolution`` (``full`` | ``low``) is built on."""
    from ghum_pipe.template import load_template

    if resolution == "full":
        return load_template(top_k)
    if resolution == "low":
        from ghum_pipe.template.lowres import load_lowres_template

        return load_lowres_template(top_k)
    raise ModelError(f"unknown resolution {resolution!r}", hint="Use 'full' (GHUM) or 'low' (GHUML)")


def blend_skin(verts: torch.Tensor, transforms: torch.Tensor, skin_indices: torch.Tensor,
               skin_weights: torch.Tensor) -> torch.Tensor:
    """LBS, same result as ``ghum_pipe.template.lbs.skin`` (verts (B, V, 3), transforms
    (B, J, 4, 4), indices/weights (V, I) -> (B, V, 3)) but ~2.4x faster forward+backward on CPU:
    it blends only the 3x4 part and uses broadcast products instead of batched 4x4 matmuls,
    which matters because training calls it thousands of times."""
    B, J = transforms.shape[:2]
    T34 = transforms[:, :, :3, :].reshape(B, J, 12)
    A = (T34[:, skin_indices] * skin_weights[None, :, :, None].to(T34.dtype)).sum(2).reshape(B, -1, 3, 4)
    return (A[..., :3] * verts[:, :, None, :]).sum(-1) + A[..., 3]


def blend_skin_dense(verts: torch.Tensor, transforms: torch.Tensor, skin_indices: torch.Tensor,
                     skin_weights: torch.Tensor) -> torch.Tensor:
    """:func:`blend_skin` with the weights scattered into a dense (V, J) matrix and the blended
    transforms as one matrix product: the same result to float rounding, faster for batches of
    several scans, slower for one (``bench/blend_skin.py``, forward + backward with the weights'
    gradient: 2.3x faster at 32 scans x 3,008 vertices, 2.1x at 8 x 13,718, 0.76x at 1 scan).
    The gather's backward is a serial scatter-add; the product's is two more products. For
    callers whose batches are always large (C's step: 1.5x); the others keep :func:`blend_skin`,
    so each call site rounds the same way whatever the batch size."""
    B, J = transforms.shape[:2]
    T34 = transforms[:, :, :3, :].reshape(B, J, 12)
    W = torch.zeros(skin_indices.shape[0], J, dtype=T34.dtype, device=T34.device)
    A = torch.matmul(W.scatter_add(1, skin_indices, skin_weights.to(T34.dtype)), T34).reshape(B, -1, 3, 4)
    return (A[..., :3] * verts[:, :, None, :]).sum(-1) + A[..., 3]


class GHUM(nn.Module):
    """A GHUM (full template) or GHUML (low-res template) model; batched, differentiable.

    Build an untrained model with ``GHUM(ModelConfig(...))`` (it starts as the template: mean
    shape, template skinning and joints, zero PSD), or load a trained one with :meth:`load`.
    """

    def __init__(self, config: ModelConfig, template=None):
        super().__init__()
        t = template if template is not None else template_for(config.resolution, config.top_k)
        self.config = config
        self.template_hash = t.hash
        self.faces = np.asarray(t.faces)
        self.joint_names = t.joint_names
        V, J = t.n_verts, t.n_joints
        self.n_verts, self.n_joints = V, J
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("mean_rest", f32(t.rest_verts))
        self.register_buffer("parents", torch.as_tensor(t.parents))
        self.register_buffer("skin_indices", torch.as_tensor(t.skin_indices))
        self.register_buffer("skin_allowed", torch.as_tensor(t.skin_weights > 0))
        face = np.nonzero(t.masks["face"])[0]
        self.register_buffer("face_index", torch.as_tensor(face))
        self.levels = chain_levels(torch.as_tensor(t.parents))
        self.shape_vae = VAE(V * 3, config.shape_latent, config.hidden)
        self.expression_vae = VAE(len(face) * 3, config.expression_latent, config.hidden)
        pairs = psd_pairs(t.rest_verts, t.rest_joints, t.parents, t.skin_indices, t.skin_weights, config.psd_radius_m)
        self.psd = SparsePSD(pairs, V)
        self.joint_regressor = JointRegressor(t.rest_verts, t.rest_joints, t.shape_basis, t.shape_joint_basis)
        self.skin_logits = nn.Parameter(torch.log(f32(t.skin_weights).clamp_min(1e-6)))
        self.register_buffer("start_skin_weights", f32(t.skin_weights))  # omega's initial value

    # ------------------------------------------------------------------ pieces of Eq. 1
    @property
    def skin_weights(self) -> torch.Tensor:
        """omega (V, I), non-negative, rows sum to 1, over ``skin_indices``."""
        return skinning_weights(self.skin_logits, self.skin_allowed)

    def rest_shape(self, shape_latent: torch.Tensor | None, batch: int = 1) -> torch.Tensor:
        """X~(beta_b): (B, Ls) -> (B, V, 3) metres; None = the mean shape."""
        if shape_latent is None:
            return self.mean_rest.expand(batch, -1, -1)
        return self.mean_rest + self.shape_vae.decode(shape_latent).reshape(-1, self.n_verts, 3)

    def expression_offsets(self, expression_latent: torch.Tensor | None, batch: int = 1) -> torch.Tensor:
        """dX~_f(beta_f): (B, Lf) -> (B, V, 3) offsets, zero outside the face."""
        out = torch.zeros(batch, self.n_verts, 3, device=self.mean_rest.device)
        if expression_latent is None:
            return out
        face = self.expression_vae.decode(expression_latent).reshape(batch, -1, 3)
        return out.index_add(1, self.face_index, face)

    def articulate(self, rest: torch.Tensor, pose: torch.Tensor, expression: torch.Tensor | None = None,
                   translation: torch.Tensor | None = None, use_psd: bool = True,
                   skin_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """M(rest + expression + D(theta), theta, C(rest), omega) for explicit rest shapes.

        Args:
            rest: (B, V, 3) rest shapes X~; expression: (B, V, 3) offsets or None;
            pose: (B, J, 3) axis-angle or (B, J, 3, 3); translation: (B, 3) or None.
        Returns:
            verts (B, V, 3), joints (B, J, 3) metres.
        """
        rotmats = as_rotmats(pose)
        joints = self.joint_regressor(rest)
        x = rest if expression is None else rest + expression
        if use_psd:
            x = x + self.psd(rotmats)
        w = self.skin_weights if skin_weights is None else skin_weights
        posed_joints, rel = batch_rigid_transform(rotmats, joints, self.parents, self.levels)
        verts = blend_skin(x, rel, self.skin_indices, w)
        if translation is not None:
            verts, posed_joints = verts + translation[:, None], posed_joints + translation[:, None]
        return verts, posed_joints

    def forward(self, pose: torch.Tensor, shape_latent: torch.Tensor | None = None,
                expression_latent: torch.Tensor | None = None, translation: torch.Tensor | None = None):
        """Posed model: pose (B, J, 3)|(B, J, 3, 3), shape_latent (B, Ls), expression_latent (B, Lf)
        -> verts (B, V, 3), joints (B, J, 3) metres."""
        B = pose.shape[0]
        rest = self.rest_shape(shape_latent, B)
        return self.articulate(rest, pose, self.expression_offsets(expression_latent, B), translation)

    @torch.no_grad()
    def unpose(self, verts: torch.Tensor, rest: torch.Tensor, pose: torch.Tensor,
               translation: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse skinning: posed verts (B, V, 3) -> rest-space verts (B, V, 3), using each
        vertex's blended transform (exact inverse of LBS for a given pose, joints and omega)."""
        rotmats = as_rotmats(pose)
        joints = self.joint_regressor(rest)
        _, rel = batch_rigid_transform(rotmats, joints, self.parents, self.levels)
        A = torch.einsum("vi,bvimn->bvmn", self.skin_weights, rel[:, self.skin_indices])
        p = verts if translation is None else verts - translation[:, None]
        return torch.linalg.solve(A[..., :3, :3], (p - A[..., :3, 3])[..., None])[..., 0]

    # ------------------------------------------------------------------ generation and fitting
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, pose: torch.Tensor | None = None, expression: bool = True):
        """n random bodies: beta ~ N(0, I) through the decoders; rest pose unless ``pose`` (n, J, 3).
        Returns verts (n, V, 3), joints (n, J, 3)."""
        g = torch.Generator().manual_seed(seed)
        zb = torch.randn(n, self.config.shape_latent, generator=g)
        zf = torch.randn(n, self.config.expression_latent, generator=g) if expression else None
        pose = torch.zeros(n, self.n_joints, 3) if pose is None else pose
        return self(pose, zb, zf)

    def fit(self, mesh_verts, mask=None, init_pose=None, init_translation=None, iters: int = 100,
            use_psd: bool = True):
        """Fit pose, translation and latents to registrations (same topology); see ``fitting.fit_model``."""
        from ghum_pipe.model.fitting import fit_model

        return fit_model(self, mesh_verts, mask, init_pose, init_translation, iters, use_psd)

    # ------------------------------------------------------------------ persistence
    def save(self, model_dir: str | Path, extra: dict | None = None) -> None:
        """``model_dir/model.safetensors`` (all tensors) + ``config.json`` (config, template hash)."""
        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(model_dir / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        write_json(model_dir / CONFIG_FILE, dict(
            format="ghum-pipe-model/1", kind="GHUM" if self.config.resolution == "full" else "GHUML",
            config=self.config.to_dict(), template_hash=self.template_hash, n_verts=self.n_verts,
            n_joints=self.n_joints, **(extra or {})))

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu", template=None) -> "GHUM":
        """Load a saved model; ``ModelError`` if files are missing or the template differs."""
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        cfg_path = model_dir / CONFIG_FILE
        if not cfg_path.is_file() or not (model_dir / WEIGHTS_FILE).is_file():
            raise ModelError(f"no {CONFIG_FILE} + {WEIGHTS_FILE} here", path=model_dir,
                             hint="Pass the folder 'ghum-pipe train --out' wrote (e.g. MODEL_DIR/ghum)")
        try:
            meta = json.loads(cfg_path.read_text())
            config = ModelConfig.from_dict(meta["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"unreadable model config ({e})", path=cfg_path, hint="Retrain the model") from None
        t = template if template is not None else template_for(config.resolution, config.top_k)
        if meta.get("template_hash") != t.hash:
            raise ModelError(
                f"model was trained on template {meta.get('template_hash')}, this install has {t.hash}",
                path=cfg_path, hint="Retrain with 'ghum-pipe train' on this template, or install the matching one")
        model = cls(config, t)
        try:
            model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
        except (RuntimeError, OSError) as e:
            raise ModelError(f"weights do not match the config ({str(e).splitlines()[0]})",
                             path=model_dir / WEIGHTS_FILE, hint="Retrain the model") from None
        model.meta = meta
        return model.to(device).eval()
