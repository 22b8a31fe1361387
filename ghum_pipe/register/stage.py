"""Registration stage: the pure core ``register_scan`` and the per-scan entry ``run_registration``.

    landmarks --Umeyama--> similarity --LBS fit--> skeleton (landmarks, then + ICP)
              --ACAP local-global--> free-form surface --> outputs in the scan file's frame

One driver for a body and a close-up (kind head / hand_left / hand_right, ``ghum_pipe.io.kinds``):
the steps run on the scan's ``region.Region``, a body being the region "everything".

``register_scan`` works on arrays in the internal frame (metres, +Z up) and can be called from a
notebook; ``run_registration`` reads the files, calls it and writes the outputs atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.errors import RegistrationError
from ghum_pipe.register.backend import single_threaded_blas
from ghum_pipe.register.config import RegionConfig, RegisterConfig
from ghum_pipe.register.hands import fit_hands
from ghum_pipe.register.landmark_pairs import (HINT_LANDMARKS, load_template_landmark_set, match_landmarks,
                                               read_landmarks_json)
from ghum_pipe.register.region import (TORSO_LANDMARKS, check_landmarks, coverage_error, free_joints,
                                       initial_similarity, main_landmarks, refine_region, region_landmarks, region_of)
from ghum_pipe.register.result import RegistrationResult, observed_vertices, registration_metrics
from ghum_pipe.register.skeleton import fit_skeleton, rest_offsets
from ghum_pipe.register.target import build_target

__all__ = ["RegisterConfig", "RegionConfig", "TORSO_LANDMARKS", "read_landmarks_json", "register_scan",
           "run_registration"]


def _fail(msg: str, path, hint: str | None = None):
    raise RegistrationError(msg, path=path, hint=hint)


@single_threaded_blas
def register_scan(
    scan_verts: np.ndarray, scan_faces: np.ndarray | None, scan_normals: np.ndarray | None,
    landmarks: dict, template, config: RegisterConfig = RegisterConfig(), template_landmarks=None,
    path: str | None = None, kind: str | None = None,
) -> RegistrationResult:
    """Register the template, or its region for a close-up, to one scan (pure core: arrays in, arrays out).

    Args:
        scan_verts: (N, 3) metres, +Z up (a hand may be in any orientation); scan_faces: (F, 3)
            or None (point cloud); scan_normals: (N, 3) or None.
        landmarks: ``{"names": [...], "points": (L, 3) metres +Z up, "confidence": (L,)}``.
        template: :class:`ghum_pipe.template.Template`.
        template_landmarks: definitions on the template (default: the landmark stage's).
        path: the file named in errors.
        kind: "body" | "head" | "hand_left" | "hand_right" (default ``config.kind`` or body): the
            ``region.Region`` registered, with its branch's settings.
    Returns:
        :class:`~ghum_pipe.register.result.RegistrationResult`: all V template vertices, metres
        (outside a close-up's region: the fitted template).
    Raises:
        RegistrationError: too few / inconsistent landmarks, partial scan, divergence.
    """
    cfg = config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kind = kind or cfg.kind or "body"
    region = region_of(template, kind, cfg)
    seconds = {}
    t0 = time.perf_counter()
    tl = template_landmarks if template_landmarks is not None else load_template_landmark_set(template)
    pairs = match_landmarks(list(landmarks["names"]), np.asarray(landmarks["points"], dtype=np.float64).reshape(-1, 3),
                            landmarks.get("confidence"), tl, cfg.min_confidence)
    pairs = region_landmarks(pairs, kind)
    check_landmarks(region, pairs, path)
    sim, init_rms = initial_similarity(template, pairs, kind, path, region.max_init_rms_m)
    target = build_target(scan_verts, scan_faces, scan_normals, max_points=cfg.max_scan_points, seed=cfg.seed)
    seconds["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    coverage = {}

    def check_coverage(verts):
        """After the landmark fit: is the posed template (region) where the scan is?"""
        near = target.index.query(verts[region.surface], 1)[0][:, 0] < region.coverage_dist_m
        coverage["after_landmarks"] = float(near.mean())
        if near.mean() < region.min_coverage:
            raise coverage_error(region, float(near.mean()), path)

    fit = fit_skeleton(template, pairs, sim, target, region.skeleton, cfg.device, after_landmarks=check_coverage,
                       free_joints=free_joints(template, kind, pairs), icp_vertices=np.flatnonzero(region.surface),
                       main_landmarks=main_landmarks(pairs, kind), seed=cfg.seed)
    seconds["skeleton"] = time.perf_counter() - t0
    hands_info = {}
    if region.is_body and cfg.hands.enabled:
        t0 = time.perf_counter()
        fit, hands_info = fit_hands(template, pairs, fit, target, cfg.hands, region.skeleton.n_shape, cfg.device, cfg.seed)
        seconds["hands"] = time.perf_counter() - t0
    near = target.index.query(fit.verts[region.surface], 1)[0][:, 0] < region.coverage_dist_m
    coverage["after_skeleton"] = float(near.mean())

    t0 = time.perf_counter()
    verts, nr = refine_region(template, fit.verts, target, region, pairs, cfg.device, cfg.seed)
    seconds["nonrigid"] = time.perf_counter() - t0
    if not np.isfinite(verts).all():
        _fail("registration diverged (non-finite vertices)", path, "Check the scan's landmarks and normals")

    t0 = time.perf_counter()
    offsets = rest_offsets(template, fit, verts)
    metrics, scan_pts, s2r = registration_metrics(template, verts, target, pairs, fit.landmark_rms_m, region.surface)
    seconds["metrics"] = time.perf_counter() - t0
    metrics.update(
        kind=kind, similarity_scale=sim.scale, init_landmark_rms_mm=init_rms * 1e3, coverage=coverage,
        matched_fraction=nr.matched_fraction, iterations={"skeleton": fit.iterations, "nonrigid": nr.iterations},
        seconds=seconds, seconds_total=float(sum(seconds.values())),
    )
    if hands_info:  # which hands the hand stage refitted (hands.py) and the scan distances that decided
        metrics["hands"] = hands_info
    if metrics["scan_to_reg_mean_mm"] > cfg.max_scan_to_reg_mm:
        _fail(f"registration diverged: mean scan->registration distance {metrics['scan_to_reg_mean_mm']:.1f} mm "
              f"(limit {cfg.max_scan_to_reg_mm} mm)", path, HINT_LANDMARKS)
    # the training filter F: the region's surface vertices with scan data nearby (holes, interior: 0)
    observed = observed_vertices(target, verts, region.surface, cfg.observed_dist_m)
    metrics["observed_fraction"] = float(observed[region.surface].mean())
    params = dict(pose=fit.pose, shape=fit.shape, expression=fit.expression, scale=np.float64(fit.scale),
                  translation=fit.translation, offsets=offsets, vertex_mask=observed, kind=np.array(kind))
    if not region.is_body:
        params["region_mask"] = region.mask.copy()
    return RegistrationResult(verts=verts, params=params, metrics=metrics, scan_points=scan_pts, scan_to_reg_m=s2r)


def run_registration(scan_path, scan_dir, config: RegisterConfig = RegisterConfig()) -> dict:
    """Per-scan entry (the Dask runner calls this): read the scan and ``scan_dir/landmarks.json``,
    register, write ``registration.ply``, ``params.npz``, ``metrics.json``, ``residuals.png``
    (and ``registration_lowres.ply`` with ``config.lowres``) in the scan file's frame and units.
    Returns the metrics. Nothing is written when registration fails."""
    from ghum_pipe.io import write_mesh
    from ghum_pipe.io.atomic import write_json, write_npz
    from ghum_pipe.io.scan_record import load_recorded_scan
    from ghum_pipe.review import review_result
    from ghum_pipe.review.heatmap import body_front, write_residual_map
    from ghum_pipe.template import load_template

    scan_dir = Path(scan_dir)
    t_start = time.perf_counter()
    scan, record = load_recorded_scan(scan_path, scan_dir, config.units, config.up, config.kind)  # scan.json
    kind = record.kind
    lm = read_landmarks_json(scan_dir / "landmarks.json", scan.frame)
    if lm["scan_kind"] != kind:
        _fail(f"the landmarks were found for a {lm['scan_kind']} scan, this registration is for a {kind} scan",
              scan_dir / "landmarks.json", "Re-run `ghum-pipe landmark` after changing a scan's kind")
    template = load_template()
    res = register_scan(scan.verts, scan.faces, scan.normals, lm, template, config, path=str(scan_path), kind=kind)
    frame = scan.frame
    metrics = dict(res.metrics, kind=kind, scan_id=scan.id, frame=frame.to_dict(), n_verts=int(len(res.verts)),
                   template_hash=template.hash)
    # the review verdict (docs/review.md), in the one metrics.json write
    metrics["review"] = review_result(res.verts, scan.verts, lm, template, pose=res.params.get("pose"),
                                      offsets_m=res.params.get("offsets"), kind=kind, source=str(scan_path)).to_dict()
    low = None
    if config.lowres:
        from ghum_pipe.template.lowres import load_lowres

        low = load_lowres()
    # all outputs are computed before the first file is written; each write is atomic
    write_mesh(scan_dir / "registration.ply", frame.to_file(res.verts), template.faces)
    if low is not None:
        write_mesh(scan_dir / "registration_lowres.ply", frame.to_file(low.downsample(res.verts)), low.template.faces)
    write_npz(scan_dir / "params.npz", **res.params, frame_matrix=frame.matrix(),
              frame=np.array(json.dumps(frame.to_dict())), template_hash=np.array(template.hash),
              verts_internal=res.verts, **({"subject": np.array(record.subject)} if record.subject else {}))
    surface = template.masks["surface"]
    region = template.surface_of(kind)
    write_residual_map(scan_dir / "residuals.png", res.verts, template.faces[surface[template.faces].all(1)],
                       res.scan_points, res.scan_to_reg_m, body_front(res.verts, template.coco_regressor, template.coco_names),
                       vertices=region, title=f"{scan.id}: scan -> registration, mean {metrics['scan_to_reg_mean_mm']:.2f} mm")
    metrics["seconds_wall"] = time.perf_counter() - t_start
    write_json(scan_dir / "metrics.json", metrics)
    return metrics
