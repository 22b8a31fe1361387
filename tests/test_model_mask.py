"""The filter F from real registrations: ``params.npz['vertex_mask']`` (written by the register
stage: vertices with scan data within 1 cm) keeps vertices without data out of training."""

from __future__ import annotations

import numpy as np
import torch

from ghum_pipe.model import TrainConfig, ghuml_config


def _rewrite(work, drop: float, garbage_m: float, seed: int, use_mask: bool = True) -> None:
    """Turn the synthetic registrations into what the register stage writes: ``vertex_mask``
    instead of ``mask``, a fraction ``drop`` of the surface without data, and (``garbage_m``)
    those vertices displaced by random offsets, as a registration with holes drifts there."""
    import trimesh

    rng = np.random.default_rng(seed)
    for d in sorted((work / "scans").iterdir()):
        with np.load(d / "params.npz") as z:
            params = {k: z[k] for k in z.files}
        mask = params.pop("mask").astype(bool)
        hole = rng.uniform(size=mask.shape) < drop
        mesh = trimesh.load(d / "registration.ply", process=False)
        verts = np.asarray(mesh.vertices).copy()
        verts[hole] += rng.normal(scale=garbage_m, size=(int(hole.sum()), 3))
        trimesh.Trimesh(verts, mesh.faces, process=False).export(d / "registration.ply")
        if use_mask:
            params["vertex_mask"] = mask & ~hole
        np.savez(d / "params.npz", **params)


def _train(work):
    from ghum_pipe.model.data import load_registrations
    from ghum_pipe.model.train import train_inline

    data = load_registrations(str(work), "low")
    cfg = TrainConfig(model=ghuml_config(shape_latent=2, hidden=16), rounds=1, pose_iters=3, inner=1, vae_steps=5,
                      joint_iters=20)
    torch.manual_seed(0)  # the VAEs' MLPs start random
    model, state, _ = train_inline(data, cfg)
    return data, model, state


def test_vertex_mask_keeps_garbage_out_of_training(tmp_path):
    """3 subjects x 2 poses; 10 % of each registration's vertices have no scan data and carry
    5 cm garbage. With ``vertex_mask`` the trained model and rest shapes equal those trained on
    the same registrations without the garbage (same mask; GHUML, so this also checks that a
    low-res vertex touching a hole is dropped); without the mask the garbage moves the rest
    shapes by millimetres."""
    import shutil

    from ghum_pipe.synth.registrations import make_registrations

    torch.manual_seed(0)
    clean = tmp_path / "clean"
    make_registrations(clean, 3, seed=0, poses_per_subject=2, closeups=False, population="template")
    dirty, unmasked = tmp_path / "dirty", tmp_path / "unmasked"
    shutil.copytree(clean, dirty)
    shutil.copytree(clean, unmasked)
    _rewrite(clean, 0.1, 0.0, seed=1)
    _rewrite(dirty, 0.1, 0.05, seed=1)
    _rewrite(unmasked, 0.1, 0.05, seed=1, use_mask=False)
    d_clean, m_clean, s_clean = _train(clean)
    d_dirty, m_dirty, s_dirty = _train(dirty)
    assert d_dirty.mask.mean() < 0.95 and np.array_equal(d_clean.mask, d_dirty.mask)  # vertex_mask was read
    assert np.abs(d_dirty.verts - d_clean.verts).max() > 0.05  # the garbage is there
    rest_diff = float((s_dirty.rest - s_clean.rest).norm(dim=-1).max())
    diffs = {k: float((a - m_dirty.state_dict()[k]).abs().max()) for k, a in m_clean.state_dict().items()
             if a.is_floating_point()}
    param_diff = max(diffs.values())
    print("masked garbage: rest shapes differ by", rest_diff, "m; parameters by", param_diff)
    assert rest_diff < 1e-5 and param_diff < 1e-4
    _, _, s_unmasked = _train(unmasked)
    moved_mm = float((s_unmasked.rest - s_clean.rest).norm(dim=-1).mean()) * 1000
    print("unmasked garbage moves rest shapes by", moved_mm, "mm")
    assert moved_mm > 1.0
