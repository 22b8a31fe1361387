"""Settings of a GHUM/GHUML model and of its training, as frozen dataclasses (JSON-able)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (Xu et al. 2020, GHUM & GHUML, Sec. 3).

    resolution: ``full`` (GHUM, 13,718 vertices) or ``low`` (GHUML, ~3k vertices).
    shape_latent: beta_b size (paper: 64 GHUM, 16 GHUML).
    expression_latent: beta_f size (paper: 20).
    hidden: width of the VAE encoder/decoder MLP layers (PReLU).
    psd_radius_m: a joint's PSD may move only vertices skinned to it or its parent,
        within this distance of its centre (the sparsity pattern; the solve's ridge inside it).
    top_k: skinning influences per vertex (I).
    shape_prior_subjects: the template's shape space is the shape VAE's prior, weighted as
        this many subjects (``networks.VAE.init_pca``); 0 = the training shapes' PCA alone.
    expression_prior_scans: the same for the expression VAE: the template's expression
        blendshapes (at full activation) weighted as this many scans' face offsets; 0 = the
        data's PCA alone (from a few scans: a few directions, none the template's).
    """

    resolution: str = "full"
    shape_latent: int = 64
    expression_latent: int = 20
    hidden: int = 256
    psd_radius_m: float = 0.25
    top_k: int = 4
    shape_prior_subjects: float = 32.0
    expression_prior_scans: float = 32.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def ghum_config(**overrides) -> ModelConfig:
    return ModelConfig(**{"resolution": "full", "shape_latent": 64, **overrides})


def ghuml_config(**overrides) -> ModelConfig:
    return ModelConfig(**{"resolution": "low", "shape_latent": 16, **overrides})


@dataclass(frozen=True)
class TrainConfig:
    """Alternating training (paper Sec. 3.2): ``rounds`` of (a) per-scan pose fits with the
    model fixed (``pose_iters`` L-BFGS iterations, one Dask task per ``chunk`` scans) then (b)
    ``inner`` passes of closed-form model updates with poses fixed: per-subject rest shapes and
    per-scan expression offsets by inverse skinning, then the skinning weights (ridge
    ``skin_ridge`` towards the current ones, a step damping) and the PSD (ridge ``psd_ridge``)
    together by one least-squares problem per vertex (solvers.py), with the template as their
    prior: the weights are pulled towards the template's and D towards 0 as strongly as
    ``skin_prior_scans`` / ``psd_prior_scans`` average scans of the vertex pull them towards
    the data (``solvers.scan_prior_ridge``), so that a few scans leave the model near the
    template and many outweigh it. With ``learn_joints``, round 0 first learns
    the joint regressor C (joints.py): per-subject joint shifts, per-scan pose corrections and
    skinning logits together (at most ``joint_iters`` L-BFGS iterations per pass, fewer once 25
    iterations lower the objective by less than ``joint_rtol`` of it; after ``joint_probes``
    Hutchinson probes for the preconditioner, on at most ``joint_verts`` vertices), with a ridge
    towards the template's joints of ``joint_ridge`` per cm^2 along the directions the data
    barely sees (Gauss-Newton eigenvalue below ``joint_weak_ratio`` of the joint's largest or
    ``joint_weak_global`` of the subject's largest) and ``joint_ridge_seen`` along the others,
    a Gaussian prior on the pose corrections (``joint_pose_prior``, cm^2 per rad^2);
    ``joint_passes`` - 1 more passes with Cauchy weights
    (``joint_robust_k`` robust sigmas) so that pose correctives do not lean the centres; then
    C refitted by ridge regression towards the template's shape->joint map (its basis with
    ``joint_prior``, m^2; its intercept worth ``joint_prior_subjects`` subjects); C's step runs by subject batch
    (``--batch-scans``), then one refit over all subjects. VAEs are fitted to
    the rest shapes / expression offsets at the end (``vae_steps`` Adam steps, each on all rows up
    to ``vae_batch`` rows and on ``vae_batch`` rows drawn afresh beyond: the fit's cost then stops
    growing with the number of subjects and scans). ``holdout``: fraction of
    subjects kept out of training (for evaluate)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rounds: int = 3
    pose_iters: int = 5
    inner: int = 3
    chunk: int = 8
    psd_ridge: float = 0.2
    skin_ridge: float = 1e-4
    psd_prior_scans: float = 1.0
    skin_prior_scans: float = 1.0
    learn_joints: bool = True
    joint_ridge: float = 1.0
    joint_ridge_seen: float = 0.05
    joint_weak_ratio: float = 0.05
    joint_weak_global: float = 1e-3
    joint_passes: int = 2
    joint_robust_k: float = 3.0
    joint_prior: float = 1e-3
    joint_prior_subjects: float = 1.0
    joint_pose_prior: float = 300.0
    joint_verts: int = 2000
    joint_iters: int = 400
    joint_rtol: float = 1e-3
    joint_probes: int = 8
    vae_steps: int = 600
    vae_batch: int = 4096
    kl_weight: float = 1e-3
    holdout: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d
