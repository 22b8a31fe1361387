"""Synthetic scans with exact ground truth: the pure core of ``ghum-pipe synth``.

Scan ``index`` of a batch with seed ``seed`` depends only on (seed, index): every random draw
comes from ``np.random.default_rng([seed, index, stream])``, one stream per purpose, so a scan
is the same whatever the batch size, order or options that do not concern it.

A subject (``make_subject``) is a random adult with a skin/hair/shorts colouring and an id.
Its rest shape comes from ``SynthConfig.population``: ``anny`` (default) draws it outside the
template's shape space (Anny's full phenotype model plus person-specific soft tissue and
asymmetry, ``population.py``); ``template`` takes a phenotype of the template's bank and its
32 shape coefficients (the truth then lies in the template's basis). ``body_scan`` poses it
(A-pose, or a random natural pose with ``posed``), optionally with a facial expression, scans it
with the ring scanner of ``scanner.py``, places it by a random rigid transform and writes it in
the scan's units and up axis. ``closeup_scans`` scans the head and each hand of the same subject
with a finer, less noisy hand-held scanner, cropped to the region.

With ``SynthConfig.planted`` the scanned people carry the planted truth of ``synth
--registrations`` (``registrations.py``): the pose-space corrective added before skinning, the
perturbed skinning weights (seed + 1) and the joint-centre shifts, so that a model trained from
the pipeline's registrations of these scans has known targets (``write_planted_truth`` writes
them to OUT/truth, each subject's rest shape and true joints to OUT/truth/subjects).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from pykdtree.kdtree import KDTree

from ghum_pipe.synth import frames
from ghum_pipe.synth.poses import PoseSampler, random_expression
from ghum_pipe.synth.scanner import (
    BODY_SCANNER, CLOSEUP_SCANNER, ScannerConfig, merge_samples, reconstruct, ring_cameras, scan_samples,
    sphere_cameras,
)
from ghum_pipe.synth.skin import SkinRegions, subject_colors

# One random stream per purpose (the third entry of the seed sequence).
STREAM_SUBJECT, STREAM_POSE, STREAM_SCANNER, STREAM_PLACE, STREAM_SHAPE = 0, 1, 2, 3, 4
STREAM_TAKE = 100  # take k > 0 of a subject uses streams STREAM_TAKE * k + (pose, scanner, place)
STREAM_CLOSEUP = {"head": 10, "hand_left": 20, "hand_right": 30}
CLOSEUP_KINDS = tuple(STREAM_CLOSEUP)
OBSERVED_M = 0.005  # a template vertex counts as observed if a scan sample lies this close


@dataclass(frozen=True)
class SynthConfig:
    """What a batch of synthetic scans looks like."""

    posed: bool = False  # random natural poses instead of the A-pose
    expressions: bool = False  # random facial expressions
    units: str = "m"  # m | cm | mm | mixed (alternates m, mm)
    up: str = "z"  # z | y | mixed
    point_cloud: bool = False  # keep the merged raw samples instead of the Poisson mesh
    n_betas: int = 32  # population 'template': leading shape coefficients used (16..32)
    population: str = "anny"  # anny | template (see population.py)
    variation: float = 1.0  # population 'anny': scale of the soft-tissue / asymmetry offsets
    planted: bool = False  # plant synth --registrations' corrective, skinning and joint shifts (below)
    max_tilt_deg: float = 5.0
    max_translation_m: float = 1.0
    scanner: ScannerConfig = BODY_SCANNER
    closeup_scanner: ScannerConfig = CLOSEUP_SCANNER

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Subject:
    """rest_verts (V, 3) / rest_joints (J, 3): the rest shape (metres, +Z up), posed by
    :func:`pose_rest`; betas: the template coefficients (population 'template': the shape
    itself; 'anny': its least-squares projection, for reference)."""

    subject_id: str
    phenotype: np.ndarray  # (P,) in [0, 1], names in phenotype_names
    phenotype_names: tuple
    betas: np.ndarray  # (S,) shape coefficients (zeros beyond n_betas)
    colors: np.ndarray  # (V, 3) float 0-255 per template vertex
    tones: dict
    rest_verts: np.ndarray
    rest_joints: np.ndarray
    factors: np.ndarray  # (N_FACTORS,) the person-specific latent z (zeros for 'template')


@dataclass(frozen=True)
class SynthScan:
    """One synthetic scan in its file frame, with its truth.

    verts (N, 3) in ``truth['units']`` and ``truth['up']``; faces (F, 3) int64 or None for a
    point cloud; colors (N, 3) uint8 or None; normals (N, 3) or None (point clouds);
    truth: arrays and scalars for OUT/truth/<scan_id>.npz; info: JSON-able scalars;
    uv (N, 2) and texture (H, W, 3) uint8: a textured mesh (OBJ/GLB), else None.
    """

    scan_id: str
    verts: np.ndarray
    faces: np.ndarray | None
    colors: np.ndarray | None
    normals: np.ndarray | None
    truth: dict
    info: dict = field(default_factory=dict)
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None


def subject_id(seed: int, index: int) -> str:
    return f"syn{seed}-{index:05d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


_REGIONS: dict[str, SkinRegions] = {}
_POSERS: dict[str, PoseSampler] = {}
_PLANTED: dict[tuple, dict] = {}


def planted(t, seed: int) -> dict:
    """The planted truth of batch ``seed`` (as ``synth --registrations`` plants it): skin_weights
    (V, I), corrective {"fields" (K, V, 3), "joints" (K,), ...}, shifts (``planted_joint_shifts``)."""
    from ghum_pipe.synth.registrations import (
        RegistrationSynthOptions, planted_corrective, planted_joint_shifts, planted_skin_weights,
    )

    key = (t.hash, seed)
    if key not in _PLANTED:
        _PLANTED[key] = dict(skin_weights=planted_skin_weights(t, RegistrationSynthOptions.skin_noise, seed + 1),
                             corrective=planted_corrective(t), shifts=planted_joint_shifts(t))
    return _PLANTED[key]


def _regions(t) -> SkinRegions:
    if t.hash not in _REGIONS:
        _REGIONS[t.hash] = SkinRegions.from_template(t)
    return _REGIONS[t.hash]


def _poser(t) -> PoseSampler:
    if t.hash not in _POSERS:
        _POSERS[t.hash] = PoseSampler(t.joint_names, t.rest_joints)
    return _POSERS[t.hash]


def write_batch_planted_truth(out_dir, t, seed: int) -> None:
    """OUT/truth/{corrective,skinning,joints}.*: the planted truth of batch ``seed``."""
    from ghum_pipe.synth.registrations import write_planted_truth

    write_planted_truth(out_dir, t, planted(t, seed), dict(seed=seed, source="synth --planted (scans)"))


def make_subject(t, seed: int, index: int, config: SynthConfig = SynthConfig()) -> Subject:
    """Subject ``index`` of the batch: its rest shape (``config.population``) and colouring."""
    from ghum_pipe.synth.population import N_FACTORS, POPULATIONS, draw_person

    if config.population not in POPULATIONS:
        raise ValueError(f"population {config.population!r}: use one of {POPULATIONS}")
    rng = _rng(seed, index, STREAM_SUBJECT)
    if config.population == "template":
        k = int(rng.integers(len(t.phenotype_bank)))
        betas = np.array(t.phenotype_bank_betas[k], dtype=np.float64)
        betas[config.n_betas:] = 0.0
        colors, tones = subject_colors(_regions(t), rng)
        v, j = t.shaped(torch.as_tensor(betas[None]), dtype=torch.float64)
        if config.planted:
            from ghum_pipe.synth.registrations import joint_shift

            j = j + torch.as_tensor(joint_shift(planted(t, seed)["shifts"], t.n_joints, v[0].numpy()))
        return Subject(subject_id(seed, index), np.asarray(t.phenotype_bank[k], np.float64), tuple(t.phenotype_names),
                       betas, colors, tones, v[0].numpy(), j[0].numpy(), np.zeros(N_FACTORS))
    from ghum_pipe.synth.anny_shapes import PHENOTYPES

    colors, tones = subject_colors(_regions(t), rng)
    person = draw_person(t, _rng(seed, index, STREAM_SHAPE), config.variation)
    joints = person.joints
    if config.planted:
        from ghum_pipe.synth.registrations import joint_shift

        joints = joints + joint_shift(planted(t, seed)["shifts"], t.n_joints, person.verts)
    return Subject(subject_id(seed, index), person.phenotype, PHENOTYPES, person.betas, colors, tones,
                   person.verts, joints, person.factors)


def pose_template(t, betas: np.ndarray, pose: np.ndarray, expression: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3), (J, 3) float64 metres: the template posed by ``t.pose`` in double precision."""
    with torch.no_grad():
        v, j = t.pose(torch.as_tensor(betas[None], dtype=torch.float64),
                      torch.as_tensor(pose[None], dtype=torch.float64),
                      torch.as_tensor(expression[None], dtype=torch.float64))
    return v[0].numpy(), j[0].numpy()


