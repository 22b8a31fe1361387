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
    margin: float = 1.06,
) -> list[Camera]:
    """Cameras on two rings around the +Z axis through the body's bounding-box centre.

    verts: (N, 3) scan points, metres. The lower ring (``azimuths`` views, starting at -Y =
    the template's front) looks nearly level; the upper ring (``upper_azimuths`` views, offset by
    half a step) looks down at ``upper_elevation_deg`` so feet, shoulders and hands held in front
    of the body are seen from above too. Each camera is placed as close as keeps every point in
    the frame with ``margin`` (the detector wants the person large).
    """
    lo, hi = np.min(verts, 0), np.max(verts, 0)
    centre = (lo + hi) / 2
    sample = verts[:: max(1, len(verts) // 4000)] - centre
    tan = np.tan(np.deg2rad(fov_deg) / 2) / margin
    cams = []
    for n, elev, offset in ((azimuths, elevation_deg, 0.0), (upper_azimuths, upper_elevation_deg, 0.5)):
        for k in range(n):
            az = 2 * np.pi * (k + offset) / n
            el = np.deg2rad(elev)
            direction = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
            # In a camera at centre + d * direction looking at the centre, a point with lateral
            # offsets (x, y) and depth offset z (towards the camera) is in frame when
            # |x|, |y| <= tan * (d - z): take the smallest d that frames every point.
            # Portrait images: the width is cut to the body's projected width (a standing body
            # is ~1/3 as wide as tall), which saves half the rays; MediaPipe pads to square itself.
            R = Camera.look_at(direction, np.zeros(3), UP, fov_deg, size).R
            local = sample @ R.T  # x right, y down, z away from the camera
            d = np.max(np.abs(local[:, :2]).max(1) / tan - local[:, 2])
            tan_x = np.max(np.abs(local[:, 0]) / (d + local[:, 2])) * margin * margin
            width = int(min(size, 16 * np.ceil(size * tan_x / np.tan(np.deg2rad(fov_deg) / 2) / 16)))
            cams.append(Camera.look_at(centre + d * direction, centre, UP, fov_deg, (width, size)))
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
    head_points: np.ndarray, forward: np.ndarray, yaws_deg=(0.0, -30.0, 30.0, -50.0, 50.0, 15.0, -15.0),
    extent_m: float = 0.34,
    size: int = 384,
) -> list[Camera]:
    """Close-ups of the face from first-pass 3D landmarks.

    head_points: (K, 3) metres, the head landmarks found (nose, eyes, ears, mouth; any subset);
    forward: (3,) the face's direction (mid-ears -> nose, or from the shoulders). Views are that
    direction yawed by ``yaws_deg`` about +Z, aimed at the head points' centre pushed 3 cm back
    (the face is at the front of the head). Best first: the caller keeps the first views with a
    clear line of sight to the face (a hand raised in front of it blocks some).
    """
    forward = np.asarray(forward, dtype=np.float64)
    forward = forward - 0.5 * (forward @ UP) * UP  # a head tilted down is still framed from the front
    forward /= np.linalg.norm(forward)
    target = np.mean(head_points, axis=0) - 0.03 * forward
    return [closeup(target, rotate_about(forward, UP, np.deg2rad(y)), extent_m, size=size) for y in yaws_deg]


def hand_centre(wrist: np.ndarray, index: np.ndarray, pinky: np.ndarray, elbow: np.ndarray | None = None) -> np.ndarray:
    """(3,) the middle of the hand: 90 % of the way from the wrist to the knuckles (index and
    pinky points of Pose); along the forearm (from ``elbow``) when the knuckles coincide."""
    along = (index + pinky) / 2 - wrist
    if np.linalg.norm(along) < 0.02 and elbow is not None:
        forearm = wrist - elbow
        along = 0.08 * forearm / max(np.linalg.norm(forearm), 1e-9)
    return wrist + 0.9 * along


def hand_cameras(
    wrist: np.ndarray, index: np.ndarray, pinky: np.ndarray, elbow: np.ndarray,
    extent_m: float = 0.30, size: int = 384,
) -> list[Camera]:
    """Close-ups of one hand from first-pass 3D pose landmarks (each (3,), metres).

    MediaPipe Pose gives wrist, index and pinky knuckles per hand: their triangle spans the palm,
    its normal gives the palm and back views, and a third view looks along the thumb side.
    Cameras aim at the hand's centre (90 % of the way from the wrist to the knuckles) with the
    fingers pointing up in the image; eight candidate directions, best first.
    """
    centre = hand_centre(wrist, index, pinky, elbow)
    finger_dir = centre - wrist
    finger_dir /= np.linalg.norm(finger_dir)
    normal = np.cross(index - wrist, pinky - wrist)
    if np.linalg.norm(normal) < 1e-6:
        normal = np.cross(finger_dir, UP)
    normal /= np.linalg.norm(normal)
    # Palm, back, both edges, then four diagonals: the caller keeps the first views whose line
    # of sight to the hand is clear (``MeshRenderer.unoccluded``).
    angles = (0, 180, 90, -90, 45, -45, 135, -135)
    dirs = [rotate_about(normal, finger_dir, np.deg2rad(a)) for a in angles]
    return [closeup(centre, d, extent_m, size=size, up=finger_dir) for d in dirs]
