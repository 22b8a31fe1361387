"""The synthetic population: people the template's 32-coefficient shape space does not contain.

A subject's rest shape is drawn in two layers, both seeded by the caller's generator:

1. **Anny's full phenotype model** (``anny_shapes.py``): Anny's own nonlinear mesh for an adult
   phenotype drawn uniformly over gender, muscle, weight, height, proportions in [0, 1] and age
   in [0.5, 1] (young to old adult, the template's ``ADULT_AGE_RANGE``), plus the phenotypes
   Anny hides and the template's basis never varied: cup size and firmness in [0, 1] and an
   ethnic mix (three weights in [0, 1], normalised by Anny).
2. **Person-specific soft tissue and asymmetry** Anny's targets lack, from ``N_FACTORS`` = 4
   latent factors z ~ N(0, I) through a nonlinear map (:func:`tissue_offsets`), outward along
   the rest mesh's normals on the trunk and limbs (part ``body``; head, hands, feet untouched):

   - abdominal fat: amount 14 mm * softplus(1.6 z0 + 0.5 z1 - 0.5) * (0.5 + weight), a
     Gaussian bump on the belly whose height moves with tanh(z0 - z1) (+-5 cm: high or low
     deposit), front-facing vertices only;
   - gluteofemoral fat: 12 mm * softplus(1.6 z1 - 0.5 z0 - 0.5) * (0.5 + weight), on the hips,
     buttocks and outer thighs (back- and side-facing);
   - upper-arm soft tissue: 8 mm * softplus(1.5 z2 - 0.5) on the back of both upper arms;
   - left-right asymmetry: s = tanh(z3); the arm, shoulder and chest of one side gain
     6 mm * |s| * (1 + softplus(z2)) / 2 of girth (the side is the sign of s) and the hip of
     the other side 4 mm * s * tanh(z1) (signed).

   Bone positions (rest joints) are Anny's: soft tissue does not move the skeleton.

``population="template"`` keeps the old generator (a phenotype of the template's bank, its 32
coefficients): there the truth *is* in the template's basis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ghum_pipe.ops.normals import vertex_normals
from ghum_pipe.synth.anny_shapes import PHENOTYPES, load_anny_shapes

N_FACTORS = 4
ADULT_AGE = (0.5, 1.0)
POPULATIONS = ("anny", "template")


@dataclass(frozen=True)
class Person:
    """One subject's rest shape: verts (V, 3), joints (J, 3) metres, +Z up, facing -Y;
    phenotype (11,) in :data:`PHENOTYPES` order; factors (N_FACTORS,) the latent z;
    betas (S,) the least-squares projection of verts onto the template's shape basis."""

    verts: np.ndarray
    joints: np.ndarray
    phenotype: np.ndarray
    factors: np.ndarray
    betas: np.ndarray


def draw_phenotype(rng: np.random.Generator) -> np.ndarray:
    """(11,) an adult Anny phenotype, every entry uniform in [0, 1] but age in ADULT_AGE."""
    p = rng.uniform(0.0, 1.0, size=len(PHENOTYPES))
    p[PHENOTYPES.index("age")] = rng.uniform(*ADULT_AGE)
    return p


def softplus(x):
    return np.logaddexp(0.0, x)