def pose_rest(t, rest_verts: np.ndarray, rest_joints: np.ndarray, pose: np.ndarray,
              expression: np.ndarray, planted_truth: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3), (J, 3) float64 metres: a rest shape (V, 3) with joints (J, 3) given the
    template's expression blendshapes and posed by the template's skinning (float64). For a
    shape of the template's space this is ``pose_template`` (tested). ``planted_truth``
    (:func:`planted`): add its pose-space corrective before skinning and skin with its weights."""
    from ghum_pipe.model.truth import corrective_offsets
    from ghum_pipe.template.lbs import as_rotmats, lbs

    tt = t.tensors(dtype=torch.float64)
    e = torch.as_tensor(expression[None], dtype=torch.float64)
    v = torch.as_tensor(rest_verts[None]) + torch.einsum("be,evk->bvk", e, tt["expression_basis"])
    j = torch.as_tensor(rest_joints[None]) + torch.einsum("be,ejk->bjk", e, tt["expression_joint_basis"])
    rot = as_rotmats(torch.as_tensor(pose[None], dtype=torch.float64))
    weights = tt["skin_weights"]
    if planted_truth is not None:
        c = planted_truth["corrective"]
        v = v + torch.as_tensor(corrective_offsets(c["fields"], c["joints"], rot[0].numpy())[None])
        weights = torch.as_tensor(planted_truth["skin_weights"], dtype=torch.float64)
    with torch.no_grad():
        v, j = lbs(v, j, rot, tt["parents"], tt["skin_indices"], weights, tt["levels"])
    return v[0].numpy(), j[0].numpy()


@dataclass(frozen=True)
class Scanned:
    """A scan in the template's frame (metres, +Z up), before placement: verts (N, 3); faces
    (F, 3) or None for a point cloud; colors (N, 3) uint8; normals (N, 3) or None (meshes);
    observed (V,) bool: template vertices with a scanner sample within OBSERVED_M; info: counts."""

    verts: np.ndarray
    faces: np.ndarray | None
    colors: np.ndarray
    normals: np.ndarray | None
    observed: np.ndarray
    info: dict


def _scan_surface(verts, faces, colors, cameras, scanner: ScannerConfig, rng, point_cloud: bool,
                  keep_faces=None) -> Scanned:
    """Scan one posed mesh (V, 3) metres with ``cameras``; mesh it unless ``point_cloud``."""
    samples = scan_samples(verts, faces, colors, cameras, scanner, rng, keep_faces)
    pcd = merge_samples(samples, scanner)
    pts = np.asarray(pcd.points)
    dist, _ = KDTree(samples.points).query(verts, k=1)
    observed = dist < OBSERVED_M
    info = {"n_rays": samples.n_rays, "n_samples": samples.n_hits, "n_points_merged": len(pts)}
    if point_cloud:
        cols = (np.asarray(pcd.colors) * 255).round().astype(np.uint8)
        return Scanned(pts, None, cols, np.asarray(pcd.normals).copy(), observed, info)
    v, f, c = reconstruct(pcd, scanner)
    info.update(n_scan_verts=len(v), n_scan_faces=len(f))
    return Scanned(v, f, c, None, observed, info)


def _finish(t, scan_id, subject, kind, index, seed, config, pose, expression, verts_t, joints_t,
            scanned: Scanned, rng_place) -> SynthScan:
    """Place the scan and its truth by a random rigid transform and write them in the file frame."""
    sv, sf, sc, sn, observed, info = (scanned.verts, scanned.faces, scanned.colors, scanned.normals,
                                      scanned.observed, scanned.info)
    units, up = frames.resolve_frame(config.units, config.up, index)
    rigid = frames.random_rigid(rng_place, config.max_tilt_deg, config.max_translation_m)
    T = frames.file_transform(units, up) @ rigid
    truth = dict(
        verts=frames.apply(T, verts_t), verts_m=frames.apply(rigid, verts_t),
        joints=frames.apply(T, joints_t), joints_m=frames.apply(rigid, joints_t),
        joint_names=np.array(t.joint_names), betas=subject.betas, phenotype=subject.phenotype,
        phenotype_names=np.array(subject.phenotype_names), pose=pose, expression=expression, transform=T,
        rest_verts=subject.rest_verts, rest_joints=subject.rest_joints, factors=subject.factors,
        population=np.array(config.population),
        units=np.array(units), up=np.array(up), subject=np.array(subject.subject_id), kind=np.array(kind),
        observed=observed,
    )
    active = {n: round(float(a), 3) for n, a in zip(t.expression_names, expression) if a > 0}
    info = dict(
        scan_id=scan_id, subject=subject.subject_id, kind=kind, seed=seed, index=index, units=units, up=up,
        posed=bool(np.any(pose)), expression=active, n_betas=config.n_betas, population=config.population,
        planted=config.planted,
        phenotype=dict(zip(subject.phenotype_names, np.round(subject.phenotype, 4).tolist())),
        transform=T.tolist(), n_observed_verts=int(observed.sum()), point_cloud=sf is None, **subject.tones, **info,
    )
    normals = None if sn is None else frames.apply_to_normals(T, sn)
    return SynthScan(scan_id, frames.apply(T, sv), sf, sc, normals, truth, info)


def body_scan(t, seed: int, index: int, config: SynthConfig = SynthConfig(), take: int = 0) -> SynthScan:
    """Whole-body scan ``index`` of the batch (kind 'body'). ``take`` k > 0 is another scan of
    the same subject (id ``syn<seed>-<i>-t<k>``, always posed, its own pose, placement and
    scanner noise), so one subject can have several scans."""
    subject = make_subject(t, seed, index, config)
    base = STREAM_TAKE * take
    rng = _rng(seed, index, base + STREAM_POSE)
    pose = _poser(t).sample(rng) if (config.posed or take) else np.zeros((t.n_joints, 3))
    expression = random_expression(t.expression_names, rng) if config.expressions else np.zeros(t.n_expression)
    verts, joints = pose_rest(t, subject.rest_verts, subject.rest_joints, pose, expression,
                              planted(t, seed) if config.planted else None)
    rng_scan = _rng(seed, index, base + STREAM_SCANNER)
    surface = t.masks["surface"]
    lo, hi = verts[surface].min(0), verts[surface].max(0)
    cams = ring_cameras(lo, hi, azimuth0=rng_scan.uniform(0, 2 * np.pi))
    scanned = _scan_surface(verts, t.faces, subject.colors, cams, config.scanner, rng_scan, config.point_cloud)
    scan_id = subject.subject_id if take == 0 else f"{subject.subject_id}-t{take}"
    return _finish(t, scan_id, subject, "body", index, seed, config, pose, expression, verts, joints,
                   scanned, _rng(seed, index, base + STREAM_PLACE))


def closeup_scans(t, seed: int, index: int, config: SynthConfig = SynthConfig(), kinds=CLOSEUP_KINDS) -> list[SynthScan]:
    """Close-up scans of subject ``index``: the head (with an expression when ``expressions``)
    and each hand (fingers in a random curl), each cropped to its template region
    (``t.masks[kind]``, recorded as the truth's ``region_mask``) and scanned from a sphere of
    hand-held viewpoints with ``config.closeup_scanner``. The region is scanned on its own, as
    when a subject holds a hand out to a hand-held scanner, so the rest of the body does not
    occlude it."""
    subject = make_subject(t, seed, index, config)
    out = []
    for kind in kinds:
        stream = STREAM_CLOSEUP[kind]
        rng = _rng(seed, index, stream)
        pose = np.zeros((t.n_joints, 3))
        full = _poser(t).sample(rng)
        # only the joints that shape the region move: head/neck or the fingers of that hand
        side = {"hand_left": ".L", "hand_right": ".R"}.get(kind)
        for j, name in enumerate(t.joint_names):
            if (side is None and name in ("neck01", "neck02", "neck03", "head")) or (
                    side is not None and name.startswith("finger") and name.endswith(side)):
                pose[j] = full[j]
        expression = (random_expression(t.expression_names, rng) if (config.expressions and kind == "head")
                      else np.zeros(t.n_expression))
        verts, joints = pose_rest(t, subject.rest_verts, subject.rest_joints, pose, expression,
                                  planted(t, seed) if config.planted else None)
        region = t.masks[kind]
        scan_faces = _grow_faces(t.faces, region, rings=3)
        keep = region[t.faces[scan_faces]].all(1)
        centre = verts[region].mean(0)
        radius = np.linalg.norm(verts[region] - centre, axis=1).max()
        distance = 3.0 * radius
        scanner = replace(config.closeup_scanner, fov_deg=float(2 * np.degrees(np.arctan(1.15 * radius / distance))))
        rng_scan = _rng(seed, index, stream + 1)
        cams = sphere_cameras(centre, distance, n=24)
        scanned = _scan_surface(verts, t.faces[scan_faces], subject.colors, cams, scanner, rng_scan,
                                config.point_cloud, keep_faces=keep)
        scanned = replace(scanned, observed=scanned.observed & region)
        scan = _finish(t, f"{subject.subject_id}-{kind}", subject, kind, index, seed, config, pose, expression,
                       verts, joints, scanned, _rng(seed, index, stream + 2))
        scan.truth["region_mask"] = region.copy()
        out.append(scan)
    return out


def _grow_faces(faces: np.ndarray, vmask: np.ndarray, rings: int) -> np.ndarray:
    """(F,) bool: faces touching the vertex set ``vmask`` grown by ``rings`` face rings."""
    m = vmask.copy()
    for _ in range(rings):
        touch = m[faces].any(1)
        m[faces[touch].ravel()] = True
    return m[faces].all(1)
