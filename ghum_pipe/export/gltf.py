"""An :class:`Avatar` as a skinned glTF 2.0 binary (.glb), and back to numpy arrays.

Written with pygltflib (the document model) and numpy (the binary buffer). Layout: one mesh
with one primitive (POSITION, NORMAL, TEXCOORD_0, JOINTS_0, WEIGHTS_0, indices, one morph
target per facial action), one skin whose joints are nodes 1..J (node j+1 = template joint j,
same names and hierarchy), node 0 = the skinned mesh, a scene with both roots. The scan's pose
is in the joint nodes' rotations, its expression in the mesh's default morph weights, the morph
names in ``mesh.extras.targetNames`` (the convention Blender, three.js and Babylon read).
"""

from __future__ import annotations

import numpy as np
import pygltflib as gl

from ghum_pipe.export.rig import Avatar

_COMPONENT = {np.float32: gl.FLOAT, np.uint32: gl.UNSIGNED_INT, np.uint16: gl.UNSIGNED_SHORT, np.uint8: gl.UNSIGNED_BYTE}
_TYPE = {1: gl.SCALAR, 2: gl.VEC2, 3: gl.VEC3, 4: gl.VEC4, 16: gl.MAT4}
_DTYPE = {gl.FLOAT: np.float32, gl.UNSIGNED_INT: np.uint32, gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_BYTE: np.uint8}
_WIDTH = {gl.SCALAR: 1, gl.VEC2: 2, gl.VEC3: 3, gl.VEC4: 4, gl.MAT4: 16}


class _Buffer:
    """Collects byte blobs into one 4-byte-aligned buffer and makes accessors for them."""

    def __init__(self, doc: gl.GLTF2):
        self.doc, self.chunks, self.size = doc, [], 0

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.size) % 4
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        self.doc.bufferViews.append(gl.BufferView(buffer=0, byteOffset=self.size, byteLength=len(data), target=target))
        self.chunks.append(data)
        self.size += len(data)
        return len(self.doc.bufferViews) - 1

    def accessor(self, array: np.ndarray, target: int | None = None, minmax: bool = False, normalized: bool = False) -> int:
        a = np.ascontiguousarray(array)
        width = 1 if a.ndim == 1 else int(np.prod(a.shape[1:]))
        flat = a.reshape(len(a), width)
        acc = gl.Accessor(bufferView=self.view(a.tobytes(), target), componentType=_COMPONENT[a.dtype.type],
                          count=len(a), type=_TYPE[width], normalized=normalized or None)
        if minmax:
            acc.min = flat.min(0).astype(float).tolist()
            acc.max = flat.max(0).astype(float).tolist()
        self.doc.accessors.append(acc)
        return len(self.doc.accessors) - 1

    def blob(self) -> bytes:
        return b"".join(self.chunks)


