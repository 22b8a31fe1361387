"""GHUM & GHUML statistical body models (Xu et al., CVPR 2020) trained from registrations.

>>> from ghum_pipe.model import GHUM
>>> m = GHUM.load("model/ghum")                  # or model/ghuml
>>> verts, joints = m(pose, shape_latent, expression_latent)
>>> verts, joints = m.sample(8)
>>> fit = m.fit(registration_verts)              # pose + latents

Layout: ``networks.py`` (VAE, sparse PSD, joint regressor, skinning), ``ghum.py`` (the model,
save/load), ``fitting.py`` (pose/latent fits), ``solvers.py`` (closed-form model updates),
``train.py`` (alternating training core), ``schedule.py`` (the same steps as Dask tasks),
``evaluate.py`` (metrics and baselines), ``plots.py``, ``commands.py`` (click).
"""

from ghum_pipe.model.config import ModelConfig, TrainConfig, ghum_config, ghuml_config
from ghum_pipe.model.ghum import GHUM

__all__ = ["GHUM", "ModelConfig", "TrainConfig", "ghum_config", "ghuml_config"]
