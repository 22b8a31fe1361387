"""``ghum-pipe evaluate``: run every measurement of ``evaluate.py`` and write the report.

Writes ``OUT/results.json``, ``OUT/report.md`` (the tables) and PNGs: per-model error heat maps
(front/back), the VAE-vs-PCA curve and the fit-error bars. ``OUT`` defaults to MODEL/eval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.io.atomic import atomic_path
from ghum_pipe.model import evaluate as ev
from ghum_pipe.model import plots
from ghum_pipe.model.baselines import pca_shape_model, template_joint_error_mm, template_model, template_shape_model
from ghum_pipe.model.data import load_registrations
from ghum_pipe.model.truth import planted_truth, scan_truth, subject_truth

log = logging.getLogger(__name__)


def _lowres():
    from ghum_pipe.template.lowres import load_lowres

    return load_lowres()


def _check(name: str, value: float, target: str, ok: bool) -> dict:
    return dict(name=name, value=float(value), target=target, ok=bool(ok))


def _fit_row(label: str, model, data, cfg: ev.EvalConfig, up, full, truth) -> tuple[dict, dict]:
    """One table row: ``model`` fitted with and without its PSD. Returns the row and the
    with-PSD result (per-vertex errors for the heat map)."""
    with_psd = ev.fit_errors(model, data, cfg, True, up, full, truth)
    without = ev.fit_errors(model, data, cfg, False, up, full, truth)
    row = dict(model=label, latent=model.config.shape_latent, mean_mm=with_psd["mean_mm"], no_psd_mm=without["mean_mm"])
    if truth is not None:
        row.update(truth_mm=with_psd["truth_mm"], truth_no_psd_mm=without["truth_mm"],
                   truth_per_scan_mm=with_psd["truth_per_scan_mm"])
    return row, with_psd


def run_evaluation(model_root: Path, work: Path, out_dir: Path | None = None,
                   cfg: ev.EvalConfig = ev.EvalConfig(), subject_pattern: str | None = None,
                   truth_dir: Path | None = None) -> dict:
    """Evaluate the models under ``model_root`` on the held-out subjects of ``work``.

    Rows per model: the model, PCA of its training shapes at the same latent size, and the
    model with the template's 32 shape coefficients as its shape space, each fitted with and
    without the PSD; then the template itself (32 coefficients + pose + expression, its own
    skinning and joints, ``baselines.template_model``) fitted by the same fitter. ``truth_dir`` (``OUT/truth`` of ``ghum-pipe synth``) adds every fit's
    error to the true mesh."""
    from ghum_pipe.template import load_template

    model_root, work = Path(model_root), Path(work)
    dirs = ev.model_dirs(model_root)
    out_dir = Path(out_dir) if out_dir else (model_root / "eval")
    models = {name: ev.GHUM.load(d) for name, d in dirs.items()}
    first = next(iter(models.values()))
    full = ev.cap(ev.heldout(load_registrations(work, "full", subject_pattern), first.meta, work), cfg.max_scans)
    log.info("evaluating on %d held-out scans of %d subjects", len(full), len(full.subjects))
    # the planted truth: of a synth --registrations work dir, or of scans made with synth --planted
    truth_root = work
    truth = planted_truth(work)
    if truth is None and truth_dir is not None:
        truth_root = Path(truth_dir).parent
        truth = planted_truth(truth_root)
    t = load_template()
    scans = scan_truth(truth_dir, work, full.scan_ids, t.masks["surface"]) if truth_dir else None
    results: dict = dict(work=str(work), n_scans=len(full), subjects=list(full.subjects), fit=[], checks=[],
                         speed=[], vae_vs_pca=[], truth=str(truth_dir) if truth_dir else None)
    low_data = None
    for name, model in models.items():
        low = model.config.resolution == "low"
        if low and low_data is None:
            ids = set(full.scan_ids)
            all_low = load_registrations(work, "low", subject_pattern)
            low_data = all_low.select(np.array([s in ids for s in all_low.scan_ids]))
        data = low_data if low else full
        up = _lowres().upsample if low else None
        row, with_psd = _fit_row(name.upper(), model, data, cfg, up, full, scans)
        results["fit"].append(row)
        plots.error_heatmap(t.rest_verts, t.faces, with_psd["per_vertex_m"],
                            out_dir / f"heatmap_{name}.png", f"{name.upper()}: held-out per-vertex error")
        pca = pca_shape_model(model, ev.training_shapes(dirs[name]))
        results["fit"].append(_fit_row(f"PCA-{model.config.shape_latent} ({name} rest)", pca, data, cfg, up, full,
                                       scans)[0])
        results["fit"].append(_fit_row(f"template space-32 ({name} skinning, joints, PSD)",
                                       template_shape_model(model), data, cfg, up, full, scans)[0])
        for b in (1, 64):
            results["speed"].append(dict(model=name.upper(), batch=b, ms=ev.speed_ms(model, b)))
        if truth is not None:
            results["checks"] += planted_checks(name, model, low, full, truth, truth_root, t)
    # the template itself, fitted by the same staged L-BFGS as every model (a fair peer)
    tpl_fit = ev.fit_errors(template_model(), full, cfg, use_psd=False, truth=scans)
    row = dict(model="template (Anny 32 shape + pose)", latent=t.n_shape, mean_mm=tpl_fit["mean_mm"])
    if scans is not None:
        row.update(truth_mm=tpl_fit["truth_mm"], truth_per_scan_mm=tpl_fit["truth_per_scan_mm"])
    results["fit"].append(row)
    plots.error_heatmap(t.rest_verts, t.faces, tpl_fit["per_vertex_m"],
                        out_dir / "heatmap_template.png", "template: held-out per-vertex error")
    ghum_name = next((n for n, mdl in models.items() if mdl.config.resolution == "full"), None)
    if ghum_name is not None and cfg.dims:
        train_shapes = ev.training_shapes(dirs[ghum_name])
        test = _test_shapes(models[ghum_name], full, truth, scans, truth_root)
        results["vae_vs_pca"] = ev.vae_vs_pca(
            train_shapes, test, cfg.dims, cfg.vae_steps, template_mean=torch.as_tensor(t.rest_verts, dtype=torch.float32),
            template_basis=torch.as_tensor(t.shape_basis, dtype=torch.float32),
            prior_subjects=models[ghum_name].config.shape_prior_subjects)
        plots.vae_pca_curve(results["vae_vs_pca"], out_dir / "vae_vs_pca.png")
    plots.fit_bars(results["fit"], out_dir / "fit_errors.png")
    ev.write_results(out_dir, results)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(f"# GHUM/GHUML evaluation on {work}\n\n{len(full)} held-out scans of "
                       f"{len(full.subjects)} subjects.\n\n" + ev.summarise(results) + "\n")
    return results


def run_planted_checks(model_root: Path, work: Path, truth_dir: Path | None = None, max_scans: int | None = None,
                       subject_pattern: str | None = None) -> dict:
    """Only the planted-truth checks of ``run_evaluation`` (no fits: seconds), for each model
    under ``model_root`` on the held-out subjects of ``work``; ``{"checks", "subjects"}``."""
    from ghum_pipe.template import load_template

    model_root, work = Path(model_root), Path(work)
    dirs = ev.model_dirs(model_root)
    models = {name: ev.GHUM.load(d) for name, d in dirs.items()}
    first = next(iter(models.values()))
    full = ev.cap(ev.heldout(load_registrations(work, "full", subject_pattern), first.meta, work), max_scans)
    truth_root = work if planted_truth(work) is not None else (Path(truth_dir).parent if truth_dir else work)
    truth = planted_truth(truth_root)
    if truth is None:
        raise ev.ModelError("no planted truth here", path=truth_root,
                            hint="Use synth --registrations or synth --planted data and pass its truth/ folder")
    t = load_template()
    checks = []
    for name, model in models.items():
        checks += planted_checks(name, model, model.config.resolution == "low", full, truth, truth_root, t)
    return dict(checks=checks, subjects=list(full.subjects))


def planted_checks(name: str, model, low: bool, full, truth: dict, work: Path, t) -> list[dict]:
    """PSD fraction, joint centres and skinning of ``model`` on the held-out registrations
    ``full`` against the planted truth (``synth --registrations``, or ``synth --planted``
    scans; ``work``: the folder whose truth/subjects holds the rest shapes and joints)."""
    checks = []
    to_model = _lowres().downsample if low else None
    body = np.array([k == "body" for k in full.kinds])
    poses = full.pose[body]
    removed = ev.psd_removed_fraction(model, truth["corrective"], poses, to_model)
    checks.append(_check(f"{name}: PSD removes planted corrective (fraction)", removed, ">= 0.70", removed >= 0.7))
    rest, joints = subject_truth(work, full.subjects)
    rest_m = to_model(rest) if low else rest
    with torch.no_grad():
        pred = model.joint_regressor(torch.as_tensor(rest_m, dtype=torch.float32)).numpy()
    err = np.linalg.norm(pred - joints, axis=-1) * 1000
    planted = truth["planted_joints"]
    peer = template_joint_error_mm(t, rest, joints, planted if len(planted) else None)
    if len(planted):
        jerr = float(err[:, planted].mean())
        checks.append(_check(f"{name}: C joint error vs truth, shifted joints (mm)", jerr,
                             f"<= 5 and < template {peer:.2f}", jerr <= 5 and jerr < peer))
    jall = float(err.mean())
    peer_all = template_joint_error_mm(t, rest, joints)
    checks.append(_check(f"{name}: C joint error vs truth, all joints (mm)", jall, f"<= 5 (template {peer_all:.2f})",
                         jall <= 5))
    if not low:
        sk = ev.skinning_displacement_mm(model, truth["skinning"]["skin_weights"], rest[full.subject_index[body]], poses)
        checks.append(_check(f"{name}: skinning displacement vs planted, learned (mm)", sk["learned"],
                             f"< start {sk['start']:.3f}", sk["learned"] < sk["start"]))
    return checks


def _test_shapes(model, full, truth, scans, work: Path) -> torch.Tensor:
    """Held-out subjects' rest shapes: the truth when known, else estimated from the scans."""
    if truth is not None:
        return torch.as_tensor(subject_truth(work, full.subjects)[0], dtype=torch.float32)
    if scans is not None:
        first = [int(np.nonzero(full.subject_index == s)[0][0]) for s in range(len(full.subjects))]
        rest = scans.rest[first]
        if np.isfinite(rest).all():
            return torch.as_tensor(rest, dtype=torch.float32)
    return _estimated_shapes(model, full)


def _estimated_shapes(model, data) -> torch.Tensor:
    """Rest shapes of held-out subjects estimated like training does (inverse skinning)."""
    from ghum_pipe.model.train import init_state, refresh_shapes

    state = init_state(model, data)
    for _ in range(3):
        refresh_shapes(model, data, state)
    return state.rest
