"""Make (or check) ghum_pipe/io/upright_profiles.npy: the template's height profiles in the
standing poses of ``io.upright.REFERENCE_POSES``, which the up-axis detection compares scans
with. Shipped as data so that reading a scan loads no body model; run again when the template
changes (the test suite runs ``--check``).

    python scripts/make_upright_profiles.py           # write the file
    python scripts/make_upright_profiles.py --check   # exit 1 if the shipped file is stale
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from ghum_pipe.io.upright import PROFILES_FILE, REFERENCE_POSES, profiles_of
from ghum_pipe.template import load_template

# Posing runs in float32: the profiles of two machines differ by ~1e-7 of the length, far
# below the head-side margins (>= 0.019).
TOLERANCE = 1e-5


def template_profiles() -> np.ndarray:
    t = load_template()
    pose = torch.zeros(len(REFERENCE_POSES), t.n_joints, 3)
    for i, rots in enumerate(REFERENCE_POSES.values()):
        for joint, aa in rots.items():
            pose[i, t.joint_index(joint)] = torch.tensor(aa, dtype=torch.float32)
    with torch.no_grad():
        verts, _ = t.pose(pose=pose)
    return profiles_of(verts.numpy(), t.faces)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = ap.parse_args()
    profiles = template_profiles()
    if args.check:
        shipped = np.load(PROFILES_FILE)
        diff = float(np.abs(shipped - profiles).max()) if shipped.shape == profiles.shape else float("inf")
        if diff > TOLERANCE:
            print(f"{PROFILES_FILE}: stale (max difference {diff:.2g} > {TOLERANCE:g}); "
                  "run python scripts/make_upright_profiles.py", file=sys.stderr)
            return 1
        print(f"{PROFILES_FILE.name} matches the template (max difference {diff:.2g})")
        return 0
    np.save(PROFILES_FILE, profiles)
    print(f"wrote {PROFILES_FILE.name} {profiles.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
