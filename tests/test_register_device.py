"""Every tensor a fit creates is created on the fit's device.

There is no GPU here, so the fits run with ``device="cpu"`` under a default device that differs
(PyTorch's "meta"), and a torch function mode fails on any tensor that lands on the default: a
tensor created without the fit's device would land on a wrong device on a CUDA machine too.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from ghum_pipe.register.config import CLOSEUP_SCHEDULE, RegionConfig, RegisterConfig
from ghum_pipe.register.nonrigid import NonrigidConfig
from ghum_pipe.register.skeleton import IcpSchedule, SkeletonConfig
from ghum_pipe.register.stage import register_scan
from test_register_synthetic import make_subject, scan_faces, subject_landmarks


class NothingOnTheDefaultDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.device.type == "meta":
                raise AssertionError(f"{func} created a tensor on the default device, not the fit's")
        return out


# a few iterations of every step: this checks where tensors live, not how well the fit does
QUICK = RegisterConfig(
    skeleton=SkeletonConfig(schedule=IcpSchedule(landmark_iters=5, icp_rounds=2, icp_iters=3, icp_final_iters=3)),
    nonrigid=NonrigidConfig(schedule=((1.0, 1),)), max_scan_to_reg_mm=1e9,
    region=RegionConfig(
        skeleton=replace(RegionConfig().skeleton, schedule=replace(CLOSEUP_SCHEDULE, landmark_iters=5, icp_rounds=2,
                                                                   icp_iters=3, icp_final_iters=3)),
        min_coverage=0.0, nonrigid=NonrigidConfig(schedule=((1.0, 1),), max_dist_m=(0.02, 0.006), sigma_m=0.004)))


@pytest.fixture(scope="module")
def subject(template):
    from ghum_pipe.register.landmark_pairs import load_template_landmark_set

    tl = load_template_landmark_set(template)
    s = make_subject(template, "posed", seed=5, offset_mm=5.0)
    names, pts, conf = subject_landmarks(tl, s["verts"])
    for dt in (torch.float32, torch.float64):  # the template's cached tensors, made before the check
        template.tensors("cpu", dt)
    return s, {"names": names, "points": pts, "confidence": conf}, tl


@pytest.mark.parametrize("kind", ["body", "head", "hand_right"])
def test_fit_creates_every_tensor_on_its_device(template, subject, kind):
    s, lm, tl = subject
    faces = scan_faces(template, s["verts"], holes=False)
    if kind != "body":  # a close-up of the subject: the region's faces
        region = template.masks[kind]
        faces = faces[region[faces].all(1)]
    args = (s["verts"], faces, None, lm, template, QUICK)
    expected = register_scan(*args, template_landmarks=tl, kind=kind).verts
    with torch.device("meta"), NothingOnTheDefaultDevice():
        got = register_scan(*args, template_landmarks=tl, kind=kind).verts
    np.testing.assert_array_equal(got, expected)  # and the same numbers
