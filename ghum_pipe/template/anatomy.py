"""Hinge joints of the template's skeleton: the elbows and the knees, and the fingers' middle
and end joints (``finger_axes``, the register stage's hand prior).

An elbow or a knee bends about one axis; a rotation about any other axis of the same joint is
either impossible (knee) or belongs to the next twist joint (forearm pronation is
``lowerarm02``). The pose sampler of the synthetic scans bends them only about these axes and
the skeleton fit penalises the other components (a ball joint there lets the upper arm's
twist trade off against the forearm's, which landmarks cannot tell apart).

Axes are in the world-aligned joint frames of ``ghum_pipe.template.lbs`` (rest pose: +Z up,
facing -Y, the character's left is +X); right-side axes are the mirror image of the left's.
"""

from __future__ import annotations

import numpy as np

MIRROR = np.array([1.0, -1.0, -1.0])  # axis-angle of the mirror image across X = 0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def elbow_axis(joint_names, rest_joints: np.ndarray) -> np.ndarray:
    """Left elbow flexion axis (3,): perpendicular to the rest upper arm and forearm, so that a
    positive rotation moves the forearm further from the upper arm's direction."""
    j = {n: np.asarray(rest_joints[i], dtype=np.float64) for i, n in enumerate(joint_names)}
    upper = _unit(j["lowerarm01.L"] - j["upperarm01.L"])
    fore = _unit(j["wrist.L"] - j["lowerarm01.L"])
    return _unit(np.cross(upper, fore))


def hinge_axes(joint_names, rest_joints: np.ndarray) -> dict[str, np.ndarray]:
    """{joint name: unit axis (3,)} for both elbows (``lowerarm01``) and knees (``lowerleg01``)."""
    elbow = elbow_axis(joint_names, rest_joints)
    knee = np.array([1.0, 0.0, 0.0])
    return {"lowerarm01.L": elbow, "lowerarm01.R": MIRROR * elbow,
            "lowerleg01.L": knee, "lowerleg01.R": MIRROR * knee}


def palm_normal(joint_names, rest_joints: np.ndarray, side: str = "L") -> np.ndarray:
    """Unit normal (3,) of one hand's metacarpal plane, signed towards the thumb's base (which
    sits on the palm side of that plane)."""
    j = {n: np.asarray(rest_joints[i], dtype=np.float64) for i, n in enumerate(joint_names)}
    s = side
    palm = _unit(np.cross(j[f"metacarpal4.{s}"] - j[f"metacarpal1.{s}"], j[f"metacarpal2.{s}"] - j[f"wrist.{s}"]))
    thumb = j[f"finger1-2.{s}"] - (j[f"metacarpal1.{s}"] + j[f"metacarpal4.{s}"]) / 2
    return palm if palm @ thumb > 0 else -palm


def finger_axes(joint_names, rest_joints: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """{joint name: (kind, unit axis (3,))} for the four fingers' joints (not the thumb's).

    The middle and end joints of a finger (``finger{2-5}-2``, ``-3``: PIP, DIP) are hinges:
    kind "hinge", the flexion axis, perpendicular to the rest bone and the palm normal. The
    knuckle (``finger{2-5}-1``, MCP) also spreads the fingers but barely twists: kind "twist",
    the rest bone's direction (rotation about it is what a prior should stop). The thumb's
    joints sit at an angle to the palm that its rest skeleton does not define well; left free.
    """
    idx = {n: i for i, n in enumerate(joint_names)}
    rest = np.asarray(rest_joints, dtype=np.float64)
    out = {}
    for side in ("L", "R"):
        normal = palm_normal(joint_names, rest, side)
        for f in range(2, 6):
            for k in (1, 2, 3):
                a, b = f"finger{f}-{k}.{side}", f"finger{f}-{min(k + 1, 3)}.{side}"
                if a == b:  # the end phalanx points the way of the one before it
                    a, b = f"finger{f}-2.{side}", f"finger{f}-3.{side}"
                bone = _unit(rest[idx[b]] - rest[idx[a]])
                name = f"finger{f}-{k}.{side}"
                out[name] = ("twist", bone) if k == 1 else ("hinge", _unit(np.cross(bone, normal)))
    return out
