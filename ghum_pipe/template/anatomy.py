"""Hinge joints of the template's skeleton: the elbows and the knees.

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
