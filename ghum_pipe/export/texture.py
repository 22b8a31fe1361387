"""Bake a scan's colours into the template's UV atlas (pure numpy + open3d ray casting).

For every texel of the atlas (Anny's per-face-corner UVs):
1. **raster** -- the UV triangle that holds the texel centre and its barycentrics give a point
   ``p`` on the registration's surface and its interpolated normal ``n``;
2. **sample** -- rays from ``p`` along ``+n`` and ``-n`` (up to ``max_dist_m``) hit the scan; each
   hit's colour (vertex colours or the scan's own texture, interpolated at the hit) is weighted by
   normal agreement ``max(0, n . n_scan)`` and distance ``exp(-(d / sigma)^2)``, and the texel takes
   their weighted mean; the summed weight is its **confidence**;
3. **fill** -- texels with too little confidence (holes, interior parts) take the colour of the
   nearest seen texel *on the surface* (3D, so the colour never comes from another UV island;
   beyond 2 cm from any, the colour interpolated from the template vertices' nearest seen
   texels) and are marked ``FILLED`` in the mask;
4. **pad** -- texels outside every UV island take the colour of the nearest island texel in the
   image (a full dilation), so bilinear filtering and mip-maps show no dark seams.

Image convention: row 0 is the top (v = 1), as PNG and glTF store it; UVs are OBJ's (v up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.ops.normals import vertex_normals

# mask values written to texture_mask.png
OUTSIDE, FILLED, SEEN = 0, 128, 255
FILL_NEAR_M = 0.02  # unseen texels this close to a seen one take its colour


@dataclass(frozen=True)
class BakeConfig:
    size: int = 2048  # texels per side
    max_dist_m: float = 0.01  # farthest scan hit along the normal that counts
    sigma_m: float = 0.004  # distance weight exp(-(d/sigma)^2)
    min_confidence: float = 0.05  # below: unseen (filled from neighbours)


@dataclass(frozen=True)
class TexelMap:
    """Where the template's UV islands cover the image: one row per covered texel (N)."""

    rows: np.ndarray  # (N,) int
    cols: np.ndarray  # (N,) int
    face: np.ndarray  # (N,) int, the face whose UV triangle holds the texel centre
    bary: np.ndarray  # (N, 3) barycentrics of the texel centre in that triangle
    size: int
    pad_index: np.ndarray | None = None  # (S*S,) flat index of each texel's nearest covered texel

    def surface(self, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(N, C) the texels' values for per-vertex data ``verts`` (V, C) on ``faces``."""
        corner = faces[self.face]  # (N, 3)
        out = self.bary[:, :1] * verts[corner[:, 0]]
        out += self.bary[:, 1:2] * verts[corner[:, 1]]
        out += self.bary[:, 2:3] * verts[corner[:, 2]]
        return out

    def image(self, values: np.ndarray) -> np.ndarray:
        """(S, S, C): per-texel values (N, C) placed in the image, every other texel padded with
        its nearest covered texel's value (dilation over the whole image: no seams in mip-maps)."""
        S = self.size
        img = np.zeros((S * S, values.shape[1]), dtype=values.dtype)
        img[self.rows * S + self.cols] = values
        return img[self.pad_index].reshape(S, S, -1)


_ATLAS_CACHE: dict = {}


def uv_atlas(face_uvs: np.ndarray, size: int) -> TexelMap:
    """:func:`rasterize_uv` with its padding map, cached per (atlas, size) in this process: it
    depends only on the template, so a batch pays for it once (~2-8 s at 2048)."""
    import hashlib

    from scipy import ndimage

    key = (hashlib.sha1(np.ascontiguousarray(face_uvs).tobytes()).hexdigest(), int(size))
    if key not in _ATLAS_CACHE:
        tm = rasterize_uv(face_uvs, size)
        outside = np.ones((size, size), bool)
        outside[tm.rows, tm.cols] = False
        _, (ri, ci) = ndimage.distance_transform_edt(outside, return_indices=True)
        pad = (ri * size + ci).reshape(-1).astype(np.int64)
        _ATLAS_CACHE.clear()  # one atlas at a time: ~100 MB at 2048
        _ATLAS_CACHE[key] = TexelMap(tm.rows, tm.cols, tm.face, tm.bary.astype(np.float32), size, pad)
    return _ATLAS_CACHE[key]


def rasterize_uv(face_uvs: np.ndarray, size: int) -> TexelMap:
    """Texel centres inside each UV triangle; a texel two triangles share goes to the first.

    Vectorised over (face, texel-in-bounding-box) pairs: ~2x the covered texels in memory."""
    uv = face_uvs.astype(np.float64) * size  # (F, 3, 2) in texel units, x = u, y = v (up)
    lo = np.floor(uv.min(1) - 0.5).astype(np.int64) + 1  # first texel centre (c + 0.5) >= min
    hi = np.floor(uv.max(1) - 0.5).astype(np.int64)
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    w, h = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    counts = w * h
    face = np.repeat(np.arange(len(uv)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # index within the box
    x = lo[face, 0] + k % w[face]
    y = lo[face, 1] + k // w[face]
    a, b, c = uv[face, 0], uv[face, 1], uv[face, 2]
    px, py = x + 0.5, y + 0.5
    # barycentrics by signed areas
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    l0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / det
    l1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / det
    l2 = 1.0 - l0 - l1
    eps = -1e-9
    inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    x, y, face = x[inside], y[inside], face[inside]
    bary = np.column_stack([l0[inside], l1[inside], l2[inside]])
    rows = size - 1 - y  # image row 0 is v = 1
    flat = rows * size + x
    _, first = np.unique(flat, return_index=True)
    return TexelMap(rows=rows[first], cols=x[first], face=face[first], bary=bary[first], size=size)


@dataclass(frozen=True)
class BakeResult:
    texture: np.ndarray  # (S, S, 3) uint8
    confidence: np.ndarray  # (S, S) float32 in [0, 1]
    mask: np.ndarray  # (S, S) uint8: SEEN, FILLED (unseen, from neighbours), OUTSIDE (padding)
    stats: dict


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup: texture (H, W, C) uint8, uv (N, 2) OBJ convention -> (N, C) float."""
    H, W = texture.shape[:2]
    x = np.clip(uv[:, 0] * W - 0.5, 0, W - 1)
    y = np.clip((1.0 - uv[:, 1]) * H - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float32)
    return ((t[y0, x0] * (1 - fx) + t[y0, x1] * fx) * (1 - fy) + (t[y1, x0] * (1 - fx) + t[y1, x1] * fx) * fy)


def _scan_hits(points, normals, scan_verts, scan_faces, max_dist, near_m: float = 0.001):
    """Rays from each point along +normal and -normal on the scan mesh.

    The -normal ray is cast only where the +normal one found nothing within ``near_m``: a
    hit that close gets nearly full weight, and any closer hit on the other side would change
    the colour by no more than the scan's own resolution (saves ~1/3 of the rays).
    Returns (2, N) arrays: t (inf when no hit within max_dist), face id (0 when missed),
    barycentric (u, v) (2, N, 2) and the hit face's unit normal (2, N, 3)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(scan_verts.astype(np.float32)), o3d.core.Tensor(scan_faces.astype(np.uint32)))
    n = len(points)
    rays = np.empty((n, 6), np.float32)
    rays[:, :3], rays[:, 3:] = points, normals
    out = scene.cast_rays(o3d.core.Tensor(rays))
    t0 = out["t_hit"].numpy()
    t = np.full((2, n), np.inf, np.float32)
    t[0] = np.where(t0 <= max_dist, t0, np.inf)
    fid = np.zeros((2, n), np.int64)
    fid[0] = np.where(np.isfinite(t[0]), out["primitive_ids"].numpy(), 0)
    buv = np.zeros((2, n, 2), np.float32)
    fn = np.zeros((2, n, 3), np.float32)
    buv[0], fn[0] = out["primitive_uvs"].numpy(), out["primitive_normals"].numpy()
    todo = np.flatnonzero(~(t[0] <= near_m))
    back = rays[todo]
    back[:, 3:] *= -1
    ans = scene.cast_rays(o3d.core.Tensor(back))
    th = ans["t_hit"].numpy()
    hit = th <= max_dist
    idx = todo[hit]
    t[1, idx] = th[hit]
    fid[1, idx] = ans["primitive_ids"].numpy()[hit]
    buv[1, idx] = ans["primitive_uvs"].numpy()[hit]
    fn[1, idx] = ans["primitive_normals"].numpy()[hit]
    return t, fid, buv, fn


def bake_texture(
    reg_verts: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray, scan_verts: np.ndarray,
    scan_faces: np.ndarray | None, scan_colors: np.ndarray | None = None, scan_uv: np.ndarray | None = None,
    scan_texture: np.ndarray | None = None, scan_normals: np.ndarray | None = None,
    config: BakeConfig = BakeConfig(), texels: TexelMap | None = None,
) -> BakeResult:
    """Bake the scan's colours into the template's atlas.

    Args:
        reg_verts (V, 3) metres: the registration (same frame as the scan); faces (F, 3),
            face_uvs (F, 3, 2): the template's.
        scan_verts (N, 3), scan_faces (M, 3) or None for a point cloud (nearest point instead of
            rays), scan_colors (N, 3) uint8 or scan_uv (N, 2) + scan_texture (H, W, 3) uint8;
            scan_normals (N, 3) for point clouds (normal agreement), optional.
        texels: the atlas's :func:`uv_atlas` for this size (default: made, or taken from the cache).
    Returns: :class:`BakeResult`.
    """
    from pykdtree.kdtree import KDTree

    S = config.size
    tm = uv_atlas(face_uvs, S) if texels is None else texels
    # float32: 0.1 micron at 2 m, and half the memory traffic of float64 over 2.6M texels
    pn = tm.surface(np.concatenate([reg_verts, vertex_normals(reg_verts, faces)], 1).astype(np.float32), faces)
    p, n = np.ascontiguousarray(pn[:, :3]), pn[:, 3:]
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    use_texture = scan_texture is not None and scan_uv is not None
    if scan_colors is None and not use_texture:
        raise ValueError("the scan has neither vertex colours nor a texture")

    def colour_at(face_ids, buv):  # (N, 3) colour on scan faces at barycentric (u, v) (open3d's order)
        u, v = buv[:, :1], buv[:, 1:]
        tri = scan_faces[face_ids]
        if use_texture:
            uv = (1 - u - v) * scan_uv[tri[:, 0]] + u * scan_uv[tri[:, 1]] + v * scan_uv[tri[:, 2]]
            return sample_texture(scan_texture, uv)
        c = scan_colors.astype(np.float32)
        return (1 - u - v) * c[tri[:, 0]] + u * c[tri[:, 1]] + v * c[tri[:, 2]]

    sigma2 = np.float32(config.sigma_m ** 2)
    if scan_faces is not None:
        # rays only from texels within reach of the scan's bounding box (a close-up's region):
        # the others cannot hit it within max_dist_m
        lo, hi = scan_verts.min(0) - config.max_dist_m, scan_verts.max(0) + config.max_dist_m
        near = np.flatnonzero(((p >= lo) & (p <= hi)).all(1))
        hits = _scan_hits(p[near], n[near], scan_verts, scan_faces, config.max_dist_m)
        t = np.full((2, len(p)), np.inf, np.float32)
        fid, buv, fn = np.zeros((2, len(p)), np.int64), np.zeros((2, len(p), 2), np.float32), np.zeros((2, len(p), 3), np.float32)
        for full, part in zip((t, fid, buv, fn), hits):
            full[:, near] = part
        # a scan's face winding may be either way: agreement is |n . n_scan|; a miss weighs 0
        w = np.abs((fn * n[None]).sum(-1)) * np.exp(-np.square(t) / sigma2)  # (2, N)
        wsum = w[0] + w[1]
        acc = w[0][:, None] * colour_at(fid[0], buv[0])
        back = np.flatnonzero(w[1] > 0)
        acc[back] += w[1, back, None] * colour_at(fid[1, back], buv[1, back])
    else:
        d, i = KDTree(scan_verts.astype(np.float32)).query(p, k=1)
        agree = np.ones(len(p)) if scan_normals is None else np.abs(np.einsum("nc,nc->n", n, scan_normals[i]))
        w = np.where(d <= config.max_dist_m, agree * np.exp(-d ** 2 / sigma2), 0.0)
        col = sample_texture(scan_texture, scan_uv[i]) if use_texture else scan_colors[i].astype(np.float32)
        acc, wsum = w[:, None] * col, w
    seen = wsum >= config.min_confidence
    colour = np.zeros((len(p), 3), np.float32)
    colour[seen] = acc[seen] / wsum[seen, None]
    if seen.any() and (~seen).any():  # fill unseen texels from the nearest seen one on the surface
        # a subsample of the seen texels (<= ~300k, ~2 mm apart at 2048) is plenty for a fill
        # and builds its tree 8x faster than all 2.5M
        src = np.flatnonzero(seen)[:: max(1, int(seen.sum()) // 300_000)]
        tree = KDTree(p[src])
        todo = np.flatnonzero(~seen)
        # within FILL_NEAR_M of a seen texel (a hole's rim): that texel's colour; farther (the
        # rest of the body around a close-up, a missing limb): interpolated from the template
        # vertices' own nearest seen colours, which costs 13.7k searches instead of millions of
        # long ones (an unbounded search from far away visits most of the tree)
        d, j = tree.query(p[todo], k=1, distance_upper_bound=FILL_NEAR_M)
        close = np.isfinite(d)
        colour[todo[close]] = colour[src[j[close]]]
        far = todo[~close]
        if len(far):
            _, jv = tree.query(np.asarray(reg_verts, np.float32), k=1)
            vcol = colour[src[jv]]
            corner = faces[tm.face[far]]
            colour[far] = np.einsum("nk,nkc->nc", tm.bary[far].astype(np.float32), vcol[corner])
    tex = tm.image(np.clip(np.rint(colour), 0, 255).astype(np.uint8))  # pad in uint8: 4x less to move
    mask = np.full((S, S), OUTSIDE, np.uint8)
    mask[tm.rows, tm.cols] = np.where(seen, SEEN, FILLED)
    conf = np.zeros((S, S), np.float32)
    conf[tm.rows, tm.cols] = np.clip(wsum, 0, 1)
    stats = dict(covered_texels=int(len(p)), seen_texels=int(seen.sum()), filled_texels=int((~seen).sum()),
                 seen_fraction=float(seen.mean()), mean_confidence=float(np.clip(wsum, 0, 1).mean()))
    return BakeResult(texture=tex, confidence=conf, mask=mask, stats=stats)


def nearest_vertex_texture(reg_verts: np.ndarray, faces: np.ndarray, face_uvs: np.ndarray, scan_verts: np.ndarray,
                           scan_colors: np.ndarray, size: int, texels: TexelMap | None = None) -> np.ndarray:
    """The naive peer: each registration vertex takes its nearest scan vertex's colour, texels
    interpolate them across faces (Gouraud in UV). (S, S, 3) uint8, padded like :func:`bake_texture`."""
    from pykdtree.kdtree import KDTree

    tm = uv_atlas(face_uvs, size) if texels is None else texels
    _, i = KDTree(scan_verts.astype(np.float64)).query(reg_verts.astype(np.float64), k=1)
    colour = tm.surface(scan_colors[i].astype(np.float64), faces)
    return np.clip(np.rint(tm.image(colour)), 0, 255).astype(np.uint8)


def uv_seams(faces: np.ndarray, face_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mesh edges cut by the UV layout, seen from both sides.

    Returns uv_a, uv_b: (K, 2, 2) the edge's two end UVs in the first and in the second face
    (same vertex order), for every edge shared by two faces whose UVs there differ."""
    e_v = np.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1).reshape(-1, 2)  # (3F, 2)
    e_uv = np.stack([face_uvs[:, [0, 1]], face_uvs[:, [1, 2]], face_uvs[:, [2, 0]]], 1).reshape(-1, 2, 2)
    flip = e_v[:, 0] > e_v[:, 1]
    e_v = np.where(flip[:, None], e_v[:, ::-1], e_v)
    e_uv = np.where(flip[:, None, None], e_uv[:, ::-1], e_uv)
    key = e_v[:, 0].astype(np.int64) * (int(faces.max()) + 1) + e_v[:, 1]
    order = np.argsort(key, kind="stable")
    k = key[order]
    pair = np.flatnonzero(k[1:] == k[:-1])  # consecutive equal keys: an edge of two faces
    a, b = order[pair], order[pair + 1]
    seam = np.abs(e_uv[a] - e_uv[b]).max(axis=(1, 2)) > 1e-6
    return e_uv[a][seam], e_uv[b][seam]


def seam_colour_error(texture: np.ndarray, seams: tuple[np.ndarray, np.ndarray], samples: int = 5) -> float:
    """Mean absolute RGB difference (0-255) between the two sides of every UV seam, sampled
    bilinearly at ``samples`` points along each seam edge: what shows as a visible seam."""
    uv_a, uv_b = seams
    s = (np.arange(samples) + 0.5) / samples
    pa = uv_a[:, None, 0] * (1 - s)[None, :, None] + uv_a[:, None, 1] * s[None, :, None]
    pb = uv_b[:, None, 0] * (1 - s)[None, :, None] + uv_b[:, None, 1] * s[None, :, None]
    ca = sample_texture(texture, pa.reshape(-1, 2))
    cb = sample_texture(texture, pb.reshape(-1, 2))
    return float(np.abs(ca - cb).mean())


def merge_bakes(base: BakeResult, closeups: list[BakeResult], texels: TexelMap,
                closeup_weight: float = 4.0) -> BakeResult:
    """A subject's body bake with its head and hand close-ups' bakes merged in (same atlas size).

    Each texel becomes the confidence-weighted mean of the bakes that saw it, a close-up's
    confidence counting ``closeup_weight`` times (it was scanned closer and denser, so its
    colours hold finer detail); the weights fade with the close-up's own confidence at its cut
    edges, so no seam appears where it ends. Texels no bake saw keep the body's fill. The
    padding is redone from the merged islands. Returns the merged :class:`BakeResult`."""
    r, c = texels.rows, texels.cols

    def weight(b: BakeResult, k: float) -> np.ndarray:
        return np.where(b.mask[r, c] == SEEN, k * b.confidence[r, c].astype(np.float64), 0.0)

    body_w = weight(base, 1.0)
    wsum = body_w.copy()
    acc = body_w[:, None] * base.texture[r, c]
    conf = base.confidence[r, c].copy()
    for b in closeups:
        if b.texture.shape != base.texture.shape:
            raise ValueError(f"bakes of different sizes: {b.texture.shape[:2]} and {base.texture.shape[:2]}")
        wb = weight(b, closeup_weight)
        acc += wb[:, None] * b.texture[r, c]
        wsum += wb
        conf = np.maximum(conf, np.where(wb > 0, b.confidence[r, c], 0.0))
    seen = wsum > 0
    colour = base.texture[r, c].astype(np.float64)
    colour[seen] = acc[seen] / wsum[seen, None]
    tex = texels.image(np.clip(np.rint(colour), 0, 255).astype(np.uint8))
    mask = base.mask.copy()
    mask[r, c] = np.where(seen, SEEN, FILLED)
    confidence = base.confidence.copy()
    confidence[r, c] = conf
    stats = dict(base.stats, seen_texels=int(seen.sum()), filled_texels=int((~seen).sum()),
                 seen_fraction=float(seen.mean()), texels_mostly_from_closeups=int((wsum - body_w > body_w).sum()))
    return BakeResult(texture=tex, confidence=confidence, mask=mask, stats=stats)
