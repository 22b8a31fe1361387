"""Random natural poses for the template, as (J, 3) axis-angle in world-aligned joint frames.

Conventions (see ``ghum_pipe.template.lbs``): the rest pose is Anny's A-pose, +Z up, facing -Y,
the character's left (``.L``) is +X. A joint's rotation is expressed in the world axes of the
rest pose, so the axes below are fixed world axes (X: left, -Y: forward, Z: up) or axes taken
from the rest skeleton (elbow, fingers). Right-side joints use the mirror image of a left-side
rotation: mirroring across the X = 0 plane maps an axis-angle (a, b, c) to (a, -b, -c).

Every degree of freedom is drawn from a range a person reaches without effort (roughly the
middle of the ranges in Kapandji, *The Physiology of the Joints*), and each group (an arm, a
leg, the torso, the head, the fingers) is switched on with probability ``PoseConfig.p_active``,
so a batch spans near-A-poses to clearly posed bodies. Ranges keep limbs off the torso so the
posed scans stay scannable (no arms pressed into the body, no crossed legs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ghum_pipe.template.anatomy import MIRROR, elbow_axis

SPINE = ("spine05", "spine04", "spine03", "spine02", "spine01")
NECK = ("neck01", "neck02", "neck03", "head")


@dataclass(frozen=True)
class PoseConfig:
    """Ranges in radians; signs are for the left side (mirrored for the right)."""

    p_active: float = 0.75  # probability that a joint group moves at all
    arm_abduction: tuple[float, float] = (-1.2, 0.2)  # about +Y: < 0 raises the left arm sideways
    arm_flexion: tuple[float, float] = (-1.0, 0.3)  # about +X: < 0 swings the arm forward
    elbow_flexion: tuple[float, float] = (-0.2, 1.4)  # about the elbow axis: > 0 bends more
    forearm_twist: tuple[float, float] = (-0.6, 0.6)  # about the forearm
    hip_flexion: tuple[float, float] = (-0.9, 0.2)  # about +X: < 0 lifts the thigh forward
    hip_abduction: tuple[float, float] = (-0.3, 0.05)  # about +Y: < 0 spreads the left leg
    knee_flexion: tuple[float, float] = (0.0, 1.2)  # about +X: > 0 bends the knee
    ankle_flexion: tuple[float, float] = (-0.25, 0.3)  # about +X
    torso_twist: tuple[float, float] = (-0.6, 0.6)  # about +Z, spread over the 5 spine joints
    torso_bend: tuple[float, float] = (-0.15, 0.45)  # about +X: > 0 bends forward
    torso_side: tuple[float, float] = (-0.25, 0.25)  # about +Y
    head_turn: tuple[float, float] = (-0.8, 0.8)  # about +Z, spread over neck and head
    head_nod: tuple[float, float] = (-0.35, 0.45)  # about +X: > 0 looks down
    head_tilt: tuple[float, float] = (-0.3, 0.3)  # about +Y
    finger_curl: tuple[float, float] = (0.0, 1.0)  # fraction of FINGER_CURL_MAX per finger


# Largest curl (rad) of the three joints of a finger and of the thumb, before the fingertip
# would enter the palm.
FINGER_CURL_MAX = (0.9, 1.2, 0.8)
THUMB_CURL_MAX = (0.3, 0.5, 0.6)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _compose(pose: np.ndarray, joint: int, rotvec: np.ndarray) -> None:
    """pose[joint] <- rotvec applied after the joint's current rotation (in place)."""
    r = Rotation.from_rotvec(rotvec) * Rotation.from_rotvec(pose[joint])
    pose[joint] = r.as_rotvec()


