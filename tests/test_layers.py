"""The package's layers run one way: the stage cores (model, register, landmarks) and io/template
import neither click nor the Dask/CLI shells; stage entry points named by string resolve; listing
the CLI's commands imports no torch. Read from the source (ast), so a new import cannot sneak in."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ghum_pipe"
CORES = ("model", "register", "landmarks", "io", "template")
FORBIDDEN = ("click", "ghum_pipe.pipelines", "ghum_pipe.cli", "distributed", "dask")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in ``path`` names (at any depth)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imported_modules_sees_nested_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ndef f():\n    from click import echo\n    import ghum_pipe.pipelines.cluster\n")
    assert imported_modules(f) == {"os", "click", "ghum_pipe.pipelines.cluster"}


@pytest.mark.parametrize("core", CORES)
def test_cores_import_no_shell(core):
    bad = []
    for path in sorted((PACKAGE / core).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_stage_entries_and_configs_resolve():
    from ghum_pipe.pipelines.stages import STAGES

    for spec in STAGES.values():
        assert callable(spec.load_entry()), spec.entry
        cfg = spec.default_config()
        assert isinstance(cfg.to_dict(), dict) and "kind" in cfg.to_dict(), spec.config


def test_listing_commands_imports_no_torch():
    """`ghum-pipe --help` must stay fast: the CLI module and its command list import no torch,
    numpy or Dask (bench/cli_startup.py measures the time)."""
    code = ("import sys, ghum_pipe.cli as c; c.main.list_commands(None); "
            "print(sorted(m for m in ('torch', 'numpy', 'distributed', 'trimesh') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": f"{PACKAGE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
