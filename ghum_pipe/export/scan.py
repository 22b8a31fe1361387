"""Per-scan export (the shell): read a registration, write its avatar files atomically.

``export_registration(scan_dir, out_dir, template)`` reads ``scan_dir/registration.ply`` and
``params.npz`` and writes into ``out_dir`` (default ``scan_dir``): ``avatar.glb``,
``avatar.obj`` + ``avatar.mtl`` (+ ``texture.png`` when one is given or baked), and
``registration.json``. Before writing, the avatar is posed by glTF's equations and compared
with ``registration.ply``: a file that would not reproduce the registration is never written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ghum_pipe.errors import ExportError
from ghum_pipe.export.files import avatar_obj, sidecar
from ghum_pipe.export.gltf import avatar_to_glb
from ghum_pipe.export.rig import Z_UP_TO_GLTF, Avatar, build_avatar, skin_mesh
from ghum_pipe.io.atomic import atomic_path, write_json

# The export is checked against registration.ply before anything is written; the spec's bound.
MAX_ROUNDTRIP_MM = 0.5
HINT_REREGISTER = "Re-run `ghum-pipe register` on this scan"
AVATAR_FILES = ("avatar.glb", "avatar.obj", "avatar.mtl", "registration.json")


def read_registration(scan_dir: Path, template) -> dict:
    """params.npz + registration.ply -> dict of arrays (internal frame); ExportError if unusable."""
    ply, npz = scan_dir / "registration.ply", scan_dir / "params.npz"
    for p in (ply, npz):
        if not p.exists():
            raise ExportError(f"no {p.name}", p, "Run `ghum-pipe register` (or `run`) on this scan first")
    try:
        with np.load(npz) as z:
            params = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ExportError(f"unreadable ({e})", npz, HINT_REREGISTER) from None
    missing = [k for k in ("pose", "shape", "translation", "offsets", "frame_matrix") if k not in params]
    if missing:
        raise ExportError(f"missing {', '.join(missing)}", npz, HINT_REREGISTER)
    th = str(params.get("template_hash", ""))
    if th and th != template.hash:
        raise ExportError(f"registered to another template (hash {th}, this one {template.hash})", npz,
                          "Re-register with this ghum-pipe, or export with the ghum-pipe that registered it")
    if params["offsets"].shape != (template.n_verts, 3) or params["pose"].shape != (template.n_joints, 3):
        raise ExportError(f"offsets {params['offsets'].shape} / pose {params['pose'].shape} do not fit the template "
                          f"({template.n_verts} vertices, {template.n_joints} joints)", npz, HINT_REREGISTER)
    import trimesh

    try:
        mesh = trimesh.load(ply, process=False, force="mesh")
        verts_file = np.asarray(mesh.vertices, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise ExportError(f"unreadable ({e})", ply, HINT_REREGISTER) from None
    if verts_file.shape != (template.n_verts, 3):
        raise ExportError(f"{len(verts_file)} vertices, the template has {template.n_verts}", ply, HINT_REREGISTER)
    M = np.asarray(params["frame_matrix"], dtype=np.float64)  # internal -> file
    verts = (verts_file - M[:3, 3]) @ np.linalg.inv(M[:3, :3]).T
    return dict(params=params, verts_internal=verts, frame_matrix=M, ply=ply)


def avatar_from_registration(reg: dict, template, name: str) -> Avatar:
    """The avatar of a registration read by :func:`read_registration`."""
    p = reg["params"]
    M = reg["frame_matrix"]
    gltf_to_file = M @ np.pad(Z_UP_TO_GLTF.T, ((0, 1), (0, 1)))
    gltf_to_file[3, 3] = 1.0
    frame = json.loads(str(p["frame"])) if "frame" in p else None
    extras = {"ghum_pipe": {"scan_id": name, "template_hash": template.hash, "kind": str(p.get("kind", "body"))},
              "gltf_to_scan_file": gltf_to_file.tolist(), "scan_frame": frame}
    return build_avatar(template, p["shape"], p["pose"], p.get("expression"), p["offsets"],
                        float(p.get("scale", 1.0)), p["translation"], name=name, extras=extras)


def roundtrip_error_mm(avatar: Avatar, verts_internal: np.ndarray) -> float:
    """Max distance (mm) between the avatar posed by glTF's skinning and the registration."""
    ref = verts_internal[avatar.vertex_map] @ Z_UP_TO_GLTF.T
    return float(np.linalg.norm(skin_mesh(avatar) - ref, axis=1).max() * 1e3)


def export_registration(scan_dir: str | Path, out_dir: str | Path | None, template,
                        texture: str | Path | None = None) -> dict:
    """Write the avatar files of one registration; returns {"files": [...], "roundtrip_max_mm"}.

    ``texture``: a PNG in the template's UV atlas (e.g. the baked ``texture.png``) or None.
    Raises ExportError (one line) for a missing or inconsistent registration."""
    scan_dir = Path(scan_dir)
    out_dir = scan_dir if out_dir is None else Path(out_dir)
    name = scan_dir.name
    reg = read_registration(scan_dir, template)
    avatar = avatar_from_registration(reg, template, name)
    err = roundtrip_error_mm(avatar, reg["verts_internal"])
    if err > MAX_ROUNDTRIP_MM:
        raise ExportError(f"params.npz does not reproduce registration.ply (max {err:.2f} mm, limit "
                          f"{MAX_ROUNDTRIP_MM} mm)", reg["ply"], HINT_REREGISTER)
    png = None
    if texture is not None:
        texture = Path(texture)
        if not texture.exists():
            raise ExportError("no texture", texture, "Bake one with `ghum-pipe export --texture bake`")
        png = texture.read_bytes()
    p = reg["params"]
    meta = sidecar(avatar, p["pose"], p["shape"], float(p.get("scale", 1.0)), p["translation"])
    copy = texture is not None and texture.resolve() != (out_dir / "texture.png").resolve()
    files = write_avatar(avatar, out_dir, png, meta, copy_texture=copy)
    return {"files": [str(f) for f in files], "roundtrip_max_mm": err}


def write_avatar(avatar: Avatar, out_dir: Path, texture_png: bytes | None, meta: dict,
                 copy_texture: bool = True) -> list[Path]:
    """avatar.glb, avatar.obj/.mtl, registration.json (and texture.png unless it is already
    there: ``copy_texture=False``) into out_dir, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if texture_png is not None and copy_texture:
        with atomic_path(out_dir / "texture.png") as tmp:
            tmp.write_bytes(texture_png)
        written.append(out_dir / "texture.png")
    obj, mtl = avatar_obj(avatar, "avatar.mtl", "texture.png" if texture_png is not None else None)
    for fname, data in (("avatar.glb", avatar_to_glb(avatar, texture_png)), ("avatar.obj", obj.encode()),
                        ("avatar.mtl", mtl.encode())):
        with atomic_path(out_dir / fname) as tmp:
            tmp.write_bytes(data)
        written.append(out_dir / fname)
    write_json(out_dir / "registration.json", meta)
    written.append(out_dir / "registration.json")
    return written
