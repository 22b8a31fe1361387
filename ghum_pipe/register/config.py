"""Settings of a registration: :class:`RegisterConfig` (the stage's) and :class:`RegionConfig`
(its close-up branch).

A body and a close-up run the same steps with their own settings: each branch has a
``skeleton.SkeletonConfig`` (an ``IcpSchedule`` and ``Priors``) and a ``nonrigid.NonrigidConfig``
(the body's at the top of ``RegisterConfig``, a close-up's in ``RegisterConfig.region``); what
both share (scan sampling, limits, the device, the one seed) is set once, at the top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ghum_pipe.register.hands import HandConfig
from ghum_pipe.register.nonrigid import NonrigidConfig
from ghum_pipe.register.skeleton import IcpSchedule, Priors, SkeletonConfig

# a close-up is ~10x smaller than a body: narrower correspondence windows than a body's
CLOSEUP_SCHEDULE = IcpSchedule(landmark_iters=150, icp_rounds=4, icp_iters=40, icp_final_iters=40,
                               icp_landmark_scale=0.1,  # landmarks are mm-noisy: the dense data leads
                               sigma_m=(0.01, 0.003), max_dist_m=(0.03, 0.008), n_verts=3000, n_scan=3000)


def _closeup_skeleton() -> SkeletonConfig:
    # one landmark pool (face points and Pose's face names alike); fingers looser than a body's
    return SkeletonConfig(kind_weights=None, schedule=CLOSEUP_SCHEDULE, priors=Priors(finger=0.02))


@dataclass(frozen=True)
class RegionConfig:
    """Settings of a close-up registration (head, hands); metres."""

    skeleton: SkeletonConfig = field(default_factory=_closeup_skeleton)
    nonrigid: NonrigidConfig = field(default_factory=lambda: NonrigidConfig(max_dist_m=(0.02, 0.006), sigma_m=0.004))
    min_face_landmarks: int = 50
    min_hand_landmarks: int = 10
    min_coverage: float = 0.5  # share of the region within coverage_dist_m of the scan after the landmark fit
    coverage_dist_m: float = 0.02
    data_rings: int = 2  # the region grown by this many rings takes scan data in the non-rigid step
    pin_rings: int = 2  # then this many rings pinned to the LBS fit
    pin_weight: float = 50.0  # x nonrigid.w_landmark per pinned vertex


# RegisterConfig fields that only a body registration reads (left out of a close-up's hash)
BODY_FIELDS = ("skeleton", "hands", "nonrigid", "min_body_landmarks", "max_init_rms_m", "min_coverage", "coverage_dist_m")


@dataclass(frozen=True)
class RegisterConfig:
    device: str = "cpu"
    units: str | None = None  # override the scan's units, as given to `landmark` (else detected)
    up: str | None = None  # override the scan's up axis, likewise
    lowres: bool = False
    skeleton: SkeletonConfig = field(default_factory=SkeletonConfig)
    hands: HandConfig = field(default_factory=HandConfig)  # a body's hands refitted after its skeleton (hands.py)
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
    seed: int = 0  # the one seed of a registration: scan samples, ICP samples, preconditioner probes

    def to_dict(self) -> dict:
        """The settings of the branch that runs (the runner hashes this): a body's omits
        ``region``, a close-up's the body's fields (``BODY_FIELDS``), so changing a close-up
        setting does not re-run every body scan (and the reverse). With ``kind`` None: everything."""
        d = dataclasses.asdict(self)
        if self.kind == "body":
            d.pop("region")
        elif self.kind is not None:
            for k in BODY_FIELDS:
                d.pop(k)
        return d
