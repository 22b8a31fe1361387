"""Registration stage: the pure core ``register_scan`` and the per-scan entry ``run_registration``.

    landmarks --Umeyama--> similarity --LBS fit--> skeleton (landmarks, then + ICP)
              --ACAP local-global--> free-form surface --> outputs in the scan file's frame

Close-up scans (kind head / hand_left / hand_right, ``ghum_pipe.io.kinds``) branch to
``region.register_region``: the same steps restricted to the template's region.

``register_scan`` works on arrays in the internal frame (metres, +Z up) and can be called from a
notebook; ``run_registration`` reads the files, calls it and writes the outputs atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.errors import RegistrationError
from ghum_pipe.register.backend import single_threaded_blas
from ghum_pipe.register.landmark_pairs import (HINT_LANDMARKS, load_template_landmark_set, match_landmarks,
                                               read_landmarks_json)
from ghum_pipe.register.nonrigid import NonrigidConfig, matchable_vertices, refine_nonrigid
from ghum_pipe.register.region import RegionConfig, register_region
from ghum_pipe.register.result import RegistrationResult, observed_vertices, registration_metrics
from ghum_pipe.register.similarity import umeyama
from ghum_pipe.register.skeleton import SkeletonConfig, fit_skeleton, rest_offsets
from ghum_pipe.register.target import build_target

TORSO_LANDMARKS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")


@dataclass(frozen=True)
class RegisterConfig:
    device: str = "cpu"
    units: str | None = None  # override the scan's units, as given to `landmark` (else detected)
    up: str | None = None  # override the scan's up axis, likewise
    lowres: bool = False
    skeleton: SkeletonConfig = field(default_factory=SkeletonConfig)
    nonrigid: NonrigidConfig = field(default_factory=NonrigidConfig)
    max_scan_points: int = 60000  # oriented samples of the scan used for matching
    min_confidence: float = 0.3  # scan landmarks below are ignored
    min_body_landmarks: int = 8
    max_init_rms_m: float = 0.06  # shoulder/hip RMS after the similarity: above = inconsistent landmarks
    min_coverage: float = 0.6  # share of the template near scan data after the landmark fit
    coverage_dist_m: float = 0.05
    max_scan_to_reg_mm: float = 10.0  # mean scan->registration above this = diverged
    observed_dist_m: float = 0.01  # a vertex "saw scan data" when the scan is this close (params' vertex_mask)
    threads: int = 0  # torch threads (0 = leave torch's setting)
    # body | head | hand_left | hand_right; None = from kinds.csv next to the scan or the id suffix
    # (ghum_pipe.io.kinds; the batch runner sets it per scan). Close-ups: region.py
    kind: str | None = None
    region: RegionConfig = field(default_factory=RegionConfig)

    def to_dict(self) -> dict:
        """The settings of the branch that runs (the runner hashes this): a body's omits
        ``region``, a close-up's ``skeleton`` and ``nonrigid``, so changing a close-up setting
        does not re-run every body scan (and the reverse). With ``kind`` None: everything."""
        d = dataclasses.asdict(self)
        if self.kind == "body":
            d.pop("region")
        elif self.kind is not None:
            d.pop("skeleton")
            d.pop("nonrigid")
        return d


def _fail(msg: str, path, hint: str | None = None):
    raise RegistrationError(msg, path=path, hint=hint)


@single_threaded_blas
def register_scan(
    scan_verts: np.ndarray, scan_faces: np.ndarray | None, scan_normals: np.ndarray | None,
    landmarks: dict, template, config: RegisterConfig = RegisterConfig(), template_landmarks=None,
    path: str | None = None, kind: str | None = None,
) -> RegistrationResult:
    """Register the template to one scan (pure core: arrays in, arrays out).

    Args:
        scan_verts: (N, 3) metres, +Z up; scan_faces: (F, 3) or None (point cloud);
        scan_normals: (N, 3) or None.
        landmarks: ``{"names": [...], "points": (L, 3) metres +Z up, "confidence": (L,)}``.
        template: :class:`ghum_pipe.template.Template`.
        template_landmarks: definitions on the template (default: the landmark stage's).
        path: the file named in errors.
        kind: "body" | "head" | "hand_left" | "hand_right" (default ``config.kind`` or body);
            close-ups go to ``region.register_region``.
    Raises:
        RegistrationError: too few / inconsistent landmarks, partial body, divergence.
    """
    cfg = config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kind = kind or cfg.kind or "body"
    if kind != "body":
        return register_region(scan_verts, scan_faces, scan_normals, landmarks, template, kind, cfg.region,
                               template_landmarks, path, cfg.max_scan_points, cfg.min_confidence,
                               cfg.observed_dist_m, cfg.max_scan_to_reg_mm, cfg.device)
    seconds = {}
    t0 = time.perf_counter()
    tl = template_landmarks if template_landmarks is not None else load_template_landmark_set(template)
    pairs = match_landmarks(list(landmarks["names"]), np.asarray(landmarks["points"], dtype=np.float64).reshape(-1, 3),
                            landmarks.get("confidence"), tl, cfg.min_confidence)
    body = np.array([k == "pose" for k in pairs.kinds], dtype=bool)
    if body.sum() < cfg.min_body_landmarks:
        _fail(f"{int(body.sum())} usable body landmarks, registration needs at least {cfg.min_body_landmarks}",
              path, HINT_LANDMARKS + " (is the whole person visible?)")
    # similarity from the torso (shoulders, hips): the limbs may be posed anywhere
    rest_lm = pairs.template_points(template.rest_verts)
    torso = np.isin(pairs.names, TORSO_LANDMARKS)
    if torso.sum() < 3:
        _fail(f"{int(torso.sum())} of the 4 shoulder/hip landmarks found, the similarity needs 3", path,
              HINT_LANDMARKS + " (is the whole person visible?)")
    sim = umeyama(rest_lm[torso], pairs.targets[torso], pairs.confidence[torso])
    init_rms = float(np.sqrt(((sim.apply(rest_lm[torso]) - pairs.targets[torso]) ** 2).sum(1).mean()))
    if not 0.5 < sim.scale < 2.0 or init_rms > cfg.max_init_rms_m:
        _fail(f"inconsistent landmarks (shoulder/hip similarity scale {sim.scale:.2f}, RMS {init_rms * 100:.1f} cm)",
              path, HINT_LANDMARKS + "; left/right may be swapped or the scan may hold more than one person")
    target = build_target(scan_verts, scan_faces, scan_normals, max_points=cfg.max_scan_points, seed=cfg.nonrigid.seed)
    seconds["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    surface = template.masks["surface"]
    coverage = {}

    def check_coverage(verts):
        """After the landmark fit: is the posed template where the scan is?"""
        near = target.index.query(verts[surface], 1)[0][:, 0] < cfg.coverage_dist_m
        coverage["after_landmarks"] = float(near.mean())
        if near.mean() < cfg.min_coverage:
            _fail(f"partial body: only {near.mean():.0%} of the template is within {cfg.coverage_dist_m * 100:.0f} cm "
                  "of the scan after the landmark fit", path,
                  "Registration needs a whole-body scan; check the scan and its landmarks' contact sheet")

    fit = fit_skeleton(template, pairs, sim, target, cfg.skeleton, cfg.device, after_landmarks=check_coverage)
    seconds["skeleton"] = time.perf_counter() - t0
    coverage["after_skeleton"] = float((target.index.query(fit.verts[surface], 1)[0][:, 0] < cfg.coverage_dist_m).mean())

    t0 = time.perf_counter()
    nr = refine_nonrigid(fit.verts, template.faces, matchable_vertices(template, cfg.nonrigid), target, cfg.nonrigid,
                         landmarks=pairs, device=cfg.device)
    seconds["nonrigid"] = time.perf_counter() - t0
    verts = nr.verts
    if not np.isfinite(verts).all():
        _fail("registration diverged (non-finite vertices)", path, "Check the scan's landmarks and normals")

    t0 = time.perf_counter()
    offsets = rest_offsets(template, fit, verts)
    metrics, scan_pts, s2r = registration_metrics(template, verts, target, pairs, fit.landmark_rms_m)
    seconds["metrics"] = time.perf_counter() - t0
    metrics.update(
        similarity_scale=sim.scale, init_landmark_rms_mm=init_rms * 1e3, coverage=coverage,
        matched_fraction=nr.matched_fraction, iterations={"skeleton": fit.iterations, "nonrigid": nr.iterations},
        seconds=seconds, seconds_total=float(sum(seconds.values())),
    )
    if metrics["scan_to_reg_mean_mm"] > cfg.max_scan_to_reg_mm:
        _fail(f"registration diverged: mean scan->registration distance {metrics['scan_to_reg_mean_mm']:.1f} mm "
              f"(limit {cfg.max_scan_to_reg_mm} mm)", path, HINT_LANDMARKS)
    # the training filter F: surface vertices with scan data nearby (holes, interior: 0)
    observed = observed_vertices(target, verts, surface, cfg.observed_dist_m)
    metrics["observed_fraction"] = float(observed[surface].mean())
    params = dict(pose=fit.pose, shape=fit.shape, expression=fit.expression, scale=np.float64(fit.scale),
                  translation=fit.translation, offsets=offsets, vertex_mask=observed, kind=np.array("body"))
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
    region = surface if kind == "body" else surface & np.asarray(template.masks[kind], bool)
    write_residual_map(scan_dir / "residuals.png", res.verts, template.faces[surface[template.faces].all(1)],
                       res.scan_points, res.scan_to_reg_m, body_front(res.verts, template.coco_regressor, template.coco_names),
                       vertices=region, title=f"{scan.id}: scan -> registration, mean {metrics['scan_to_reg_mean_mm']:.2f} mm")
    metrics["seconds_wall"] = time.perf_counter() - t_start
    write_json(scan_dir / "metrics.json", metrics)
    return metrics