def avatar_to_glb(avatar: Avatar, texture_png: bytes | None = None, base_color=(0.8, 0.65, 0.55, 1.0)) -> bytes:
    """The avatar as .glb bytes. ``texture_png``: the baked texture (PNG bytes) or None."""
    a = avatar
    J = len(a.joint_names)
    doc = gl.GLTF2(asset=gl.Asset(version="2.0", generator="ghum-pipe export"))
    buf = _Buffer(doc)
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    attrs = gl.Attributes(
        POSITION=buf.accessor(f32(a.rest_verts), gl.ARRAY_BUFFER, minmax=True),
        NORMAL=buf.accessor(f32(a.normals), gl.ARRAY_BUFFER),
        # glTF's UV origin is the image's top-left, OBJ's (ours) its bottom-left
        TEXCOORD_0=buf.accessor(f32(np.column_stack([a.uvs[:, 0], 1.0 - a.uvs[:, 1]])), gl.ARRAY_BUFFER),
        JOINTS_0=buf.accessor(a.skin_joints.astype(np.uint8 if J < 256 else np.uint16), gl.ARRAY_BUFFER),
        WEIGHTS_0=buf.accessor(f32(a.skin_weights), gl.ARRAY_BUFFER),
    )
    targets = [gl.Attributes(POSITION=buf.accessor(f32(d), gl.ARRAY_BUFFER, minmax=True)) for d in a.morph_deltas]
    indices = buf.accessor(a.faces.reshape(-1).astype(np.uint32), gl.ELEMENT_ARRAY_BUFFER, minmax=True)

    material = gl.Material(name=f"{a.name}_skin", doubleSided=False,
                           pbrMetallicRoughness=gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=0.8))
    if texture_png is not None:
        doc.images.append(gl.Image(bufferView=buf.view(texture_png), mimeType="image/png", name=f"{a.name}_texture"))
        doc.samplers.append(gl.Sampler(magFilter=gl.LINEAR, minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                       wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
        doc.textures.append(gl.Texture(source=0, sampler=0))
        material.pbrMetallicRoughness.baseColorTexture = gl.TextureInfo(index=0)
    else:
        material.pbrMetallicRoughness.baseColorFactor = list(base_color)
    doc.materials.append(material)
    doc.meshes.append(gl.Mesh(
        name=a.name, weights=[float(w) for w in a.morph_weights],
        primitives=[gl.Primitive(attributes=attrs, indices=indices, material=0, mode=gl.TRIANGLES, targets=targets)],
        extras={"targetNames": list(a.morph_names)},
    ))
    quats, trans = a.quaternions_xyzw, a.local_translations
    doc.nodes.append(gl.Node(name=a.name, mesh=0, skin=0, extras=a.extras))
    children = [[] for _ in range(J)]
    for j in range(1, J):
        children[a.parents[j]].append(j + 1)
    for j in range(J):
        doc.nodes.append(gl.Node(name=a.joint_names[j], translation=trans[j].tolist(), rotation=quats[j].tolist(),
                                 children=children[j] or None))
    doc.skins.append(gl.Skin(name=f"{a.name}_skeleton", joints=list(range(1, J + 1)), skeleton=1,
                             # glTF stores matrices column-major
                             inverseBindMatrices=buf.accessor(f32(a.inverse_bind_matrices.transpose(0, 2, 1)))))
    doc.scenes.append(gl.Scene(name=a.name, nodes=[0, 1], extras=a.extras))
    doc.scene = 0
    blob = buf.blob()
    doc.buffers.append(gl.Buffer(byteLength=len(blob)))
    doc.set_binary_blob(blob)
    return b"".join(doc.save_to_bytes())


def read_accessor(doc: gl.GLTF2, index: int) -> np.ndarray:
    """An accessor's data as a (count, width) numpy array (dense accessors, as written here)."""
    acc = doc.accessors[index]
    view = doc.bufferViews[acc.bufferView]
    dtype = np.dtype(_DTYPE[acc.componentType])
    width = _WIDTH[acc.type]
    data = doc.binary_blob()
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    stride = view.byteStride or dtype.itemsize * width
    if stride == dtype.itemsize * width:
        out = np.frombuffer(data, dtype=dtype, count=acc.count * width, offset=start).reshape(acc.count, width)
    else:
        rows = [np.frombuffer(data, dtype=dtype, count=width, offset=start + i * stride) for i in range(acc.count)]
        out = np.stack(rows)
    return out.copy()


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions (x, y, z, w) -> (N, 3, 3)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64).T
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def node_world_matrices(doc: gl.GLTF2) -> np.ndarray:
    """(N, 4, 4) world matrix of every node of the default scene (TRS or matrix)."""
    n = len(doc.nodes)
    local = np.tile(np.eye(4), (n, 1, 1))
    for i, node in enumerate(doc.nodes):
        if node.matrix is not None:
            local[i] = np.asarray(node.matrix, dtype=np.float64).reshape(4, 4).T
            continue
        m = np.eye(4)
        if node.rotation is not None:
            m[:3, :3] = quat_to_matrix(np.asarray(node.rotation)[None])[0]
        if node.scale is not None:
            m[:3, :3] = m[:3, :3] * np.asarray(node.scale)[None, :]
        if node.translation is not None:
            m[:3, 3] = node.translation
        local[i] = m
    world = np.full((n, 4, 4), np.nan)
    def visit(i, parent):
        world[i] = parent @ local[i]
        for c in doc.nodes[i].children or []:
            visit(c, world[i])
    for root in doc.scenes[doc.scene or 0].nodes:
        visit(root, np.eye(4))
    return world


def skin_glb(doc: gl.GLTF2, morph_weights: np.ndarray | None = None, world: np.ndarray | None = None) -> np.ndarray:
    """(V', 3) the first skinned primitive as glTF's equations pose it, read back from the file:
    position + sum_e w_e target_e, then sum_i weight_i (joint_world_i @ IBM_i) v."""
    node = next(nd for nd in doc.nodes if nd.skin is not None and nd.mesh is not None)
    mesh, skin = doc.meshes[node.mesh], doc.skins[node.skin]
    prim = mesh.primitives[0]
    v = read_accessor(doc, prim.attributes.POSITION).astype(np.float64)
    w_m = np.asarray(mesh.weights if morph_weights is None else morph_weights, dtype=np.float64)
    for w, tgt in zip(w_m, prim.targets or []):
        if w:
            v = v + w * read_accessor(doc, tgt["POSITION"] if isinstance(tgt, dict) else tgt.POSITION)
    world = node_world_matrices(doc) if world is None else world
    ibm = read_accessor(doc, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)
    mats = world[np.asarray(skin.joints)] @ ibm
    js = read_accessor(doc, prim.attributes.JOINTS_0).astype(np.int64)
    ws = read_accessor(doc, prim.attributes.WEIGHTS_0).astype(np.float64)
    A = np.einsum("vi,vikl->vkl", ws, mats[js])
    return np.einsum("vkl,vl->vk", A[:, :3, :3], v) + A[:, :3, 3]
