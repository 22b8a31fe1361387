"""A body of another model and topology: a mannequin built from primitives (``--other-model``).

A plain untextured mesh of another body model, in metres and +Y up, so the
landmark and registration stages can be shown to work on bodies they have never seen. SMPL
assets cannot be downloaded here, so the body is a signed distance field: round cones
(capsules with two radii) and ellipsoids for the torso, pelvis, neck, head, limbs, hands (palm,
four fingers and a thumb) and feet, in an A-pose facing -Y, +Z up, joined by the polynomial
smooth minimum (Quilez, "smooth minimum", 2013) so joints blend like soft tissue; eye sockets
are carved with the smooth maximum. The zero level set is sampled on a 5 mm grid (edge
crossings with gradient normals, the vertices marching cubes would place; scikit-image is not
a dependency) and meshed by screened Poisson reconstruction (depth 9, ~3.5 mm cells), which
smooths and closes the surface and gives a tessellation unrelated to the template's.

Proportions (height, girth, arm angle, stance) vary per mannequin; the truth records the
primitives' joint centres under COCO keypoint names (plus ``head``) so landmarks can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.synth import frames
from ghum_pipe.synth.scanner import drop_islands

GRID_M = 0.005


@dataclass(frozen=True)
class Cone:
    """Round cone from a (3,) with radius ra to b (3,) with radius rb; metres."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def sdf(self, p: np.ndarray) -> np.ndarray:
        # Approximate round-cone distance: distance to the segment minus the interpolated radius
        # (exact for equal radii; the error for tapering limbs is far below the grid size).
        ab = self.b - self.a
        h = np.clip(((p - self.a) @ ab) / (ab @ ab), 0.0, 1.0)
        return np.linalg.norm(p - self.a - h[..., None] * ab, axis=-1) - (self.ra + h * (self.rb - self.ra))


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid: centre c (3,), radii r (3,); metres."""

    c: np.ndarray
    r: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.c - self.r, self.c + self.r

    def sdf(self, p: np.ndarray) -> np.ndarray:
        # First-order ellipsoid distance k0 (k0 - 1) / k1 (Quilez): exact on the surface.
        q = (p - self.c) / self.r
        k0 = np.linalg.norm(q, axis=-1)
        k1 = np.linalg.norm(q / self.r, axis=-1)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: min(a, b) rounded over a blend width k (metres)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def mannequin_parts(rng: np.random.Generator):
    """The primitives of one random mannequin (metres, +Z up, facing -Y, feet on z = 0).

    Returns (groups, carve, joints): groups is a list of (blend width k, [primitives]) unioned
    in order; carve a list of primitives subtracted (eye sockets); joints a dict name -> (3,).
    """
    s = rng.uniform(0.93, 1.07)  # overall scale: ~1.60 .. 1.84 m
    g = rng.uniform(0.85, 1.25)  # girth
    arm_drop = np.radians(rng.uniform(42, 60))  # arms below horizontal
    stance = rng.uniform(0.085, 0.12)
    P = lambda *x: np.array(x, float) * s  # noqa: E731
    J = {}
    J["left_hip"], J["right_hip"] = P(0.095, 0, 0.93), P(-0.095, 0, 0.93)
    J["left_knee"], J["right_knee"] = P(stance, -0.01, 0.51), P(-stance, -0.01, 0.51)
    J["left_ankle"], J["right_ankle"] = P(stance + 0.01, 0.01, 0.085), P(-stance - 0.01, 0.01, 0.085)
    J["left_shoulder"], J["right_shoulder"] = P(0.185, 0.0, 1.43), P(-0.185, 0.0, 1.43)
    head_c = P(0, -0.005, 1.645)
    groups, carve = [], []
    torso = [
        Ellipsoid(P(0, 0.005, 1.29), np.array([0.155, 0.105, 0.19]) * s * np.array([g, g, 1])),
        Ellipsoid(P(0, 0.0, 1.09), np.array([0.135, 0.095, 0.16]) * s * np.array([g, g, 1])),
        Ellipsoid(P(0, 0.01, 0.95), np.array([0.165, 0.105, 0.12]) * s * np.array([g, g, 1])),
        Cone(J["right_shoulder"], J["left_shoulder"], 0.055 * s * g, 0.055 * s * g),
        Cone(P(0, 0.005, 1.42), P(0, 0.005, 1.57), 0.05 * s, 0.048 * s),  # neck
        Ellipsoid(head_c, np.array([0.078, 0.095, 0.115]) * s),
        Ellipsoid(head_c + P(0, -0.045, -0.075), np.array([0.05, 0.05, 0.04]) * s),  # jaw and chin
    ]
    limbs = []
    for side, sx in (("left", 1.0), ("right", -1.0)):
        sh = J[f"{side}_shoulder"]
        arm = _unit([sx * np.cos(arm_drop), 0.0, -np.sin(arm_drop)])
        J[f"{side}_elbow"] = sh + 0.29 * s * arm
        J[f"{side}_wrist"] = J[f"{side}_elbow"] + 0.25 * s * _unit(arm + [0, -0.15, 0])
        limbs += [
            Cone(sh, J[f"{side}_elbow"], 0.055 * s * g, 0.042 * s * g),
            Cone(J[f"{side}_elbow"], J[f"{side}_wrist"], 0.04 * s * g, 0.03 * s),
            Cone(J[f"{side}_hip"] + P(0, 0.005, 0.02), J[f"{side}_knee"], 0.09 * s * g, 0.058 * s * g),
            Cone(J[f"{side}_knee"], J[f"{side}_ankle"], 0.055 * s * g, 0.035 * s),
            # foot: heel to toes, flattened by the floor cut below
            Cone(J[f"{side}_ankle"] + P(0, 0.03, -0.045), J[f"{side}_ankle"] + P(sx * 0.015, -0.17, -0.06), 0.037 * s, 0.03 * s),
        ]
        groups.append((0.012 * s, _hand(J[f"{side}_wrist"], _unit(arm + [0, -0.15, 0]), sx, s)))
        # ears and eye sockets
        torso.append(Ellipsoid(head_c + P(sx * 0.077, 0.01, 0.0), np.array([0.012, 0.022, 0.03]) * s))
        eye = head_c + P(sx * 0.033, -0.085, 0.02)
        J[f"{side}_eye"] = eye + P(0, -0.006, 0)
        J[f"{side}_ear"] = head_c + P(sx * 0.085, 0.01, 0.0)
        carve.append(Ellipsoid(eye, np.array([0.018, 0.014, 0.011]) * s))
    nose = [
        Cone(head_c + P(0, -0.09, 0.015), head_c + P(0, -0.108, -0.022), 0.008 * s, 0.012 * s),  # nose
        Ellipsoid(head_c + P(0, -0.078, 0.042), np.array([0.045, 0.014, 0.01]) * s),  # brow ridge
        Ellipsoid(head_c + P(0, -0.088, -0.055), np.array([0.022, 0.012, 0.007]) * s),  # lips
    ]
    J["nose"] = head_c + P(0, -0.118, -0.022)
    J["head"] = head_c
    groups = [(0.035 * s, torso + limbs), (0.012 * s, nose)] + groups
    return groups, carve, J


def _hand(wrist: np.ndarray, d: np.ndarray, sx: float, s: float) -> list:
    """Palm, four fingers and a thumb; the palm faces the thigh, the thumb points forward (-Y)."""
    fwd = np.array([0.0, -1.0, 0.0])
    side = _unit(np.cross(d, fwd))  # across the palm's thickness
    across = _unit(np.cross(side, d))  # across the knuckles, towards the thumb (front)
    if across @ fwd < 0:
        across = -across
    palm_c = wrist + 0.05 * s * d
    parts = [Cone(wrist + 0.01 * s * d, palm_c + 0.03 * s * d, 0.03 * s, 0.028 * s)]
    parts.append(Cone(palm_c - 0.018 * s * across, palm_c + 0.018 * s * across, 0.022 * s, 0.022 * s))
    for k, off in enumerate((0.027, 0.009, -0.009, -0.027)):
        base = palm_c + 0.04 * s * d + off * s * across
        direction = _unit(d + 0.08 * (1.5 - k) * across)
        length = (0.075, 0.085, 0.08, 0.065)[k] * s
        parts.append(Cone(base, base + length * direction, 0.0085 * s, 0.007 * s))
    tb = wrist + 0.03 * s * d + 0.028 * s * across
    parts.append(Cone(tb, tb + 0.065 * s * _unit(0.6 * d + across), 0.011 * s, 0.0085 * s))
    return parts


def mannequin_sdf_grid(groups, carve, grid_m: float = GRID_M):
    """Evaluate the field on a grid: returns (field (X, Y, Z) float32, origin (3,)).

    Each primitive is evaluated only inside its bounds plus a margin wider than any blend, so
    the field is exact wherever the surface can be (elsewhere it is a positive cap).
    """
    prims = [p for _, ps in groups for p in ps]
    lo = np.min([p.bounds()[0] for p in prims], 0) - 0.03
    hi = np.max([p.bounds()[1] for p in prims], 0) + 0.03
    lo[2] = -0.02  # the floor plane cuts the soles flat
    shape = np.ceil((hi - lo) / grid_m).astype(int) + 1
    cap = 0.06
    field = np.full(shape, cap, np.float64)
    axes = [lo[i] + grid_m * np.arange(shape[i]) for i in range(3)]

    def sub(p, margin=0.05):
        a, b = p.bounds()
        i0 = np.clip(np.floor((a - margin - lo) / grid_m).astype(int), 0, shape - 1)
        i1 = np.clip(np.ceil((b + margin - lo) / grid_m).astype(int) + 1, 0, shape)
        sl = tuple(slice(i0[i], i1[i]) for i in range(3))
        pts = np.stack(np.meshgrid(*[axes[i][sl[i]] for i in range(3)], indexing="ij"), -1)
        return sl, np.minimum(p.sdf(pts), cap)

    for k, parts in groups:
        group = np.full(shape, cap, np.float64)
        for p in parts:
            sl, d = sub(p)
            group[sl] = smooth_min(group[sl], d, k)
        field = smooth_min(field, group, 0.01)
    for p in carve:  # smooth subtraction: max(field, -carve)
        sl, d = sub(p, 0.02)
        field[sl] = -smooth_min(-field[sl], d, 0.006)
    z = axes[2][None, None, :]
    field = np.maximum(field, -z)  # floor at z = 0
    return field, lo


def zero_crossings(field: np.ndarray, origin: np.ndarray, grid_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Points where the field changes sign along grid edges (linear interpolation) and unit
    normals from the field's gradient there: (N, 3), (N, 3)."""
    grad = np.stack(np.gradient(field, grid_m), -1)
    pts, nrm = [], []
    for ax in range(3):
        lo_sl, hi_sl = [slice(None)] * 3, [slice(None)] * 3
        lo_sl[ax], hi_sl[ax] = slice(0, -1), slice(1, None)
        s0, s1 = field[tuple(lo_sl)], field[tuple(hi_sl)]
        idx = np.nonzero((s0 < 0) != (s1 < 0))  # edge from idx to idx + e_ax
        t = s0[idx] / (s0[idx] - s1[idx])
        ijk = np.stack(idx, -1).astype(float)
        ijk[:, ax] += t
        nxt = list(idx)
        nxt[ax] = nxt[ax] + 1
        n = (1 - t)[:, None] * grad[idx] + t[:, None] * grad[tuple(nxt)]
        pts.append(origin + grid_m * ijk)
        nrm.append(n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12))
    return np.concatenate(pts), np.concatenate(nrm)


