"""Registration of the rigged template to body scans (GHUM pipeline, Xu et al. CVPR 2020, sec. 3.1).

Stages, each a small pure function (internal frame: metres, +Z up):
``similarity.umeyama`` (shoulder/hip landmarks) -> ``skeleton.fit_skeleton`` (pose, shape,
expression through LBS; landmarks first, then robust ICP both ways) -> ``nonrigid.refine_nonrigid``
(ACAP-regularised free-form surface, hole-aware) -> ``stage.register_scan`` / ``run_registration``,
one driver for a body and a close-up: the steps run on a ``region.Region`` (a body: "everything").
Settings: ``config.RegisterConfig`` (one seed; a close-up's branch in ``config.RegionConfig``).
``backend`` chooses how neighbours and distances are computed (KD-tree, Embree, PyTorch3D).
"""
