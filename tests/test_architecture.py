"""The package's import map: no circle, and no import from a lower layer to a higher one.

Every import counts, including those inside functions. Layers, from the bottom:
errors/fileio/layout/checks/specs < stage code (data, models, training, toy, active,
analysis) < config < rundir, report, study, lens < cli. Stage code takes specs and
never reads the config dict.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import superlens
from superlens.config import DEFAULTS
from superlens.specs import (ActiveSpec, AnalysisSpec, DataSpec, FeatVisSpec, ModelSpec, RaySpec, SAESpec, SnapshotSpec,
                             ToySelection, ToySpec)

ROOT = Path(superlens.__file__).parent
STAGES = ("superlens.data", "superlens.models", "superlens.training", "superlens.toy", "superlens.active",
          "superlens.analysis")
DRIVERS = ("superlens.config", "superlens.study", "superlens.cli", "superlens.report", "superlens.rundir",
           "superlens.lens")
BOTTOM = ("superlens.errors", "superlens.fileio", "superlens.layout", "superlens.checks", "superlens.specs")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body), read from the source."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import that climbs: stage code into config or a driver, analysis into anything above
    stages, the bottom layer into anything of the package's above it, a module into the package root."""
    bad = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if target == "superlens" and module != "superlens":
                bad.append(f"{module} -> {target}")
            elif within(module, STAGES) and within(target, DRIVERS):
                bad.append(f"{module} -> {target}")
            elif within(module, BOTTOM) and not within(target, BOTTOM):
                bad.append(f"{module} -> {target}")
            elif module == "superlens.layout" and target.startswith("superlens"):
                bad.append(f"{module} -> {target}")
    return bad


def test_the_package_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_import_climbs_a_layer():
    graph = import_graph()
    assert upward(graph) == []
    for module, targets in graph.items():
        if within(module, ("superlens.analysis",)):
            assert not any(within(t, DRIVERS) for t in targets), module
        if within(module, STAGES):
            assert "superlens.config" not in targets, module


def test_the_walker_finds_circles_and_climbs(tmp_path):
    pkg = tmp_path / "superlens"
    (pkg / "analysis").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from superlens.analysis import geometry\n")
    (pkg / "analysis" / "__init__.py").write_text("")
    (pkg / "analysis" / "geometry.py").write_text("def f():\n    from superlens.config import DEFAULTS\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["superlens.analysis.geometry", "superlens.config"]]
    assert upward(graph) == ["superlens.analysis.geometry -> superlens.config"]


@pytest.mark.parametrize("spec, section", [
    (DataSpec, "data"), (ModelSpec, "model"), (ActiveSpec, "active"), (AnalysisSpec, "analysis"),
    (SnapshotSpec, "analysis"), (SAESpec, "sae"), (FeatVisSpec, "featvis"), (ToySpec, "toy"),
    (ToySelection, "toy.selection"), (RaySpec, "ray"),
])
def test_spec_defaults_agree_with_the_config_defaults(spec, section):
    values = DEFAULTS
    for key in section.split("."):
        values = values[key]
    made = spec.from_section(values)
    default = spec()
    for field in made.__dataclass_fields__:
        if field in values and not isinstance(values[field], dict):
            assert getattr(made, field) == getattr(default, field), f"{section}.{field}"
