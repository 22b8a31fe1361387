"""What one registration fits: a :class:`Region` of the template. A body is the region "everything".

GHUM (Xu et al., CVPR 2020, sec. 3.1) adds close-up head and hand scans to the whole-body ones;
each registration then constrains the model only where its scan has data (the filter F). A
close-up runs the body's steps (``stage.register_scan``) restricted to ``template.masks[kind]``:

1. similarity from the region's landmarks (Umeyama): the shoulders and hips for a body, the face
   (all FaceMesh points) or the palm (wrist, thumb base and the four knuckles, which a finger
   curl does not move) for a close-up;
2. an LBS fit (``skeleton.fit_skeleton``) of only what shapes the region: root rotation +
   translation, the neck/head joints, the 52 facial actions and the shape for a head; the wrist
   and finger joints and the shape for a hand (a body: every body joint). Landmarks first, then
   + robust point-to-plane ICP both ways with the template side restricted to the region's
   surface vertices;
3. ACAP non-rigid refinement (nonrigid.py) on a sub-mesh: the region grown by ``data_rings``
   rings takes scan data, ``pin_rings`` further rings are pinned to the LBS fit (as stiff point
   constraints), the rest of the template is the LBS fit unchanged (a body: the whole mesh).

Output as a body registration: all V template vertices (outside the region: the fitted
template), params with ``vertex_mask`` = region surface vertices with scan data within
``observed_dist_m`` (the model learns only the region from a close-up) and ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ghum_pipe.errors import RegistrationError
from ghum_pipe.register.config import RegisterConfig
from ghum_pipe.register.landmark_pairs import HINT_LANDMARKS, LandmarkPairs
from ghum_pipe.register.nonrigid import NonrigidConfig, NonrigidResult, matchable_vertices, refine_nonrigid
from ghum_pipe.register.similarity import Similarity, umeyama
from ghum_pipe.register.skeleton import SkeletonConfig, body_free_joints
from ghum_pipe.register.target import ScanTarget

TORSO_LANDMARKS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
HEAD_JOINTS = ("neck01", "neck02", "neck03", "head")
PALM_POINTS = (0, 1, 5, 9, 13, 17)  # MediaPipe hand: wrist, thumb CMC, index/middle/ring/pinky MCP
POSE_FACE = ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
             "right_eye_outer", "mouth_left", "mouth_right")
CLOSEUP_KINDS = ("head", "hand_left", "hand_right")


@dataclass(frozen=True)
class Region:
    """The template's part one registration fits, with the settings of its branch.

    ``mask`` (V,) bool: the region (a body: all); ``surface``: its surface vertices (the ICP's
    pool, coverage, registration->scan distances, the filter F); ``data``: the vertices that
    take scan data in the non-rigid step; ``sub``: that step's sub-mesh (a body: all), of which
    the vertices ``pins`` are pinned to the LBS fit with ``pin_weight``."""

    kind: str
    mask: np.ndarray
    surface: np.ndarray
    data: np.ndarray
    sub: np.ndarray
    pins: np.ndarray
    skeleton: SkeletonConfig
    nonrigid: NonrigidConfig
    min_landmarks: int
    min_coverage: float
    coverage_dist_m: float
    max_init_rms_m: float  # landmark RMS after the similarity (a close-up: no limit)
    pin_weight: float = 0.0

    @property
    def is_body(self) -> bool:
        return self.kind == "body"

    def what(self) -> str:
        """The region in words: "body", "head", "left hand"."""
        return self.kind.replace("hand_", "") + " hand" if self.kind.startswith("hand_") else self.kind


def region_of(template, kind: str, config: RegisterConfig = RegisterConfig()) -> Region:
    """The :class:`Region` of a ``kind`` scan ("body" | "head" | "hand_left" | "hand_right")."""
    surface = template.masks["surface"]
    if kind == "body":
        every = np.ones(template.n_verts, dtype=bool)
        return Region(kind=kind, mask=every, surface=surface.copy(), data=matchable_vertices(template, config.nonrigid),
                      sub=every, pins=np.zeros(0, dtype=np.int64), skeleton=config.skeleton, nonrigid=config.nonrigid,
                      min_landmarks=config.min_body_landmarks, min_coverage=config.min_coverage,
                      coverage_dist_m=config.coverage_dist_m, max_init_rms_m=config.max_init_rms_m)
    if kind not in CLOSEUP_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}: body, {', '.join(CLOSEUP_KINDS)}")
    c = config.region
    mask = template.masks[kind]
    inner = grow(template, mask, c.data_rings)
    sub = grow(template, inner, c.pin_rings)
    return Region(kind=kind, mask=mask.copy(), surface=template.surface_of(kind), data=inner & surface, sub=sub,
                  pins=np.flatnonzero(sub & ~inner), skeleton=c.skeleton, nonrigid=c.nonrigid,
                  min_landmarks=c.min_face_landmarks if kind == "head" else c.min_hand_landmarks,
                  min_coverage=c.min_coverage, coverage_dist_m=c.coverage_dist_m, max_init_rms_m=float("inf"),
                  pin_weight=c.pin_weight)


def region_landmarks(pairs: LandmarkPairs, kind: str) -> LandmarkPairs:
    """The pairs that belong to the region: all for a body, face points (and Pose's face names)
    for a head, that side's hand points for a hand."""
    if kind == "body":
        return pairs
    if kind == "head":
        keep = [k in ("face",) or n in POSE_FACE for n, k in zip(pairs.names, pairs.kinds)]
    else:
        side = "left" if kind == "hand_left" else "right"
        keep = [n.startswith(f"{side}_hand_") for n in pairs.names]
    return pairs.subset(np.asarray(keep, dtype=bool))


def check_landmarks(region: Region, pairs: LandmarkPairs, path=None) -> None:
    """Raise RegistrationError when the region has too few landmarks (a body: body landmarks)."""
    if region.is_body:
        n = int((np.asarray(pairs.kinds) == "pose").sum())
        if n < region.min_landmarks:
            raise RegistrationError(f"{n} usable body landmarks, registration needs at least {region.min_landmarks}",
                                    path, HINT_LANDMARKS + " (is the whole person visible?)")
    elif len(pairs) < region.min_landmarks:
        what = "face" if region.kind == "head" else region.what()
        raise RegistrationError(f"{len(pairs)} usable {what} landmarks, a {region.kind.replace('_', ' ')} close-up "
                                f"needs at least {region.min_landmarks}", path,
                                HINT_LANDMARKS + " (and the scan's kind)")


def free_joints(template, kind: str, pairs: LandmarkPairs | None = None) -> np.ndarray:
    """(J,) bool: the joints that shape the region (root excluded: it carries the global rotation);
    a body's depend on its landmarks (``skeleton.body_free_joints``)."""
    names = template.joint_names
    if kind == "body":
        return body_free_joints(template, pairs)
    if kind == "head":
        return np.array([n in HEAD_JOINTS for n in names])
    suffix = ".L" if kind == "hand_left" else ".R"
    return np.array([n.endswith(suffix) and n.startswith(("wrist", "finger", "metacarpal")) for n in names])


def main_landmarks(pairs: LandmarkPairs, kind: str) -> np.ndarray:
    """(L,) bool, the landmarks the skeleton fit is centred on and reports the RMS of: the body
    ones for a body, all of a close-up's."""
    return np.asarray(pairs.kinds) == "pose" if kind == "body" else np.ones(len(pairs), dtype=bool)


def grow(template, mask: np.ndarray, rings: int) -> np.ndarray:
    """(V,) bool: ``mask`` grown by ``rings`` rings of the template's faces."""
    m = mask.copy()
    for _ in range(rings):
        m[template.faces[m[template.faces].any(1)].ravel()] = True
    return m


def similarity_landmarks(pairs: LandmarkPairs, kind: str) -> np.ndarray:
    """(L,) bool, the landmarks the similarity is estimated from: the shoulders and hips (the
    limbs may be posed anywhere), all face points, or the palm (all hand points if < 3)."""
    if kind == "body":
        return np.isin(pairs.names, TORSO_LANDMARKS)
    if kind == "head":
        return np.ones(len(pairs), dtype=bool)
    use = np.array([int(n.rsplit("_", 1)[1]) in PALM_POINTS for n in pairs.names])
    return use if use.sum() >= 3 else np.ones(len(pairs), dtype=bool)


def initial_similarity(template, pairs: LandmarkPairs, kind: str, path=None,
                       max_rms_m: float = float("inf")) -> tuple[Similarity, float]:
    """Umeyama from the template's rest landmarks to the scan's (:func:`similarity_landmarks`).
    Returns the similarity and the RMS (metres) of its landmarks; raises RegistrationError when
    they are too few, degenerate or inconsistent (scale outside 0.5-2, RMS above ``max_rms_m``)."""
    use = similarity_landmarks(pairs, kind)
    if use.sum() < 3:
        raise RegistrationError(f"{int(use.sum())} of the 4 shoulder/hip landmarks found, the similarity needs 3",
                                path, HINT_LANDMARKS + " (is the whole person visible?)")
    rest = pairs.template_points(template.rest_verts)
    try:
        sim = umeyama(rest[use], pairs.targets[use], pairs.confidence[use])
    except ValueError:
        raise RegistrationError("degenerate landmarks (all on a line)", path, HINT_LANDMARKS) from None
    rms = float(np.sqrt(((sim.apply(rest[use]) - pairs.targets[use]) ** 2).sum(1).mean()))
    if not 0.5 < sim.scale < 2.0 or rms > max_rms_m:
        if kind == "body":
            raise RegistrationError(
                f"inconsistent landmarks (shoulder/hip similarity scale {sim.scale:.2f}, RMS {rms * 100:.1f} cm)",
                path, HINT_LANDMARKS + "; left/right may be swapped or the scan may hold more than one person")
        raise RegistrationError(f"inconsistent landmarks (similarity scale {sim.scale:.2f} to the template)", path,
                                HINT_LANDMARKS + "; check --units")
    return sim, rms


def coverage_error(region: Region, near: float, path=None) -> RegistrationError:
    """The error for a region the posed template does not cover (``near``: the share within
    ``region.coverage_dist_m`` of the scan after the landmark fit)."""
    cm = region.coverage_dist_m * 100
    if region.is_body:
        return RegistrationError(f"partial body: only {near:.0%} of the template is within {cm:.0f} cm "
                                 "of the scan after the landmark fit", path, "Registration needs a whole-body scan; "
                                 "check the scan and its landmarks' contact sheet")
    return RegistrationError(f"only {near:.0%} of the template's {region.kind.replace('_', ' ')} is within {cm:.0f} cm "
                             "of the scan after the landmark fit", path,
                             HINT_LANDMARKS + "; check the scan's kind (a left hand given as hand_right?)")


def refine_region(template, posed: np.ndarray, target: ScanTarget, region: Region, pairs: LandmarkPairs,
                  device="cpu", seed: int = 0) -> tuple[np.ndarray, NonrigidResult]:
    """ACAP refinement (``nonrigid.refine_nonrigid``) of the region's sub-mesh (module docstring,
    step 3): its ``data`` vertices take scan data, its ``pins`` are stiff one-vertex "landmarks"
    at their LBS positions. Landmarks inside the sub-mesh stay as soft constraints (a head's
    none: its dense data leads). Returns the (V, 3) vertices (outside the sub-mesh: ``posed``)
    and the ``nonrigid.NonrigidResult``."""
    if region.sub.all():  # a body: the whole mesh, every landmark
        nr = refine_nonrigid(posed, template.faces, region.data, target, region.nonrigid, landmarks=pairs,
                             device=device, seed=seed)
        return nr.verts, nr
    sub_ids = np.flatnonzero(region.sub)
    local = np.full(template.n_verts, -1)
    local[sub_ids] = np.arange(len(sub_ids))
    faces = local[template.faces[region.sub[template.faces].all(1)]]
    lm = pairs if region.kind != "head" else pairs.subset(np.zeros(len(pairs), dtype=bool))
    lm = lm.subset(np.isin(lm.vertex_ids, sub_ids).all(1))
    constraints = replace(lm, vertex_ids=local[lm.vertex_ids])
    pins = region.pins
    if len(pins):
        K = pairs.vertex_ids.shape[1]
        pin_w = np.zeros((len(pins), K))
        pin_w[:, 0] = 1.0
        constraints = LandmarkPairs(
            names=tuple(lm.names) + tuple(f"pin_{v}" for v in pins), kinds=tuple(lm.kinds) + ("pose",) * len(pins),
            vertex_ids=np.concatenate([local[lm.vertex_ids], np.repeat(local[pins][:, None], K, 1)]),
            weights=np.concatenate([lm.weights, pin_w]), targets=np.concatenate([lm.targets, posed[pins]]),
            confidence=np.concatenate([lm.confidence, np.full(len(pins), region.pin_weight)]),
        )
    nr = refine_nonrigid(posed[sub_ids], faces, region.data[sub_ids], target, region.nonrigid, landmarks=constraints,
                         device=device, seed=seed)
    verts = posed.copy()
    verts[sub_ids] = nr.verts
    return verts, nr