def mannequin_mesh(rng: np.random.Generator, grid_m: float = GRID_M):
    """A random mannequin: verts (N, 3) metres (+Z up, facing -Y, feet on z = 0), faces (F, 3)
    and its joint centres {name: (3,)}."""
    import open3d as o3d

    groups, carve, joints = mannequin_parts(rng)
    field, origin = mannequin_sdf_grid(groups, carve, grid_m)
    pts, nrm = zero_crossings(field, origin, grid_m)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.normals = o3d.utility.Vector3dVector(nrm)
    mesh, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=9, scale=1.05, n_threads=1)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles).astype(np.int64)
    faces = drop_islands(faces, len(verts), min_frac=1.0)  # the body is the largest piece
    used = np.unique(faces)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used].copy(), remap[faces], joints


def mannequin_scan(seed: int, index: int, units: str = "m", up: str = "y", max_translation_m: float = 0.5):
    """Mannequin ``index`` of a batch as a :class:`~ghum_pipe.synth.generate.SynthScan` (no
    colours), turned to a random heading and moved, in the given units and up axis.

    Its truth has ``kind='other'``, ``joints``/``joints_m`` (K, 3) with ``joint_names`` (COCO
    names + ``head``), ``transform``, ``units``, ``up``, ``subject``; no ``verts`` (another
    topology)."""
    from ghum_pipe.synth.generate import SynthScan

    rng = np.random.default_rng([seed, index, 100])
    verts, faces, joints = mannequin_mesh(rng)
    names = sorted(joints)
    J = np.array([joints[n] for n in names])
    units, up = frames.resolve_frame(units, up, index)
    rigid = frames.random_rigid(rng, max_tilt_deg=0.0, max_translation_m=max_translation_m)
    T = frames.file_transform(units, up) @ rigid
    sid = f"other{seed}-{index:05d}"
    truth = dict(joints=frames.apply(T, J), joints_m=frames.apply(rigid, J), joint_names=np.array(names),
                 transform=T, units=np.array(units), up=np.array(up), subject=np.array(sid),
                 kind=np.array("other"))
    height = float(verts[:, 2].max() - verts[:, 2].min())
    info = dict(scan_id=sid, subject=sid, kind="other", seed=seed, index=index, units=units, up=up,
                height_m=round(height, 4), n_scan_verts=len(verts), n_scan_faces=len(faces), transform=T.tolist())
    return SynthScan(sid, frames.apply(T, verts), faces, None, None, truth, info)
