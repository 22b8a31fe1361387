"""Evaluation of trained GHUM/GHUML models on held-out registrations (``ghum-pipe evaluate``).

Held-out data: the subjects of ``WORK`` the models did not train on (the split is recorded in
the model's config.json; a different work dir is all held out). Measured:

- fit error: mean per-vertex Euclidean error (mm, F-masked, at full resolution: GHUML's fit is
  upsampled with the fixed low->full map) after fitting pose + latents, for GHUM, GHUML, PCA
  shape baselines at the same latent sizes, each model with the template's 32 shape
  coefficients as its shape space, and the template's own parameter space; with ground truth
  (``--truth``: synthetic scans) also the fitted model's error to the true mesh (template
  surface vertices, within a close-up's region), which registration errors cannot hide;
- PSD: the same fit with D switched off, and (synthetic data) the fraction of the planted
  corrective D removes on the held-out poses, over the vertices where the planted field is
  >= 20 % of its peak: ``1 - mean|D(theta) - dX(theta)| / mean|dX(theta)|``;
- skinning (synthetic): mean vertex displacement from the planted skinning on held-out poses
  and true rest shapes, learned omega vs the template's starting weights;
- joints (synthetic): C(true rest shape) vs the true rest joints of held-out subjects, over the
  joints with a planted centre shift and over all joints, with the template's own
  shape->joint map as the peer;
- VAE vs PCA: held-out shape reconstruction error over latent sizes;
- speed: forward time at batch 1 and 64 (``bench/model.py`` also prints it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.errors import ModelError
from ghum_pipe.model.baselines import pca_projection_error_mm
from ghum_pipe.model.data import RegistrationSet
from ghum_pipe.model.ghum import GHUM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """fit_iters: L-BFGS iterations of each fit; max_scans: cap on held-out scans (None = all);
    dims: latent sizes of the VAE-vs-PCA curve; vae_steps: training steps per curve VAE;
    batch: scans fitted together. 1: one L-BFGS per scan. A batch shares one line search and
    curvature history, so the stiffest scan sets every scan's steps: on 4 held-out scans the
    template's fit ended 3.6-11.5 mm from the truth batched and 2.8-8.8 mm one by one, in the
    same time (docs/model.md)."""

    fit_iters: int = 60
    max_scans: int | None = 12
    dims: tuple[int, ...] = (4, 8, 16, 32, 64)
    vae_steps: int = 400
    batch: int = 1


def model_dirs(model_root: Path) -> dict[str, Path]:
    """``{"ghum": dir, "ghuml": dir}`` under a train --out folder, or ``{name: dir}`` for one model."""
    model_root = Path(model_root)
    if (model_root / "config.json").is_file():
        return {model_root.name: model_root}
    found = {p.parent.name: p.parent for p in sorted(model_root.glob("*/config.json"))}
    if not found:
        raise ModelError("no trained model here (no config.json)", path=model_root,
                         hint="Pass the --out folder of 'ghum-pipe train'")
    return found


def heldout(data: RegistrationSet, meta: dict, work: Path) -> RegistrationSet:
    """The scans of subjects the model did not train on."""
    train = set(meta.get("training", {}).get("train_subjects", []))
    keep = np.array([data.subjects[s] not in train for s in data.subject_index])
    if not keep.any():
        raise ModelError("every subject here was used for training", path=work,
                         hint="Evaluate on another work dir, or train with a holdout fraction > 0")
    return data.select(keep)


def cap(data: RegistrationSet, n: int | None) -> RegistrationSet:
    """At most n scans, spread evenly over the (sorted) scans, hence over subjects."""
    return data if n is None or len(data) <= n else data.select(np.linspace(0, len(data) - 1, n).round().astype(int))


def fit_errors(model: GHUM, data: RegistrationSet, cfg: EvalConfig, use_psd: bool = True,
               upsample=None, full: RegistrationSet | None = None, truth=None) -> dict:
    """Fit each registration; returns per-scan mean error (mm) and per-vertex mean error (m)
    to the registration, and with ``truth`` (``truth.ScanTruth`` of the full-resolution scans)
    the mean error to the true mesh (``truth_mm``, per scan ``truth_per_scan_mm``)."""
    per_scan, vsum, vcnt, per_truth = [], 0.0, 0.0, []
    for lo in range(0, len(data), cfg.batch):
        idx = np.arange(lo, min(len(data), lo + cfg.batch))
        init = torch.as_tensor(data.pose[idx]) if data.has_pose[idx].all() else None
        fit = model.fit(data.verts[idx], data.mask[idx], init_pose=init, iters=cfg.fit_iters, use_psd=use_psd)
        if upsample is not None:  # GHUML: measure at full resolution against the full registration
            verts = upsample(fit.verts.numpy())
            err = np.linalg.norm(verts - full.verts[idx], axis=-1)
            mask = full.mask[idx]
        else:
            verts = fit.verts.numpy()
            err, mask = fit.vertex_error_m.numpy(), data.mask[idx]
        if truth is not None:
            terr = np.linalg.norm(verts - truth.verts[idx], axis=-1)
            per_truth += list((terr * truth.mask[idx]).sum(1) / truth.mask[idx].sum(1) * 1000)
        per_scan += list((err * mask).sum(1) / mask.sum(1) * 1000)
        vsum = vsum + (err * mask).sum(0)
        vcnt = vcnt + mask.sum(0)
    out = dict(mean_mm=float(np.mean(per_scan)), per_scan_mm=per_scan, per_vertex_m=vsum / np.maximum(vcnt, 1))
    if truth is not None:
        out.update(truth_mm=float(np.mean(per_truth)), truth_per_scan_mm=per_truth)
    return out


@torch.no_grad()
def psd_removed_fraction(model: GHUM, corrective: dict, poses: np.ndarray, to_model=None,
                         own_joints: bool = False) -> float:
    """Fraction of the planted corrective that D removes on ``poses`` (N, J, 3); see module doc.

    ``own_joints``: compare only D's response to the corrective's own joints (elbows, hips; the
    other joints' rotations set to rest). The full D also holds what compensates C's residual
    joint-centre error (a shoulder centre 5 mm off moves the whole arm by (R - I) d, which the
    shoulder's D absorbs over the biceps), which is right for the posed model but is not the
    planted elbow/hip corrective."""
    from ghum_pipe.model.truth import corrective_offsets
    from ghum_pipe.template.lbs import batch_rodrigues

    rot = batch_rodrigues(torch.as_tensor(poses, dtype=torch.float64).reshape(-1, 3)).reshape(len(poses), -1, 3, 3)
    true = np.stack([corrective_offsets(corrective["fields"], corrective["joints"], r.numpy()) for r in rot])
    fn = np.linalg.norm(corrective["fields"], axis=-1)
    if to_model is not None:  # GHUML: compare on the low-res vertices
        true, fn = to_model(true), to_model(fn[..., None])[..., 0]
    support = (fn >= 0.2 * fn.max(1, keepdims=True)).any(0)
    if own_joints:
        keep = torch.zeros(rot.shape[1], dtype=torch.bool)
        keep[torch.as_tensor(np.unique(corrective["joints"]))] = True
        rot = torch.where(keep[None, :, None, None], rot, torch.eye(3, dtype=rot.dtype))
    pred = model.psd(rot.float()).numpy()
    err = np.linalg.norm(pred - true, axis=-1)[:, support].mean()
    return float(1.0 - err / np.linalg.norm(true, axis=-1)[:, support].mean())


@torch.no_grad()
def skinning_displacement_mm(model: GHUM, true_w: np.ndarray, rest: np.ndarray, poses: np.ndarray) -> dict:
    """Mean posed-vertex distance (mm) to the planted skinning, learned vs starting weights."""
    from ghum_pipe.model.ghum import blend_skin
    from ghum_pipe.template.lbs import as_rotmats, batch_rigid_transform

    rest_t = torch.as_tensor(rest, dtype=torch.float32)
    rot = as_rotmats(torch.as_tensor(poses, dtype=torch.float32))
    joints = model.joint_regressor(rest_t)
    _, rel = batch_rigid_transform(rot, joints, model.parents, model.levels)
    ref = blend_skin(rest_t, rel, model.skin_indices, torch.as_tensor(true_w, dtype=torch.float32))
    out = {}
    for name, w in (("learned", model.skin_weights), ("start", model.start_skin_weights)):
        v = blend_skin(rest_t, rel, model.skin_indices, w)
        out[name] = float((v - ref).norm(dim=-1).mean() * 1000)
    return out


def speed_ms(model: GHUM, batch: int, repeats: int = 5) -> float:
    """Median forward time (ms) of ``model(pose, shape, expression)`` at ``batch``, no grad."""
    pose = torch.randn(batch, model.n_joints, 3) * 0.2
    zb, zf = torch.randn(batch, model.config.shape_latent), torch.randn(batch, model.config.expression_latent)
    times = []
    with torch.no_grad():
        model(pose, zb, zf)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(pose, zb, zf)
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def vae_vs_pca(train_shapes: torch.Tensor, test_shapes: torch.Tensor, dims, steps: int, hidden: int = 256,
               template_mean: torch.Tensor | None = None, template_basis: torch.Tensor | None = None,
               prior_subjects: float = 32.0) -> list:
    """Held-out reconstruction error (mm) of shape VAEs and PCA at each latent size (rest
    shapes (S, V, 3) / (M, V, 3) metres). With the template's mean (V, 3) and shape basis
    (K, V, 3): also the template's own space (its best projection, ``template_mm``), PCA on
    the template's prior (``VAE.init_pca`` with ``prior_subjects``; the linear path the trained
    models start from: ``prior_pca_mm``) and the VAE trained from it as ``train`` does
    (``prior_vae_mm``)."""
    from ghum_pipe.model.networks import VAE
    from ghum_pipe.model.train import fit_vae

    mean = train_shapes.mean(0)
    x = (train_shapes - mean).reshape(train_shapes.shape[0], -1)
    y = (test_shapes - mean).reshape(test_shapes.shape[0], -1)
    tpl = None
    if template_basis is not None:
        from ghum_pipe.model.baselines import template_projection_error_mm

        tpl = template_projection_error_mm(template_basis, test_shapes - template_mean)
    rows = []
    for d in dims:
        torch.manual_seed(d)  # its MLPs start random
        vae = VAE(x.shape[1], d, hidden)
        fit_vae(vae, x, steps, 1e-3, seed=d)
        with torch.no_grad():
            rec = vae.decode(vae.encode(y)[0])
        row = dict(dim=d, vae_mm=float((rec - y).reshape(len(y), -1, 3).norm(dim=-1).mean() * 1000),
                   pca_mm=pca_projection_error_mm(train_shapes, test_shapes, d),
                   pca_components_available=min(d, train_shapes.shape[0] - 1))
        if tpl is not None:
            prior = VAE(x.shape[1], d, hidden)
            xt = (train_shapes - template_mean).reshape(train_shapes.shape[0], -1)
            yt = (test_shapes - template_mean).reshape(test_shapes.shape[0], -1)
            pb = template_basis.reshape(template_basis.shape[0], -1)
            prior.init_pca(xt, pb, prior_subjects)
            with torch.no_grad():
                rec = prior.decode(prior.encode(yt)[0])
            row.update(template_mm=tpl, prior_pca_mm=float((rec - yt).reshape(len(yt), -1, 3).norm(dim=-1).mean() * 1000))
            torch.manual_seed(d)
            fit_vae(prior, xt, steps, 1e-3, seed=d, prior=pb, prior_subjects=prior_subjects)  # as training does
            with torch.no_grad():
                rec = prior.decode(prior.encode(yt)[0])
            row.update(prior_vae_mm=float((rec - yt).reshape(len(yt), -1, 3).norm(dim=-1).mean() * 1000))
        rows.append(row)
    return rows


def load_models(model_root: Path) -> dict[str, GHUM]:
    return {name: GHUM.load(d) for name, d in model_dirs(model_root).items()}


def training_shapes(model_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "training_shapes.safetensors"))["rest"]


def write_results(out_dir: Path, results: dict) -> None:
    from ghum_pipe.io.atomic import write_json

    write_json(Path(out_dir) / "results.json", results)
    log.info("wrote %s", Path(out_dir) / "results.json")


def _meta(model: GHUM) -> dict:
    return getattr(model, "meta", {})


def summarise(results: dict) -> str:
    """The report's tables as plain text (also printed by the command)."""
    nan = float("nan")
    truth = any("truth_mm" in r for r in results["fit"])
    lines = ["| model | latent | fit to registration (mm) | without PSD (mm) |"
             + (" to truth (mm) | without PSD (mm) |" if truth else ""),
             "|---|---|---|---|" + ("---|---|" if truth else "")]
    for row in results["fit"]:
        line = (f"| {row['model']} | {row.get('latent', '')} | {row['mean_mm']:.2f} | "
                f"{row.get('no_psd_mm', nan):.2f} |")
        if truth:
            line += f" {row.get('truth_mm', nan):.2f} | {row.get('truth_no_psd_mm', nan):.2f} |"
        lines.append(line)
    if results.get("checks"):
        lines += ["", "| check | value | target | ok |", "|---|---|---|---|"]
        for c in results["checks"]:
            lines.append(f"| {c['name']} | {c['value']:.3f} | {c['target']} | {'yes' if c['ok'] else 'NO'} |")
    if results.get("vae_vs_pca"):
        lines += ["", "| latent dims | VAE (mm) | PCA (mm) | PCA on the template's prior (mm) | VAE on the prior (mm) "
                  "| template 32 (mm) |", "|---|---|---|---|---|---|"]
        for r in results["vae_vs_pca"]:
            lines.append(f"| {r['dim']} | {r['vae_mm']:.2f} | {r['pca_mm']:.2f} | {r.get('prior_pca_mm', nan):.2f} | "
                         f"{r.get('prior_vae_mm', nan):.2f} | {r.get('template_mm', nan):.2f} |")
    if results.get("speed"):
        lines += ["", "| model | batch | forward (ms) |", "|---|---|---|"]
        for r in results["speed"]:
            lines.append(f"| {r['model']} | {r['batch']} | {r['ms']:.1f} |")
    return "\n".join(lines)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
