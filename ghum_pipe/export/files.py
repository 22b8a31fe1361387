"""Avatar files: an OBJ + MTL for tools without glTF, and the ``registration.json`` sidecar.

Both are in glTF's frame (metres, +Y up, facing +Z), posed like the scan, so the .obj, the
.glb and the sidecar's joints overlay; ``gltf_to_scan_file`` maps them back to the scan file.
"""

from __future__ import annotations

import io

import numpy as np

from ghum_pipe.export.rig import Avatar, Z_UP_TO_GLTF, forward_kinematics, gltf_normals, skin_mesh


def avatar_obj(avatar: Avatar, mtl_name: str, texture_name: str | None) -> tuple[str, str]:
    """(obj text, mtl text) of the avatar posed like the scan, with UVs and normals.

    The OBJ's vertices are the seam-split vertices (``registration.json['vertex_map']`` maps
    them to template vertices); ``texture_name`` is the PNG next to it, or None (flat colour)."""
    a = avatar
    posed = skin_mesh(a)
    normals = gltf_normals(posed, a.faces)
    out = io.StringIO()
    out.write(f"# ghum-pipe avatar {a.name}: metres, +Y up, posed like the scan\nmtllib {mtl_name}\no {a.name}\n")
    np.savetxt(out, posed, fmt="v %.7f %.7f %.7f")
    np.savetxt(out, a.uvs, fmt="vt %.7f %.7f")
    np.savetxt(out, normals, fmt="vn %.5f %.5f %.5f")
    out.write(f"usemtl {a.name}_skin\ns 1\n")
    f = a.faces + 1
    np.savetxt(out, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    mtl = [f"newmtl {a.name}_skin", "Ka 0 0 0", "Ks 0 0 0", "Ns 10", "d 1", "illum 1"]
    if texture_name:
        mtl += ["Kd 1 1 1", f"map_Kd {texture_name}"]
    else:
        mtl += ["Kd 0.8 0.65 0.55"]
    return out.getvalue(), "\n".join(mtl) + "\n"


def sidecar(avatar: Avatar, pose_axis_angle: np.ndarray, shape: np.ndarray, scale: float,
            translation: np.ndarray) -> dict:
    """``registration.json``: what a user needs without parsing the glTF.

    Joint positions in glTF's frame; the pose twice: as the template's axis-angle (internal
    frame, +Z up, as in params.npz) and as the glTF nodes' local quaternions."""
    a = avatar
    world = forward_kinematics(a.parents, a.local_translations, a.rotations)
    quats = a.quaternions_xyzw
    aa = np.asarray(pose_axis_angle, dtype=np.float64).reshape(-1, 3)
    return {
        "format": 1,
        "units": "m",
        "frame": "glTF: metres, +Y up, the body faces +Z; gltf_to_scan_file (4x4, row-major) maps to the scan file's frame and units",
        "gltf_to_scan_file": a.extras.get("gltf_to_scan_file"),
        "internal_to_gltf": np.pad(Z_UP_TO_GLTF, ((0, 1), (0, 1))).tolist(),
        "joint_names": list(a.joint_names),
        "parents": a.parents.tolist(),
        "rest_joints": a.rest_joints.round(7).tolist(),
        "posed_joints": world[:, :3, 3].round(7).tolist(),
        "pose": {name: {"axis_angle_internal": aa[j].round(8).tolist(),
                        "quaternion_xyzw_gltf": quats[j].round(8).tolist()}
                 for j, name in enumerate(a.joint_names)},
        "shape": np.asarray(shape, dtype=np.float64).round(8).tolist(),
        "expression": {n: round(float(w), 8) for n, w in zip(a.morph_names, a.morph_weights)},
        "scale": float(scale),
        "translation_internal_m": np.asarray(translation, dtype=np.float64).round(7).tolist(),
        "n_vertices": int(len(a.rest_verts)),
        "vertex_map": a.vertex_map.tolist(),
        **{k: v for k, v in a.extras.items() if k not in ("gltf_to_scan_file",)},
    }
