"""The contact sheet: every render with its detected 2D landmarks (green dots) and the
reprojected 3D landmarks (red crosses), so a person sees at a glance what went wrong (a view with
no detection has a red frame; a view whose left/right labels were swapped says so). A legend
under the tiles says what the marks mean. A scan whose landmarks could not be found still gets
its sheet, of the views that were rendered.
"""

from __future__ import annotations

import numpy as np

TILE_PX = 256
COLUMNS = 6
LEGEND_PX = 22
GREEN, RED = (20, 170, 40), (220, 30, 30)


def contact_sheet(views, names: tuple[str, ...], points: np.ndarray) -> np.ndarray:
    """Tile the views into one (H, W, 3) uint8 image.

    views: list of ``find.View``; names (L,) and points (L, 3) metres: the final 3D landmarks,
    reprojected into each view (only the names that view's detector knows, so body views show
    body points and close-ups their own).
    """
    from PIL import Image, ImageDraw

    lookup = {n: i for i, n in enumerate(names)}
    rows = (len(views) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * TILE_PX, max(rows, 1) * TILE_PX + LEGEND_PX), (255, 255, 255))
    for k, view in enumerate(views):
        img = Image.fromarray(view.rgb)
        scale = TILE_PX / max(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        group_names = _group_names(view, lookup)
        if group_names:
            uv, z = view.camera.project(points[[lookup[n] for n in group_names]])
            for (x, y), d in zip(uv * scale, z):
                if d > 0:
                    _cross(draw, x, y)
        if view.uv is not None:
            for x, y in view.uv * scale:
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=GREEN)
        else:
            draw.rectangle([0, 0, img.size[0] - 1, img.size[1] - 1], outline=RED, width=3)
        label = view.group + (" (L/R swapped)" if view.flipped else "") + ("" if view.uv is not None else ": none")
        draw.text((4, 2), label, fill=(0, 0, 0))
        x0 = (k % COLUMNS) * TILE_PX + (TILE_PX - img.size[0]) // 2  # portrait views centred
        y0 = (k // COLUMNS) * TILE_PX + (TILE_PX - img.size[1]) // 2
        sheet.paste(img, (x0, y0))
    _legend(ImageDraw.Draw(sheet), sheet.size[1] - LEGEND_PX)
    return np.asarray(sheet)


def _cross(draw, x: float, y: float) -> None:
    draw.line([(x - 3, y - 3), (x + 3, y + 3)], fill=RED)
    draw.line([(x - 3, y + 3), (x + 3, y - 3)], fill=RED)


def _legend(draw, top: int) -> None:
    """One line under the tiles saying what the marks mean."""
    y = top + LEGEND_PX // 2
    draw.ellipse([8, y - 3, 14, y + 3], fill=GREEN)
    draw.text((20, y - 6), "landmark detected in this view", fill=(0, 0, 0))
    _cross(draw, 230, y)
    draw.text((240, y - 6), "3D landmark reprojected", fill=(0, 0, 0))
    draw.rectangle([420, y - 6, 436, y + 6], outline=RED, width=2)
    draw.text((444, y - 6), "no detection in this view", fill=(0, 0, 0))
    draw.text((640, y - 6), "(L/R swapped): the view's left and right labels were exchanged", fill=(0, 0, 0))


def _group_names(view, lookup) -> list[str]:
    if view.group == "body":
        from ghum_pipe.landmarks.detect import POSE_NAMES

        cands = POSE_NAMES
    elif view.group == "head":
        cands = [n for n in lookup if n.startswith("face_")]
    else:
        cands = [n for n in lookup if n.startswith(view.group + "_")]
    return [n for n in cands if n in lookup]
