"""The package's imports run one way: no cycles between modules, io reads scans without a body
model, synth sits on top, ops is pure. Read from the source (ast), so a lazy import inside a
function counts as much as one at the top."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ghum_pipe"

# Cycles that other work in flight removes; each is owned there. Empty this list as they land:
# the test fails on an entry that is no longer a cycle, so it cannot go stale.
KNOWN_CYCLES: set[frozenset] = set()
# Private names (_x) imported from another module, owned by the same work in flight.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()
# Downward imports of synth that other work in flight removes (evaluate reads the planted truth).
KNOWN_SYNTH_USERS: set[str] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The package module an import of ``name`` loads (the longest known prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` loads the submodule pkg.sub when there is one
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for n in names:
                target = _resolve(n, modules) if n.startswith("ghum_pipe") else None
                if target and target != mod:
                    deps.add(target)
        graph[mod] = deps
    return graph


def private_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for every ``from ghum_pipe.x import _name``."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ghum_pipe"):
                out |= {(_module_name(path), node.module, a.name) for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")}
    return out


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _reaches(graph, src_prefix, dst_prefixes):
    return sorted((m, d) for m, deps in graph.items() if m == src_prefix or m.startswith(src_prefix + ".")
                  for d in deps if any(d == p or d.startswith(p + ".") for p in dst_prefixes))


def test_the_graph_reader_sees_known_edges():
    g = import_graph()  # a reader that saw nothing would pass every test below
    assert "ghum_pipe.landmarks.render" in g["ghum_pipe.landmarks.render_p3d"]
    assert "ghum_pipe.template.lbs" in g["ghum_pipe.template.template"]
    assert "ghum_pipe.io.scan" in g["ghum_pipe.io"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles_between_modules():
    found = set(cycles(import_graph()))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not new, f"import cycles: {new}"
    assert not gone, f"no longer cycles, remove from KNOWN_CYCLES: {gone}"


def test_no_private_name_crosses_a_module_boundary():
    found = private_imports()
    assert not found - KNOWN_PRIVATE_IMPORTS, f"private names imported: {sorted(found - KNOWN_PRIVATE_IMPORTS)}"
    assert not KNOWN_PRIVATE_IMPORTS - found, f"gone, remove from the list: {sorted(KNOWN_PRIVATE_IMPORTS - found)}"


def test_io_needs_no_body_model_and_ops_is_pure():
    g = import_graph()
    below = ("ghum_pipe.template", "ghum_pipe.model", "ghum_pipe.register", "ghum_pipe.landmarks",
             "ghum_pipe.synth", "ghum_pipe.pipelines", "ghum_pipe.cli")
    assert _reaches(g, "ghum_pipe.io", below) == []
    outside = [(m, d) for m, d in _reaches(g, "ghum_pipe.ops", ("ghum_pipe",)) if not d.startswith("ghum_pipe.ops")]
    assert outside == [], "ops imports nothing of the package outside ops"


def test_synth_sits_on_top():
    g = import_graph()
    users = {m for m, _ in _reaches(g, "ghum_pipe", ("ghum_pipe.synth",))
             if not m.startswith(("ghum_pipe.synth", "ghum_pipe.pipelines", "ghum_pipe.cli"))}
    assert users == KNOWN_SYNTH_USERS, f"import synth from below: {sorted(users - KNOWN_SYNTH_USERS)}"


def test_reading_a_scan_loads_no_template(tmp_path, template):
    # the template in millimetres, +Y up: units and up axis are detected without a body model
    v = template.rest_verts.astype(np.float64) * 1000.0
    path = tmp_path / "body.ply"
    import trimesh

    trimesh.Trimesh(v[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0]), template.faces[:, ::-1],
                    process=False).export(path)
    code = ("import sys, ghum_pipe.io as io\n"
            f"scan = io.load_scan({str(path)!r})\n"
            "print(scan.frame.units, scan.frame.up, sorted(m for m in sys.modules if m.startswith(\n"
            "    ('ghum_pipe.template', 'ghum_pipe.model', 'ghum_pipe.landmarks', 'ghum_pipe.register'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["mm", "+y", "[]"], out


def test_shipped_upright_profiles_match_the_template():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_upright_profiles.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_nothing_below_the_cli_imports_it():
    """The click commands live in ``cli/`` (synth's, the model's, export's); no other package
    imports the CLI layer, so its options and errors cannot pull click into a core."""
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("ghum_pipe.cli")) for m, deps in graph.items()
                 if not m.startswith("ghum_pipe.cli") and any(d.startswith("ghum_pipe.cli") for d in deps)}
    assert not offenders, offenders
