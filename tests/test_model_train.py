"""End to end: synthetic registrations -> Dask-scheduled GHUML training -> recovery of the
planted truth on held-out subjects -> runtime API (load, fit, sample)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghum_pipe.model import GHUM, TrainConfig, ghuml_config


@pytest.mark.slow
def test_train_ghuml_with_dask_recovers_planted_truth(tmp_path, measured):
    from distributed import Client, LocalCluster

    from ghum_pipe.model import evaluate as ev
    from ghum_pipe.model.data import load_registrations
    from ghum_pipe.pipelines.model_schedule import train_models
    from ghum_pipe.model.truth import planted_truth, subject_truth
    from ghum_pipe.synth.registrations import make_registrations
    from ghum_pipe.template.lowres import load_lowres

    work = tmp_path / "regs"
    # without the planted joint-centre shifts (C must then keep the template's map); D's
    # recovery with shifted joints is measured by make train-demo (docs/model.md)
    make_registrations(work, 10, seed=0, poses_per_subject=6, closeups=False, joint_shifts=False,
                       population="template")
    cfg = TrainConfig(model=ghuml_config(shape_latent=4, hidden=64), rounds=3, pose_iters=5, vae_steps=100,
                      holdout=0.25)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = train_models(work, tmp_path / "model", {"ghuml": cfg}, client)["ghuml"]
    hist = [h["fit_mm"] for h in summary["history"]]
    # noise: 0.5 mm per axis (~0.8 mm mean); rest shapes from near-rest scans already fit to ~0.53 mm
    # after round 0 (it was ~2.9 mm before), so later rounds only have to not get worse
    assert hist[-1] <= hist[0] + 1e-3 and hist[-1] < 1.0, hist
    model = GHUM.load(tmp_path / "model" / "ghuml")
    truth = planted_truth(work)
    full = load_registrations(str(work), "full")
    held = ev.heldout(full, model.meta, work)
    assert len(held.subjects) == 2 and not set(held.subjects) & set(summary["train_subjects"])
    low = load_lowres()
    body = np.array([k == "body" for k in held.kinds])
    # PSD recovery through the whole pipeline (subject rest shapes from near-rest scans, omega
    # and D solved together, C learned first): measured 0.64 of the planted corrective removed
    # on held-out poses of 2 subjects trained from 8 (0.51 when skinning was solved before D)
    removed = ev.psd_removed_fraction(model, truth["corrective"], held.pose[body], low.downsample)
    print("PSD removed (held-out poses)", removed)
    measured("PSD removed", removed, ">=", 0.6)
    rest, joints = subject_truth(work, held.subjects)
    with torch.no_grad():
        pred = model.joint_regressor(torch.as_tensor(low.downsample(rest), dtype=torch.float32)).numpy()
    # C is learned here too; the true joints are the template's map, which it must keep
    # (measured 0.42 mm on the joints that the synthetic data shifts when asked to, 0.73 mm overall:
    # the ridge towards the template is weak along the directions the data sees)
    from ghum_pipe.synth.registrations import planted_joint_shifts
    from ghum_pipe.template import load_template

    planted = planted_joint_shifts(load_template())["joints"]
    jerr = np.linalg.norm(pred - joints, axis=-1)
    print("C error mm (shift-candidate joints, all)", jerr[:, planted].mean() * 1000, jerr.mean() * 1000)
    measured("C shift-candidate joints mm", jerr[:, planted].mean() * 1000, "<", 1.5)
    measured("C all joints mm", jerr.mean() * 1000, "<", 1.0)
    # runtime fit of a held-out body registration (GHUML topology) from its registered pose
    i = int(np.nonzero(body)[0][1])
    target = low.downsample(held.verts[i])
    fit = model.fit(target, init_pose=held.pose[i][None], iters=60)
    with torch.no_grad():  # the starting point: mean shape, registered pose, centred
        v0, _ = model.articulate(model.mean_rest[None], torch.as_tensor(held.pose[i][None]))
        v0 = v0[0].numpy()
    start_mm = np.linalg.norm(v0 + (target - v0).mean(0) - target, axis=-1).mean() * 1000
    # an unseen body shape from a 4-d space learned on 8 subjects; the staged fit (translation,
    # latents, then pose) reaches a few mm (the joint fit it replaced stalled at 9.5-16 mm)
    print("runtime fit mm", fit.mean_error_mm(), "start mm", start_mm)
    assert fit.mean_error_mm() < 0.1 * start_mm and fit.mean_error_mm() < 8.0, (fit.mean_error_mm(), start_mm)
    verts, joints = model.sample(3)
    assert verts.shape == (3, model.n_verts, 3) and torch.isfinite(verts).all()