class PoseSampler:
    """Draws natural poses for one template; build once, call :meth:`sample` per scan.

    Args:
        joint_names: (J,) the template's joint names (``t.joint_names``).
        rest_joints: (J, 3) rest joint centres in metres (``t.rest_joints``); the elbow and
            finger axes are derived from them so they follow the template's own skeleton.
    """

    def __init__(self, joint_names, rest_joints: np.ndarray, config: PoseConfig = PoseConfig()):
        self.names = tuple(joint_names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.rest = np.asarray(rest_joints, dtype=np.float64)
        self.config = config
        # Elbow flexion axis: perpendicular to the upper arm and forearm of the rest pose
        # (ghum_pipe.template.anatomy, which the skeleton fit's hinge prior uses too).
        j = lambda n: self.rest[self.index[n]]  # noqa: E731
        self.elbow_axis = elbow_axis(self.names, self.rest)
        self.forearm_axis = _unit(j("wrist.L") - j("lowerarm01.L"))
        # Palm normal (left hand): the metacarpal plane's normal, signed towards the thumb
        # base, which sits on the palm side of that plane.
        knuckle_span = j("metacarpal4.L") - j("metacarpal1.L")
        hand_axis = j("metacarpal2.L") - j("wrist.L")
        palm = _unit(np.cross(knuckle_span, hand_axis))
        thumb = j("finger1-2.L") - (j("metacarpal1.L") + j("metacarpal4.L")) / 2
        self.palm_normal = palm if palm @ thumb > 0 else -palm

    def _j(self, name: str) -> int:
        return self.index[name]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random natural pose: (J, 3) float64 axis-angle, joint 0 (global) left at zero."""
        c = self.config
        pose = np.zeros((len(self.names), 3))
        u = lambda r: rng.uniform(*r)  # noqa: E731
        on = lambda: rng.random() < c.p_active  # noqa: E731
        X, Y, Z = np.eye(3)
        for side, m in (("L", np.ones(3)), ("R", MIRROR)):
            if on():  # arm: raise/lower and swing at the shoulder, bend the elbow
                _compose(pose, self._j(f"upperarm01.{side}"), m * (u(c.arm_abduction) * Y))
                _compose(pose, self._j(f"upperarm01.{side}"), m * (u(c.arm_flexion) * X))
                _compose(pose, self._j(f"lowerarm01.{side}"), m * (u(c.elbow_flexion) * self.elbow_axis))
                _compose(pose, self._j(f"lowerarm02.{side}"), m * (u(c.forearm_twist) * self.forearm_axis))
            if on():  # leg: hip flexion/abduction, knee and ankle
                _compose(pose, self._j(f"upperleg01.{side}"), m * (u(c.hip_flexion) * X))
                _compose(pose, self._j(f"upperleg01.{side}"), m * (u(c.hip_abduction) * Y))
                _compose(pose, self._j(f"lowerleg01.{side}"), m * (u(c.knee_flexion) * X))
                _compose(pose, self._j(f"foot.{side}"), m * (u(c.ankle_flexion) * X))
            if on():
                self._curl_fingers(pose, side, m, rng)
        if on():  # torso: twist and bends spread evenly over the spine
            rot = u(c.torso_twist) * Z + u(c.torso_bend) * X + u(c.torso_side) * Y
            for name in SPINE:
                _compose(pose, self._j(name), rot / len(SPINE))
        if on():  # head: turn, nod and tilt spread over the neck and head joints
            rot = u(c.head_turn) * Z + u(c.head_nod) * X + u(c.head_tilt) * Y
            for name in NECK:
                _compose(pose, self._j(name), rot / len(NECK))
        return pose

    def _curl_fingers(self, pose: np.ndarray, side: str, mirror: np.ndarray, rng: np.random.Generator) -> None:
        """Curl each finger towards the palm by its own random fraction of the maximum."""
        for finger in range(1, 6):
            frac = rng.uniform(*self.config.finger_curl)
            limits = THUMB_CURL_MAX if finger == 1 else FINGER_CURL_MAX
            for k, limit in zip((1, 2, 3), limits):
                a, b = f"finger{finger}-{k}.L", f"finger{finger}-{min(k + 1, 3)}.L"
                if a == b:  # the last phalanx points the same way as the one before it
                    a, b = f"finger{finger}-2.L", f"finger{finger}-3.L"
                bone = _unit(self.rest[self.index[b]] - self.rest[self.index[a]])
                axis = _unit(np.cross(bone, self.palm_normal))  # turns the bone towards the palm
                _compose(pose, self._j(f"finger{finger}-{k}.{side}"), mirror * (frac * limit * axis))


def random_expression(expression_names, rng: np.random.Generator, max_actions: int = 3) -> np.ndarray:
    """Sparse random facial expression: (E,) activations in [0, 1].

    Draws 1..``max_actions`` actions from a list of common, mutually compatible ones (jaw
    open, smile, blink, brow raise, pucker, ...); left/right pairs move together most of
    the time, as faces usually do.
    """
    names = list(expression_names)
    pool = [
        ("jawOpen",), ("mouthSmileLeft", "mouthSmileRight"), ("eyeBlinkLeft", "eyeBlinkRight"),
        ("browInnerUp",), ("browDownLeft", "browDownRight"), ("mouthPucker",), ("mouthFunnel",),
        ("cheekPuff",), ("mouthFrownLeft", "mouthFrownRight"), ("eyeWideLeft", "eyeWideRight"),
        ("mouthStretchLeft", "mouthStretchRight"), ("noseSneerLeft", "noseSneerRight"),
        ("eyeSquintLeft", "eyeSquintRight"), ("mouthLeft",), ("mouthRight",),
    ]
    pool = [g for g in pool if all(n in names for n in g)]
    expr = np.zeros(len(names))
    for gi in rng.choice(len(pool), size=rng.integers(1, max_actions + 1), replace=False):
        group = pool[gi]
        level = rng.uniform(0.3, 1.0)
        for n in group:
            # an asymmetric face now and then: one side at a different level
            expr[names.index(n)] = np.clip(level * (rng.uniform(0.5, 1.0) if rng.random() < 0.2 else 1.0), 0, 1)
    return expr