def _bump(verts: np.ndarray, centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(V,) anisotropic Gaussian exp(-sum(((x - c) / sigma)^2) / 2)."""
    return np.exp(-0.5 * (((verts - centre) / sigma) ** 2).sum(1))


def tissue_offsets(t, verts: np.ndarray, joints: np.ndarray, z: np.ndarray, weight: float) -> np.ndarray:
    """(V, 3) rest-space soft-tissue and asymmetry offsets (metres) of a rest mesh ``verts``
    (V, 3) with joints (J, 3), latent factors ``z`` (N_FACTORS,) and Anny weight in [0, 1]
    (see the module docstring for the map)."""
    n = vertex_normals(verts, t.faces)
    J = lambda name: joints[t.joint_index(name)]  # noqa: E731
    front, back = np.clip(-n[:, 1], 0, 1), np.clip(n[:, 1], 0, 1)
    side = np.clip(np.abs(n[:, 0]), 0, 1)
    heavy = 0.5 + weight
    amount = np.zeros(len(verts))
    # abdominal fat: a bump on the belly whose height moves with tanh(z0 - z1)
    belly = J("spine03") + np.array([0.0, -0.1, 0.05 * np.tanh(z[0] - z[1])])
    amount += 0.014 * softplus(1.6 * z[0] + 0.5 * z[1] - 0.5) * heavy * _bump(verts, belly, np.array([0.13, 0.2, 0.09])) * front
    # gluteofemoral fat: hips, buttocks, outer thighs
    glute = 0.012 * softplus(1.6 * z[1] - 0.5 * z[0] - 0.5) * heavy
    for s in ("L", "R"):
        hip = J(f"upperleg01.{s}")
        knee = J(f"lowerleg01.{s}")
        centre = hip + 0.3 * (knee - hip)
        amount += glute * _bump(verts, centre, np.array([0.1, 0.15, 0.12])) * np.clip(back + side, 0, 1)
    # upper-arm soft tissue (back of the arm)
    arm = 0.008 * softplus(1.5 * z[2] - 0.5)
    for s in ("L", "R"):
        mid = 0.5 * (J(f"upperarm01.{s}") + J(f"lowerarm01.{s}"))
        amount += arm * _bump(verts, mid, np.array([0.09, 0.06, 0.06])) * np.clip(back + 0.3, 0, 1)
    # asymmetry: one side's arm, shoulder and chest thicker; the other side's hip signed
    a = np.tanh(z[3])
    strong = "L" if a > 0 else "R"
    weak = "R" if a > 0 else "L"
    girth = 0.006 * abs(a) * (1 + softplus(z[2])) / 2
    sh = J(f"shoulder01.{strong}")
    amount += girth * _bump(verts, sh + 0.5 * (J(f"lowerarm01.{strong}") - sh), np.array([0.12, 0.1, 0.16]))
    amount += 0.004 * a * np.tanh(z[1]) * _bump(verts, J(f"upperleg01.{weak}"), np.array([0.1, 0.12, 0.1])) * side
    amount *= np.asarray(t.vertex_part_labels) == 0  # trunk and limbs only
    return amount[:, None] * n


def project_on_template(t, verts: np.ndarray) -> np.ndarray:
    """(S,) least-squares coefficients of ``verts - t.rest_verts`` (V, 3) in the template's basis."""
    B = t.shape_basis.reshape(t.n_shape, -1)
    return np.linalg.lstsq(B.T, (verts - t.rest_verts).ravel(), rcond=None)[0]


def template_residual_mm(t, verts: np.ndarray, mask: np.ndarray | None = None) -> float:
    """RMS distance (mm) of rest shapes (N, V, 3) from their best projection onto the
    template's shape space (mean + 32 coefficients), over ``mask`` vertices (default all)."""
    B = t.shape_basis.reshape(t.n_shape, -1)
    X = (np.asarray(verts) - t.rest_verts).reshape(len(verts), -1)
    c = np.linalg.lstsq(B.T, X.T, rcond=None)[0].T
    r = (X - c @ B).reshape(len(verts), -1, 3)
    if mask is not None:
        r = r[:, mask]
    return float(np.sqrt((r**2).sum(-1).mean()) * 1000)


def draw_person(t, rng: np.random.Generator, variation: float = 1.0) -> Person:
    """A subject of the ``anny`` population from ``rng``; ``variation`` scales the soft tissue
    and asymmetry (0 = Anny's phenotype model alone)."""
    phenotype = draw_phenotype(rng)
    z = rng.normal(size=N_FACTORS)
    verts, joints = load_anny_shapes().rest(phenotype[None])
    verts, joints = verts[0], joints[0]
    if variation:
        verts = verts + variation * tissue_offsets(t, verts, joints, z, phenotype[PHENOTYPES.index("weight")])
    return Person(verts, joints, phenotype, z, project_on_template(t, verts))
