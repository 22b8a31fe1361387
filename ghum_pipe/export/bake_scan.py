"""Per-scan texture baking (the shell): the scan's colours into ``W/scans/<id>/texture.png``.

Reads the scan named in ``scan.json`` and the registration (``params.npz``), bakes with
:func:`ghum_pipe.export.texture.bake_texture` and writes, atomically:
``texture.png`` (RGB, the template's UV atlas), ``texture_confidence.png`` (grey, 255 = full
confidence), ``texture_mask.png`` (255 seen, 128 unseen and filled from neighbours, 0 outside
the UV islands: padding) and ``texture.json`` (counts, settings, seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ghum_pipe.errors import ExportError, GhumPipeError
from ghum_pipe.export.texture import SEEN, BakeConfig, BakeResult, bake_texture, merge_bakes, uv_atlas
from ghum_pipe.io.atomic import atomic_path, write_json

TEXTURE_FILES = ("texture.png", "texture_confidence.png", "texture_mask.png", "texture.json")


def load_scan_for(scan_dir: Path, params: dict):
    """The scan of a registration, in the registration's internal frame:
    (scan, verts (N, 3) m, normals (N, 3) or None)."""
    from ghum_pipe.io import load_scan
    from ghum_pipe.io.frame import Frame

    meta_path = scan_dir / "scan.json"
    if not meta_path.exists():
        raise ExportError("no scan.json", meta_path, "Run `ghum-pipe run` (or `ingest`) on this scan first")
    meta = json.loads(meta_path.read_text())
    path = Path(meta["path"])
    if not path.exists():
        raise ExportError("the scan file is gone", path, f"Put it back, or bake nothing (--texture none); "
                          f"{meta_path} names it")
    kind = str(params.get("kind", meta.get("kind", "body")))
    try:
        scan = load_scan(path, units=meta.get("units"), up=meta.get("up"), kind=kind if kind != "other" else "body")
    except GhumPipeError as e:
        raise ExportError(e.message, path, e.hint) from None
    verts, normals = scan.verts, scan.normals
    if "frame" in params:  # the registration's own frame, whatever load_scan detects today
        reg_frame = Frame.from_dict(json.loads(str(params["frame"])))
        verts = reg_frame.to_internal(scan.frame.to_file(scan.verts))
        if normals is not None:
            normals = reg_frame.to_internal_normals(scan.frame.to_file_normals(normals))
    return scan, verts, normals


def bake_registration(scan_dir: str | Path, template, size: int = 2048, config: BakeConfig | None = None) -> dict:
    """Bake one registration's texture into ``scan_dir``; returns the stats (texture.json).

    ExportError when the scan has neither vertex colours nor a texture, or files are missing."""
    from ghum_pipe.export.scan import read_registration

    scan_dir = Path(scan_dir)
    cfg = config or BakeConfig(size=size)
    t0 = time.perf_counter()
    reg = read_registration(scan_dir, template)
    scan, scan_verts, scan_normals = load_scan_for(scan_dir, reg["params"])
    if scan.colors is None and (scan.texture is None or scan.uv is None):
        raise ExportError("the scan has no vertex colours and no texture: nothing to bake", scan.path,
                          "Export it untextured with --texture none")
    t_read = time.perf_counter() - t0
    res = bake_texture(reg["verts_internal"], template.faces, template.face_uvs, scan_verts, scan.faces,
                       scan_colors=scan.colors, scan_uv=scan.uv, scan_texture=scan.texture,
                       scan_normals=scan_normals, config=cfg)
    t_bake = time.perf_counter() - t0 - t_read
    write_bake_images(scan_dir, res)
    stats = dict(res.stats, config=asdict(cfg), source="texture" if scan.texture is not None and scan.uv is not None else "vertex colours",
                 seconds_read=t_read, seconds_bake=t_bake)
    write_json(scan_dir / "texture.json", stats)
    return stats


def write_bake_images(scan_dir: Path, res: BakeResult) -> None:
    """texture.png, texture_confidence.png and texture_mask.png, each atomically."""
    from PIL import Image

    for name, img in (("texture.png", res.texture), ("texture_confidence.png", np.rint(res.confidence * 255).astype(np.uint8)),
                      ("texture_mask.png", res.mask)):
        with atomic_path(Path(scan_dir) / name) as tmp:
            Image.fromarray(img).save(tmp)


def read_bake(scan_dir: Path) -> BakeResult:
    """A bake written by :func:`bake_registration` (confidence back in [0, 1] to 1/255)."""
    from PIL import Image

    scan_dir = Path(scan_dir)
    tex = np.asarray(Image.open(scan_dir / "texture.png").convert("RGB"))
    conf = np.asarray(Image.open(scan_dir / "texture_confidence.png"), dtype=np.float32) / 255.0
    mask = np.asarray(Image.open(scan_dir / "texture_mask.png"), dtype=np.uint8)
    return BakeResult(texture=tex, confidence=conf, mask=mask, stats={})


def merge_closeup_bakes(body_dir: Path, closeup_dirs: list[Path], template) -> dict:
    """Merge the baked textures of a subject's close-ups (``closeup_dirs``) into its body scan's
    (``body_dir``), in place (:func:`ghum_pipe.export.texture.merge_bakes`); ``texture.json``
    records them. All must have been baked at the same size. Returns the updated stats."""
    body_dir = Path(body_dir)
    base = read_bake(body_dir)
    closeups = [read_bake(d) for d in closeup_dirs]
    sizes = {b.texture.shape[0] for b in [base, *closeups]}
    if len(sizes) != 1:
        raise ExportError(f"the close-ups were baked at other sizes ({sorted(sizes)})", body_dir / "texture.png",
                          "Bake them together: `ghum-pipe export --texture bake` on the whole work dir")
    merged = merge_bakes(base, closeups, uv_atlas(template.face_uvs, base.texture.shape[0]))
    write_bake_images(body_dir, merged)
    stats = json.loads((body_dir / "texture.json").read_text()) if (body_dir / "texture.json").exists() else {}
    stats.update({k: v for k, v in merged.stats.items() if k in ("seen_texels", "filled_texels", "seen_fraction",
                                                                  "texels_mostly_from_closeups")},
                 merged_closeups=[Path(d).name for d in closeup_dirs],
                 seen_fraction_body_alone=float((base.mask == SEEN).sum() / max(1, (base.mask != 0).sum())))
    write_json(body_dir / "texture.json", stats)
    return stats
