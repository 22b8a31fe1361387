"""Per-scan landmark stage (thin shell): load a scan with the frame and kind ingest recorded
(``scan.json``), find landmarks, write landmarks.json and the contact sheet in the scan file's own
frame and units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LandmarkConfig:
    """Settings of the landmark stage (hashed by the runner for resumability).

    Image sizes are what the detectors need: BlazePose runs at 256 px internally, so 512 px
    body views leave margin for the person's bounding box; FaceMesh/Hands crop to 192/224 px,
    so 320 px close-ups are plenty.
    """

    ring_views: int = 8  # lower ring, nearly level
    upper_ring_views: int = 4  # upper ring, looking down 35 degrees
    body_size: int = 512  # px, body view height (width cut to the body's projected width)
    fov_deg: float = 40.0
    closeup_size: int = 320  # px, head and hand close-ups
    face_views: int = 3  # head close-ups (the first ones with a clear line of sight)
    hand_views: int = 6  # close-ups per hand (likewise; 6 vs 4: curled fingertips 11.8 -> 8.9 mm)
    # Body and hand views are shaded in plain skin, as the template was when its landmarks were
    # defined: clothing edges and hair then do not move MediaPipe's hips and ears (on synthetic
    # scans with shorts and hair: hips 35-60 mm -> 20-35 mm off). Head close-ups keep the scan's
    # colours, which help FaceMesh (eyebrows, lips).
    body_colors: bool = False
    face_colors: bool = True
    face: bool = True
    hands: bool = True
    min_score: float = 0.5  # MediaPipe visibility below this: not an observation
    min_person_views: int = 3  # fewer views with a person -> LandmarkError
    body_thr_frac: float = 0.02  # RANSAC inlier threshold, fraction of the body image size
    closeup_thr_frac: float = 0.025  # same for close-ups
    contact_sheet: bool = True
    units: str | None = None  # override the scan's units (else from the file/heuristics)
    up: str | None = None  # override the scan's up axis
    # body | head | hand_left | hand_right; None = from kinds.csv next to the scan or the id suffix
    # (ghum_pipe.io.kinds; the batch runner sets it per scan). Close-ups: landmarks/closeup_scan.py
    kind: str | None = None
    # open3d ray casting on the CPU, or pytorch3d rasterisation on CUDA (opt-in; landmarks/renderers.py)
    renderer: str = "open3d"

    def to_dict(self) -> dict:
        return asdict(self)


def landmarks_json(found, frame) -> dict:
    """The landmarks.json document (DEVELOPERS.md contract) for ``found`` in the file ``frame``."""
    return {
        "names": list(found.names),
        "points": frame.to_file(found.points).tolist(),
        "confidence": [round(float(c), 4) for c in found.confidence],
        "kind": list(found.kinds),
        "views_used": [int(v) for v in found.views_used],
        "reproj_error_px": [round(float(e), 3) for e in found.reproj_error_px],
        "units": frame.units,
        "up": frame.up,
        "frame": frame.to_dict(),
        "person_views": found.person_views,
        "body_views": found.body_views,
        "swapped_views": found.swapped_views,
    }


def write_contact_sheet(scan_dir, views, names, points) -> None:
    """``scan_dir/views/contact_sheet.png`` (``contact_sheet.contact_sheet``), written atomically."""
    from pathlib import Path

    from PIL import Image

    from ghum_pipe.io.atomic import atomic_path
    from ghum_pipe.landmarks.contact_sheet import contact_sheet

    sheet = contact_sheet(views, names, points)
    with atomic_path(Path(scan_dir) / "views" / "contact_sheet.png") as tmp:
        Image.fromarray(sheet).save(tmp, compress_level=1)  # fast; it is a preview


def run_landmarks(scan_path, scan_dir, config: LandmarkConfig | None = None) -> dict:
    """Find the landmarks of one scan and write them (called by the runner; usable directly).

    Writes ``scan_dir/landmarks.json`` (points in the scan file's frame and units) and
    ``scan_dir/views/contact_sheet.png`` atomically; returns metrics (counts, timings in s).
    Raises ``LandmarkError`` (no person in enough views, cloud too sparse) or ``ScanError``
    (unreadable scan); then nothing is written but the contact sheet of the views that were
    rendered (what the detector saw is the first thing to look at).
    """
    import time
    from pathlib import Path

    import numpy as np

    from ghum_pipe.errors import LandmarkError
    from ghum_pipe.io.atomic import write_json
    from ghum_pipe.io.scan_record import load_recorded_scan
    from ghum_pipe.landmarks.find import find_landmarks

    config = config or LandmarkConfig()
    scan_dir = Path(scan_dir)
    t0 = time.perf_counter()
    # the frame and kind ingest recorded in scan_dir/scan.json (detected here only without one)
    scan, record = load_recorded_scan(scan_path, scan_dir, config.units, config.up, config.kind)
    verts, faces, colors = scan.verts, scan.faces, scan.colors
    if scan.is_point_cloud:
        from ghum_pipe.landmarks.pointcloud import mesh_point_cloud

        verts, faces, nearest = mesh_point_cloud(scan.verts, scan.normals, source=scan_path)
        colors = None if colors is None else colors[nearest]
    t_load = time.perf_counter() - t0
    kind = record.kind
    try:
        if kind == "body":
            found = find_landmarks(verts, faces, colors, config, source=scan_path)
        else:
            from ghum_pipe.landmarks.closeup_scan import find_closeup_landmarks

            found = find_closeup_landmarks(verts, faces, colors, kind, config, source=scan_path)
    except LandmarkError as e:
        if config.contact_sheet and getattr(e, "views", None):
            write_contact_sheet(scan_dir, e.views, (), np.zeros((0, 3)))
        raise
    doc = landmarks_json(found, scan.frame)
    doc["scan_kind"] = kind
    timings = {"load": t_load, **found.timings}
    doc["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    t0 = time.perf_counter()
    if config.contact_sheet:
        write_contact_sheet(scan_dir, found.views, found.names, found.points)
    write_json(scan_dir / "landmarks.json", doc)
    timings["write"] = time.perf_counter() - t0
    groups = {"body": [n for n in found.names if not n.startswith(("face_", "left_hand_", "right_hand_"))],
              "face": [n for n in found.names if n.startswith("face_")],
              "hands": [n for n in found.names if n.startswith(("left_hand_", "right_hand_"))]}
    return {
        "n_landmarks": len(found.names),
        "scan_kind": kind,
        **{f"n_{g}": len(v) for g, v in groups.items()},
        "person_views": found.person_views,
        "body_views": found.body_views,
        "swapped_views": found.swapped_views,
        "mean_confidence": float(np.mean(found.confidence)) if len(found.names) else 0.0,
        "median_reproj_error_px": float(np.nanmedian(found.reproj_error_px)) if len(found.names) else float("nan"),
        **{f"time_{k}_s": round(v, 3) for k, v in timings.items()},
    }
