"""Synthetic registrations: ground-truth meshes in the template's topology, no scanner.

``ghum-pipe synth OUT --registrations`` calls :func:`make_registrations`. It writes exactly the
work-dir layout the registration stage writes, so ``ghum-pipe train --work OUT`` reads it like
real registrations:

- ``OUT/scans/<id>/registration.ply``: the template's 13,718 vertices and faces, metres, +Z up;
- ``OUT/scans/<id>/params.npz``: ``pose (J,3)`` axis-angle, ``translation (3,)``, ``shape (S,)``,
  ``expression (E,)``, ``subject`` (str), ``kind`` (``body`` | ``head`` | ``hand_left``),
  ``mask (V,) bool`` (the filter F: vertices that saw scan data), ``transform`` 4x4 (identity:
  the file frame is the internal frame) and ``units`` (``m``);
- ``OUT/subjects.csv``: ``scan_id,subject``.

And the truth needed to score what a trained model recovers, under ``OUT/truth/``:

- ``corrective.json`` + ``corrective.npz``: the planted pose-space corrective (below);
- ``skinning.npz``: ``skin_indices (V,I)``, the planted ``skin_weights`` and the template's
  ``start_weights`` (what a model is initialised with);
- ``joints.json`` + ``joints.npz``: the planted joint-centre displacement (below);
- ``subjects/<subject>.npz``: ``rest_verts (V,3)``, ``rest_joints (J,3)`` (the true, displaced
  joint centres the scans were posed with), ``template_joints (J,3)`` (the template's own
  shape->joint map, i.e. before the displacement), ``betas``, ``phenotype``;
- ``scans/<id>.npz``: ``joints (J,3)`` posed, ``corrective (V,3)`` rest-space offsets applied.

The planted corrective (documented so its recovery can be measured): a pose-dependent rest-space
offset field added before skinning, as SMPL/GHUM pose correctives are, for four joints

    dX_v(theta) = a_k * g_k(v) * n_v * sin^2(angle_k / 2),   g_k(v) = exp(-|x_v - c_k|^2 / (2 s_k^2))

with ``angle_k`` the rotation angle of joint k's local rotation, ``n_v`` the template's rest
normal and ``c_k`` a surface point: a biceps bulge (+25 mm, elbow ``lowerarm01.L/R``) and a
buttock bulge (+20 mm, hip ``upperleg01.L/R``). ``sin^2(a/2) = (3 - tr R) / 4`` is linear in
``R - I``, the pose feature of GHUM's PSD, so a correct sparse PSD can remove all of it.

The planted joint centres (so that a learned joint regressor C has a known target): the true
rest joints are the template's shape->joint map plus, for elbows, knees, shoulders and hips,

    c_j = c_j^template(beta) + a_j + b_j * (stature - 1.8 m) / 0.3 m

with ``stature`` the subject's rest-mesh height (the shift grows with body size; over Anny's
adult phenotypes stature is 1.81 +- 0.31 m), ``|a_j|`` 1.4-2.0 cm and ``|b_j|`` 0.6-0.8 cm
(:data:`JOINT_SHIFTS`, in a per-joint frame: along the bone towards the child,
forward, and the hinge axis). Elbows, knees and hips are moved only in the plane they flex in:
``random_pose`` bends them about a fixed hinge axis, and a joint-centre shift along that axis
changes no posed vertex (it could not be recovered from any data). The rest meshes are
unchanged (joint centres act only through the pose), so the shift is visible only in posed
scans: moving joint a by d moves every vertex skinned to a's subtree by (R_parent(a) - R_a) d.

The generating skinning weights are the template's, with log-weights perturbed by smooth noise
(sigma 0.6, 10 neighbour-averaging passes) among each vertex's existing influences: learning
skinning from the template's start therefore has a known target.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ghum_pipe.io.atomic import atomic_path, write_json, write_npz
from ghum_pipe.model.truth import corrective_offsets, load_truth_corrective  # noqa: F401 (re-exported)
from ghum_pipe.synth.population import N_FACTORS, draw_person

# (name, joint (without side), where on the surface, gaussian sigma (m), amplitude (m))
CORRECTIVES = (
    ("biceps_bulge", "lowerarm01", "mid_upperarm_front", 0.035, 0.025),
    ("buttock_bulge", "upperleg01", "behind_hip", 0.045, 0.020),
)

# planted joint-centre shifts: (joint without side, a = (along bone, forward, hinge axis) m,
# b = the same per unit of (stature - 1.8 m) / 0.3 m, the child joint that defines the bone)
JOINT_SHIFTS = (
    ("lowerarm01", (0.012, 0.010, 0.0), (0.0, 0.008, 0.0), "wrist"),        # elbow
    ("lowerleg01", (-0.010, 0.015, 0.0), (0.0, 0.008, 0.0), "foot"),        # knee
    ("upperleg01", (0.010, -0.012, 0.0), (0.006, 0.0, 0.0), "lowerleg01"),  # hip
    ("upperarm01", (0.010, 0.008, 0.012), (0.0, 0.0, 0.008), "lowerarm01"),  # shoulder
)


@dataclass(frozen=True)
class RegistrationSynthOptions:
    """poses_per_subject: body scans per subject (the first is the A-pose, neutral face);
    closeups: add one head close-up and one left-hand close-up scan per subject (their mask F
    covers only that region and the rest of the mesh is corrupted, as a partial registration is);
    expression_prob: chance a scan has a random facial expression; noise_mm: per-vertex noise;
    skin_noise: std of the smooth log-weight perturbation; joint_shifts: plant the joint-centre
    displacement (False: the true joints are the template's shape->joint map); population:
    ``anny`` (rest shapes outside the template's basis, ``population.py``: subject s of seed
    S is drawn from ``default_rng([S, s, 4])``, its joints are Anny's) or ``template`` (a
    phenotype of the template's bank, its 32 coefficients and the template's joint map);
    variation: scale of the ``anny`` soft tissue and asymmetry."""

    poses_per_subject: int = 4
    closeups: bool = True
    expression_prob: float = 0.5
    noise_mm: float = 0.5
    skin_noise: float = 0.6
    joint_shifts: bool = True
    population: str = "anny"
    variation: float = 1.0


def _rest_normals(t) -> np.ndarray:
    return np.asarray(t.to_trimesh().vertex_normals, dtype=np.float64)


def _smooth_vertex_field(field: np.ndarray, faces: np.ndarray, n_verts: int, passes: int) -> np.ndarray:
    """Average a per-vertex field over 1-ring neighbours ``passes`` times (uniform Laplacian)."""
    import scipy.sparse as sp

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    A = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
    A.data[:] = 1.0
    A = A + sp.identity(n_verts)
    A = sp.diags(1.0 / np.asarray(A.sum(1)).ravel()) @ A
    for _ in range(passes):
        field = A @ field
    return field


def planted_skin_weights(t, sigma: float, seed: int) -> np.ndarray:
    """(V, I) generating weights: the template's with smooth log-noise among existing influences."""
    rng = np.random.default_rng(seed)
    noise = _smooth_vertex_field(rng.normal(size=t.skin_weights.shape), t.faces, t.n_verts, 10)
    noise /= noise.std() + 1e-12
    logw = np.log(np.clip(t.skin_weights, 1e-12, None)) + sigma * noise
    w = np.exp(logw) * (t.skin_weights > 0)
    return w / w.sum(1, keepdims=True)


def planted_corrective(t) -> dict:
    """The corrective's definition: per item a joint index and a (V, 3) rest-space field at
    full strength (sin^2 = 1). Returns {"names", "joints" (K,), "fields" (K, V, 3), "spec"}."""
    normals = _rest_normals(t)
    J = t.rest_joints
    names, joints, fields, spec = [], [], [], []
    for name, joint, where, sigma, amp in CORRECTIVES:
        for side, sx in (("L", 1.0), ("R", -1.0)):
            j = t.joint_index(f"{joint}.{side}")
            if where == "mid_upperarm_front":
                # front of the upper arm, halfway between shoulder and elbow
                mid = 0.5 * (J[t.joint_index(f"upperarm02.{side}")] + J[j])
                d = np.linalg.norm(t.rest_verts - mid, axis=1) + 1.0 * (normals @ np.array([0, -1.0, 0]) < 0.2)
                centre = t.rest_verts[np.argmin(d)]
            else:  # behind and below the hip joint
                target = J[j] + np.array([0.0 * sx, 0.09, -0.08])
                centre = t.rest_verts[np.argmin(np.linalg.norm(t.rest_verts - target, axis=1))]
            g = np.exp(-np.sum((t.rest_verts - centre) ** 2, 1) / (2 * sigma**2))
            g[g < 0.02] = 0.0  # compact support: radius 2.8 sigma
            g[t.masks["interior"]] = 0.0
            names.append(f"{name}.{side}")
            joints.append(j)
            fields.append(amp * g[:, None] * normals)
            spec.append(dict(name=f"{name}.{side}", joint=t.joint_names[j], joint_index=j, centre=centre.tolist(),
                             sigma_m=sigma, amplitude_m=amp, n_vertices=int((g > 0).sum()),
                             law="amplitude * exp(-|x-centre|^2/(2 sigma^2)) * normal * sin^2(angle/2)"))
    return dict(names=names, joints=np.array(joints), fields=np.stack(fields), spec=spec)


def planted_joint_shifts(t) -> dict:
    """The joint-centre displacement's definition: ``joints (K,)`` indices, ``a (K, 3)`` and
    ``b (K, 3)`` world-space metres (rest pose), ``names``; see :func:`joint_shift`."""
    J = t.rest_joints
    front = np.array([0.0, -1.0, 0.0])
    joints, a_w, b_w, names = [], [], [], []
    for joint, a, b, child in JOINT_SHIFTS:
        for side in ("L", "R"):
            j, c = t.joint_index(f"{joint}.{side}"), t.joint_index(f"{child}.{side}")
            u = (J[c] - J[j]) / np.linalg.norm(J[c] - J[j])  # along the bone
            f = front - (front @ u) * u
            f /= np.linalg.norm(f)  # forward, perpendicular to the bone
            n = np.cross(u, f)  # the hinge axis of random_pose's flexion (unobservable, kept 0)
            frame = np.stack([u, f, n])
            joints.append(j)
            a_w.append(np.asarray(a) @ frame)
            b_w.append(np.asarray(b) @ frame)
            names.append(t.joint_names[j])
    return dict(joints=np.array(joints), a=np.array(a_w), b=np.array(b_w), names=names)


def joint_shift(shifts: dict, n_joints: int, rest_verts: np.ndarray) -> np.ndarray:
    """(J, 3) rest-space displacement of the joint centres of one subject with rest mesh
    ``rest_verts`` (V, 3) metres, +Z up: a_j + b_j * (stature - 1.8) / 0.3 on the planted
    joints, 0 elsewhere."""
    s = (float(np.ptp(rest_verts[:, 2])) - 1.8) / 0.3
    out = np.zeros((n_joints, 3))
    out[shifts["joints"]] = shifts["a"] + s * shifts["b"]
    return out


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    return axis / np.linalg.norm(axis) * angle


def random_pose(t, rng: np.random.Generator, a_pose: bool = False) -> np.ndarray:
    """(J, 3) axis-angle: elbow and knee flexion, hip flexion, shoulder and spine motion,
    head turn, global rotation about +Z. Joint frames are world-aligned at rest."""
    pose = np.zeros((t.n_joints, 3))
    if a_pose:
        return pose
    J = t.rest_joints
    front = np.array([0.0, -1.0, 0.0])
    for side in ("L", "R"):
        ua, el, wr = (t.joint_index(f"{n}.{side}") for n in ("upperarm01", "lowerarm01", "wrist"))
        d_upper = J[el] - J[ua]
        d_fore = J[wr] - J[el]
        pose[el] = _axis_angle(np.cross(d_fore, front), rng.uniform(0.0, 2.0))  # elbow flexion
        pose[ua] = rng.normal(scale=0.3, size=3)  # shoulder
        pose[wr] = rng.normal(scale=0.2, size=3)
        hip, knee, ankle = (t.joint_index(f"{n}.{side}") for n in ("upperleg01", "lowerleg01", "foot"))
        d_thigh = J[knee] - J[hip]
        pose[hip] = _axis_angle(np.cross(d_thigh, front), rng.uniform(0.0, 1.5)) + rng.normal(scale=0.05, size=3)
        pose[knee] = _axis_angle(np.cross(J[ankle] - J[knee], -front), rng.uniform(0.0, 1.4))
        del d_upper
    for name in ("spine03", "spine01", "neck02", "head"):
        pose[t.joint_index(name)] = rng.normal(scale=0.12, size=3)
    pose[0] = np.array([0.0, 0.0, rng.uniform(-np.pi, np.pi)])
    return pose


def random_expression(t, rng: np.random.Generator) -> np.ndarray:
    """(E,) a few ARKit actions active in (0.3, 1)."""
    e = np.zeros(t.n_expression)
    e[rng.choice(t.n_expression, size=3, replace=False)] = rng.uniform(0.3, 1.0, size=3)
    return e


def write_planted_truth(out_dir: Path, t, truth: dict, extra: dict) -> None:
    """OUT/truth/{corrective,skinning,joints}.{json,npz}: the planted truth ``truth`` (skin_weights,
    corrective, shifts; ``generate.planted``) as ``model.truth.planted_truth`` reads it."""
    corr, shifts, out_dir = truth["corrective"], truth["shifts"], Path(out_dir)
    write_json(out_dir / "truth" / "corrective.json", dict(items=corr["spec"], **extra))
    write_npz(out_dir / "truth" / "corrective.npz", joints=corr["joints"], fields=corr["fields"],
              names=np.array(corr["names"]))
    write_npz(out_dir / "truth" / "skinning.npz", skin_indices=t.skin_indices, skin_weights=truth["skin_weights"],
              start_weights=t.skin_weights)
    write_npz(out_dir / "truth" / "joints.npz", joints=shifts["joints"], a=shifts["a"], b=shifts["b"],
              names=np.array(shifts["names"]))
    write_json(out_dir / "truth" / "joints.json", dict(
        law="rest joint = template shape->joint map + a + b * (stature_m - 1.8) / 0.3",
        items=[dict(joint=n, a_m=a.tolist(), b_m=b.tolist()) for n, a, b in zip(shifts["names"], shifts["a"], shifts["b"])]))


def make_registrations(out_dir: Path, count: int, seed: int = 0, **options) -> list[str]:
    """Write ``count`` synthetic subjects (several scans each) as registrations under ``out_dir``.

    Args:
        out_dir: the output work dir (``scans/``, ``subjects.csv``, ``truth/`` are created).
        count: number of subjects; each gets ``poses_per_subject`` body scans (+2 close-ups).
        seed: every random choice derives from it.
        options: fields of :class:`RegistrationSynthOptions`.
    Returns:
        the scan ids written.
    """
    from ghum_pipe.template import load_template
    from ghum_pipe.template.lbs import batch_rodrigues, lbs

    opts = RegistrationSynthOptions(**options)
    out_dir = Path(out_dir)
    t = load_template()
    rng = np.random.default_rng(seed)
    skin_w = planted_skin_weights(t, opts.skin_noise, seed + 1)
    corr = planted_corrective(t)
    tt = t.tensors()
    tt64 = t.tensors(dtype=torch.float64)
    shifts = planted_joint_shifts(t)
    write_planted_truth(out_dir, t, dict(skin_weights=skin_w, corrective=corr, shifts=shifts),
                        dict(options=asdict(opts), seed=seed))
    bank = rng.choice(np.arange(1, len(t.phenotype_bank)), size=count, replace=count > len(t.phenotype_bank) - 1)
    skin_w_t = torch.as_tensor(skin_w, dtype=torch.float64)
    ids, rows = [], []
    region = {"head": t.masks["head"] & t.masks["surface"], "hand_left": t.masks["hand_left"]}
    for s in range(count):
        subject = f"subj{seed:03d}_{s:04d}"
        if opts.population == "template":
            betas = t.phenotype_bank_betas[bank[s]]
            phenotype, factors = t.phenotype_bank[bank[s]], np.zeros(N_FACTORS)
            rest_v, rest_j = t.shaped(torch.as_tensor(betas[None], dtype=torch.float64), dtype=torch.float64)
        else:  # drawn from its own stream: the poses below stay those of the 'template' population
            person = draw_person(t, np.random.default_rng([seed, s, 4]), opts.variation)
            betas, phenotype, factors = person.betas, person.phenotype, person.factors
            rest_v, rest_j = torch.as_tensor(person.verts[None]), torch.as_tensor(person.joints[None])
        shift = torch.as_tensor(joint_shift(shifts, t.n_joints, rest_v[0].numpy()) * opts.joint_shifts)
        write_npz(out_dir / "truth" / "subjects" / f"{subject}.npz", rest_verts=rest_v[0].numpy(),
                  rest_joints=(rest_j[0] + shift).numpy(), template_joints=rest_j[0].numpy(), betas=betas,
                  phenotype=phenotype, factors=factors, population=np.array(opts.population))
        kinds = ["body"] * opts.poses_per_subject + (["head", "hand_left"] if opts.closeups else [])
        for k, kind in enumerate(kinds):
            scan_id = f"{subject}_{kind}{k:02d}"
            pose = random_pose(t, rng, a_pose=(k == 0))
            expr = random_expression(t, rng) if (k > 0 and rng.uniform() < opts.expression_prob) else np.zeros(t.n_expression)
            rot = batch_rodrigues(torch.as_tensor(pose)).numpy()
            dx = corrective_offsets(corr["fields"], corr["joints"], rot)
            e = torch.as_tensor(expr[None])
            v = rest_v + torch.einsum("be,evk->bvk", e, tt64["expression_basis"])
            j = rest_j + torch.einsum("be,ejk->bjk", e, tt64["expression_joint_basis"])
            v = v + torch.as_tensor(dx[None])
            verts, joints = lbs(v, j + shift, torch.as_tensor(rot[None]), tt["parents"], tt["skin_indices"], skin_w_t,
                                tt["levels"])
            trans = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.9, 1.1)])
            verts = verts[0].numpy() + trans + rng.normal(scale=opts.noise_mm / 1000, size=(t.n_verts, 3))
            mask = t.masks["surface"].copy()
            if kind in region:  # a region registration: only that part saw data; elsewhere it drifted
                mask = region[kind].copy()
                verts[~mask] += rng.normal(scale=0.02, size=((~mask).sum(), 3))
            _write_registration(out_dir / "scans" / scan_id, t, verts, dict(
                pose=pose.astype(np.float32), translation=trans, shape=betas, expression=expr,
                subject=np.array(subject), kind=np.array(kind), mask=mask, transform=np.eye(4), units=np.array("m")))
            write_npz(out_dir / "truth" / "scans" / f"{scan_id}.npz", joints=joints[0].numpy() + trans,
                      corrective=dx, subject=np.array(subject), kind=np.array(kind))
            ids.append(scan_id)
            rows.append((scan_id, subject))
    with atomic_path(out_dir / "subjects.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scan_id", "subject"])
            w.writerows(rows)
    return ids


def _write_registration(scan_dir: Path, t, verts: np.ndarray, params: dict) -> None:
    import trimesh

    scan_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(scan_dir / "registration.ply") as tmp:
        trimesh.Trimesh(verts, t.faces, process=False).export(tmp)
    write_npz(scan_dir / "params.npz", **params)
