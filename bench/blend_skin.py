"""Linear blend skinning kernels: ``blend_skin`` (gather the joints' transforms per vertex) against
``blend_skin_dense`` (weights scattered into a dense (V, J) matrix, one matrix product), then
C's joint step (``joints.joint_batch_step``, which uses the dense one) with each.

Kernel table: CPU milliseconds per call, 1 torch thread, random transforms and the template's
joint count (104), 4 influences per vertex; modes: forward only, forward + backward to the
transforms, forward + backward to the transforms and the weights (what C's step needs). The C
step: ``bench/joint_convergence.py``'s data (36 scans of 6 subjects, GHUML, planted joint
shifts), one pass of ``--iters`` L-BFGS iterations, CPU seconds with each kernel.

    .venv/bin/python bench/blend_skin.py --iters 100
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def kernel_ms(f, B: int, V: int, mode: str, n: int = 10, J: int = 104, I: int = 4) -> float:  # noqa: E741
    g = torch.Generator().manual_seed(0)
    T0 = torch.randn(B, J, 4, 4, generator=g)
    verts = torch.randn(B, V, 3, generator=g)
    idx = torch.randint(0, J, (V, I), generator=g)
    w = torch.softmax(torch.randn(V, I, generator=g), -1)
    t0 = time.process_time()
    for _ in range(n):
        T = T0.clone().requires_grad_(mode != "forward")
        ww = w.clone().requires_grad_(mode == "backward (transforms, weights)")
        if mode == "forward":
            with torch.no_grad():
                f(verts, T, idx, ww)
        else:
            (f(verts, T, idx, ww) ** 2).sum().backward()
    return (time.process_time() - t0) / n * 1000


def main() -> None:
    from ghum_pipe.model import joints as jm
    from ghum_pipe.model.ghum import blend_skin, blend_skin_dense

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100, help="L-BFGS iterations of the C step (one pass).")
    ap.add_argument("--base", type=Path, default=Path("/tmp/ghum-joint-convergence"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| scans x vertices | mode | blend_skin ms | blend_skin_dense ms | speed-up |\n|---|---|---|---|---|")
    for B, V in ((1, 13718), (8, 13718), (32, 3008)):
        for mode in ("forward", "backward (transforms)", "backward (transforms, weights)"):
            a, b = kernel_ms(blend_skin, B, V, mode), kernel_ms(blend_skin_dense, B, V, mode)
            print(f"| {B} x {V} | {mode} | {a:.1f} | {b:.1f} | x{a / b:.2f} |")

    import joint_convergence as jc

    model, sub, part, cfg = jc.prepare(args.base / "shifts", True, 32)
    cfg = replace(cfg, joint_iters=args.iters, joint_rtol=0.0, joint_passes=1)
    cpu = {}
    for name, f in (("blend_skin", blend_skin), ("blend_skin_dense", blend_skin_dense)):
        jm.blend_skin_dense = f  # the step's kernel, swapped for the measurement
        t0 = time.process_time()
        jm.joint_batch_step(model, sub, part(), cfg)
        cpu[name] = time.process_time() - t0
    jm.blend_skin_dense = blend_skin_dense
    print(f"\nC's step, {len(sub)} scans, {args.iters} iterations: blend_skin {cpu['blend_skin']:.2f} s CPU, "
          f"blend_skin_dense {cpu['blend_skin_dense']:.2f} s (x{cpu['blend_skin'] / cpu['blend_skin_dense']:.2f})")


if __name__ == "__main__":
    main()
