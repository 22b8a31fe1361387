"""Open an avatar.glb in Blender (``bpy``, Blender as a Python module) and read back what
Blender makes of it: run as ``python -m ghum_pipe.export.blender_check GLB POSES.npz OUT.npz``
in its own process (bpy owns its interpreter state; nothing else from ghum_pipe is imported).

POSES.npz: ``rel (P, J, 4, 4)``, per pose the rest-to-posed transform of every joint in the
internal frame (+Z up, which is Blender's frame after its glTF importer's Y-up conversion), as
``ghum_pipe.template.lbs.batch_rigid_transform`` returns it. Each pose is applied to Blender's
armature bone by bone (``pose_bone.matrix = rel_j @ bone.matrix_local``, parents first) and the
mesh is evaluated by Blender's own armature modifier and shape keys.

OUT.npz: ``scan_pose (V', 3)`` the mesh as imported, ``posed (P, V', 3)``, ``morph (E, V', 3)``
each facial action alone at weight 1 at rest, ``morph_names``, ``bone_names``, ``texture_size
(2,)`` (0, 0 without an image texture on the material's Base Color), all world coordinates;
``loop_vert (L,)``, ``loop_uv (L, 2)``: each face corner's vertex and UV as Blender has them.
"""

from __future__ import annotations

import sys

import numpy as np


def _world_verts(obj) -> np.ndarray:
    import bpy

    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    M = np.array(ev.matrix_world)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3)
    return co @ M[:3, :3].T + M[:3, 3]


def _texture_size(obj) -> tuple[int, int]:
    for slot in obj.material_slots:
        mat = slot.material
        if mat is None or not mat.use_nodes:
            continue
        for node in mat.node_tree.nodes:
            if node.type == "BSDF_PRINCIPLED":
                links = node.inputs["Base Color"].links
                while links:
                    src = links[0].from_node
                    if src.type == "TEX_IMAGE" and src.image is not None:
                        return tuple(src.image.size)
                    links = next((i.links for i in src.inputs if i.links), None)
    return (0, 0)


def main(glb: str, poses_npz: str, out_npz: str) -> None:
    import bpy
    from mathutils import Matrix

    bpy.ops.wm.read_factory_settings(use_empty=True)
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    bpy.ops.import_scene.gltf(filepath=glb)
    mesh = next(o for o in bpy.data.objects if o.type == "MESH" and o.find_armature() is not None)
    arm = mesh.find_armature()
    if not np.allclose(np.array(arm.matrix_world), np.eye(4), atol=1e-9):
        raise SystemExit(f"armature object is not at the origin: {np.array(arm.matrix_world)}")
    scan_pose = _world_verts(mesh)
    bone_names = [b.name for b in arm.data.bones]
    rel = np.load(poses_npz)["rel"]
    # the glb's joint order is the template's; Blender keeps the names
    order = list(np.load(poses_npz)["joint_names"])
    depth = {}
    for b in arm.data.bones:
        d, p = 0, b.parent
        while p is not None:
            d, p = d + 1, p.parent
        depth[b.name] = d
    levels = [[n for n in order if depth[n] == d] for d in range(max(depth.values()) + 1)]
    posed = []
    for r in rel:
        for level in levels:
            for name in level:
                j = order.index(name)
                arm.pose.bones[name].matrix = Matrix(r[j].tolist()) @ arm.data.bones[name].matrix_local
            bpy.context.view_layer.update()
        posed.append(_world_verts(mesh))
    for pb in arm.pose.bones:
        pb.matrix_basis = Matrix.Identity(4)
    keys = mesh.data.shape_keys.key_blocks if mesh.data.shape_keys else []
    names = [k.name for k in keys][1:]
    morph = []
    for k in keys[1:]:
        k.value = 0.0
    for k in keys[1:]:
        k.value = 1.0
        bpy.context.view_layer.update()
        morph.append(_world_verts(mesh))
        k.value = 0.0
    me = mesh.data
    loop_vert = np.empty(len(me.loops), np.int64)
    me.loops.foreach_get("vertex_index", loop_vert)
    loop_uv = np.empty(len(me.loops) * 2)
    me.uv_layers[0].data.foreach_get("uv", loop_uv)
    np.savez(out_npz, scan_pose=scan_pose, loop_vert=loop_vert, loop_uv=loop_uv.reshape(-1, 2), posed=np.array(posed), morph=np.array(morph).reshape(len(morph), -1, 3),
             morph_names=np.array(names), bone_names=np.array(bone_names),
             texture_size=np.array(_texture_size(mesh)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
