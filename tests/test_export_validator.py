"""avatar.glb through the Khronos glTF-Validator (the reference validator, npm `gltf-validator`,
run with node). `make blender-check` installs it into .venv/gltf-validator; without node or the
package the test is skipped (with GHUM_PIPE_REQUIRE_BLENDER=1 it fails instead)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ghum_pipe.export.scan import export_registration

from test_export import make_registration

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path(os.environ.get("GHUM_PIPE_GLTF_VALIDATOR", REPO / ".venv" / "gltf-validator"))
MODULE = PREFIX / "node_modules" / "gltf-validator"
HAVE = shutil.which("node") is not None and MODULE.is_dir()
if not HAVE and os.environ.get("GHUM_PIPE_REQUIRE_BLENDER"):
    raise RuntimeError(f"no node or no gltf-validator in {PREFIX}: make blender-check installs it")
pytestmark = pytest.mark.skipif(not HAVE, reason=f"node + gltf-validator not installed in {PREFIX} (make blender-check)")

SCRIPT = """
const v = require(process.argv[2]); const fs = require('fs');
v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[3])), {maxIssues: 100})
  .then(r => console.log(JSON.stringify(r.issues)));
"""


def test_khronos_validator_finds_no_error_or_warning(tmp_path, template):
    d = tmp_path / "scans" / "v0"
    make_registration(d, template, seed=8)
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "texture.png")
    export_registration(d, None, template, texture=d / "texture.png")
    (tmp_path / "v.js").write_text(SCRIPT)
    r = subprocess.run(["node", str(tmp_path / "v.js"), str(MODULE), str(d / "avatar.glb")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    issues = json.loads(r.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
