"""Where the virtual cameras go: a ring around the body, then close-ups of the head and hands.

GHUM (Xu et al. 2020, Sec. 3.1) renders each scan from a set of views around the body and
triangulates the 2D detections. Body keypoints need the whole person in frame; FaceMesh and the
hand model need the face/hand large in the image, so a second pass places close-up cameras at
the first-pass 3D head and wrists (the same trick as in multi-view hand-capture rigs).

All positions are metres in the package frame (+Z up). Pure functions: arrays in, cameras out.
"""

from __future__ import annotations

import numpy as np

from ghum_pipe.landmarks.render import Camera

UP = np.array([0.0, 0.0, 1.0])


def body_ring(
    verts: np.ndarray,
    azimuths: int = 8,
    upper_azimuths: int = 4,
    elevation_deg: float = 5.0,
    upper_elevation_deg: float = 35.0,
    fov_deg: float = 40.0,
    size: int = 512,
    margin: float = 1.08,
) -> list[Camera]:
    """Cameras on two rings around the +Z axis through the body's bounding-box centre.

    verts: (N, 3) scan points, metres. The lower ring (``azimuths`` views, starting at -Y =
    the template's front) looks nearly level; the upper ring (``upper_azimuths`` views, offset by
    half a step) looks down at ``upper_elevation_deg`` so feet, shoulders and hands held in front
    of the body are seen from above too. Each camera is far enough that the bounding sphere of
    the body's box fits the frame with ``margin``.
    """
    lo, hi = np.min(verts, 0), np.max(verts, 0)
    centre = (lo + hi) / 2
    # Bounding cylinder rather than sphere: a standing body is tall and thin, the sphere
    # would waste half the pixels. Half-height and horizontal radius, framed by the vertical FoV.
    half_h = (hi[2] - lo[2]) / 2
    radius = np.linalg.norm(hi[:2] - lo[:2]) / 2
    tan = np.tan(np.deg2rad(fov_deg) / 2)
    cams = []
    for n, elev, offset in ((azimuths, elevation_deg, 0.0), (upper_azimuths, upper_elevation_deg, 0.5)):
        for k in range(n):
            az = 2 * np.pi * (k + offset) / n
            el = np.deg2rad(elev)
            direction = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
            # Projected half-extent of the box seen from this elevation: height foreshortens,
            # depth extent adds. Distance from the near side of the cylinder.
            half_extent = half_h * np.cos(el) + radius * np.sin(el)
            dist = margin * half_extent / tan + radius
            cams.append(Camera.look_at(centre + dist * direction, centre, UP, fov_deg, size))
    return cams


def closeup(
    target: np.ndarray,
    view_dir: np.ndarray,
    extent_m: float,
    fov_deg: float = 30.0,
    size: int = 384,
    up: np.ndarray = UP,
) -> Camera:
    """A camera looking at ``target`` (3,) from direction ``view_dir`` (3, from target towards
    the camera), at a distance where an object of ``extent_m`` metres fills the frame height."""
    d = np.asarray(view_dir, dtype=np.float64)
    d = d / np.linalg.norm(d)
    dist = extent_m / (2 * np.tan(np.deg2rad(fov_deg) / 2))
    up = np.asarray(up, dtype=np.float64)
    if abs(d @ up) > 0.95:  # looking along up: use any other up
        up = np.cross(d, [1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.cross(d, [0.0, 1.0, 0.0])
    return Camera.look_at(np.asarray(target) + dist * d, target, up, fov_deg, size)


def rotate_about(v: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotate vector v (3,) about unit ``axis`` (3,) by ``angle_rad`` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    return (v * np.cos(angle_rad) + np.cross(axis, v) * np.sin(angle_rad)
            + axis * (axis @ v) * (1 - np.cos(angle_rad)))


def head_cameras(
    nose: np.ndarray, left_ear: np.ndarray, right_ear: np.ndarray,
    yaws_deg=(0.0, -30.0, 30.0), extent_m: float = 0.34, size: int = 384,
) -> list[Camera]:
    """Close-ups of the face from first-pass 3D landmarks (each (3,), metres).

    The face's forward direction is from the mid-ear point to the nose (independent of which
    ear is labelled left); views are that direction yawed by ``yaws_deg`` about the head's up
    axis, aimed at the point between the ears and the nose.
    """
    mid_ears = (left_ear + right_ear) / 2
    forward = nose - mid_ears
    forward = forward - (forward @ UP) * UP * 0.5  # a head tilted down is still framed from the front
    forward /= np.linalg.norm(forward)
    ear_axis = left_ear - right_ear
    head_up = np.cross(forward, ear_axis)  # roughly +Z for either labelling sign fixed below
    if head_up @ UP < 0:
        head_up = -head_up
    head_up /= np.linalg.norm(head_up)
    target = 0.6 * nose + 0.4 * mid_ears
    return [closeup(target, rotate_about(forward, head_up, np.deg2rad(y)), extent_m, size=size, up=head_up)
            for y in yaws_deg]


def hand_cameras(
    wrist: np.ndarray, index: np.ndarray, pinky: np.ndarray, elbow: np.ndarray,
    extent_m: float = 0.30, size: int = 384,
) -> list[Camera]:
    """Close-ups of one hand from first-pass 3D pose landmarks (each (3,), metres).

    MediaPipe Pose gives wrist, index and pinky knuckles per hand: their triangle spans the palm,
    its normal gives the palm and back views, and a third view looks along the thumb side.
    Cameras aim at the hand's centre (wrist pushed 40 % along the forearm direction) with the
    fingers pointing up in the image.
    """
    forearm = wrist - elbow
    forearm /= max(np.linalg.norm(forearm), 1e-9)
    knuckles = (index + pinky) / 2
    along = knuckles - wrist
    if np.linalg.norm(along) < 0.02:  # degenerate knuckles: follow the forearm
        along = forearm * 0.08
    centre = wrist + 0.9 * along
    finger_dir = along / np.linalg.norm(along)
    normal = np.cross(index - wrist, pinky - wrist)
    if np.linalg.norm(normal) < 1e-6:
        normal = np.cross(finger_dir, UP)
    normal /= np.linalg.norm(normal)
    dirs = [normal, -normal, rotate_about(normal, finger_dir, np.deg2rad(90)),
            rotate_about(normal, finger_dir, np.deg2rad(-90))]
    return [closeup(centre, d, extent_m, size=size, up=finger_dir) for d in dirs]
