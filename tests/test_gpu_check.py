"""scripts/gpu_check.py refuses in one line, with its own exit code, where there is no CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the whole check instead")
def test_gpu_check_says_no_cuda_and_exits_3(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device here"), lines
    assert not (tmp_path / "out").exists()  # nothing was made
