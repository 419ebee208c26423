"""The one-way data flow of DESIGN section 2, checked on the source: every ``darkfield_nb``
import (module level or inside a function) goes to the same layer or one below, and the
module-level imports have no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "darkfield_nb"

# Rank of each top-level module or subpackage: a module may import ranks <= its own.
LAYERS = {
    "atomic": 0, "hardware": 0, "labels": 0, "paths": 0, "ggd": 0,
    "io": 1,
    "contract": 2,
    "physics": 3,
    "data": 4,
    "losses": 5, "models": 5, "metrics": 5,
    "checkpoint": 6, "checkpoint_entry": 6,
    "train": 7, "pretrained": 7,
    "uncertainty": 8,
    "calibration": 9, "epistemic": 9, "ood": 9, "evaluation": 9,
    "severity": 9, "level": 9,
    "viz": 10, "panels": 10, "inference": 10, "synthesis": 10, "stage_report": 10, "widgets": 10,
    "ablation": 11, "cli": 11,
}  # fmt: skip


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Fully qualified darkfield_nb modules that ``path`` imports."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("darkfield_nb")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("darkfield_nb"):
                # `from pkg import submodule` imports the submodule, not the package's names
                subs = {f"{mod}.{a.name}" for a in node.names} & MODULES
                found |= subs or {mod}
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


MODULES = {_module_name(p) for p in _sources()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    units = {_unit(_module_name(p)) for p in _sources()} - {""}
    assert units <= set(LAYERS), f"modules without a layer: {sorted(units - set(LAYERS))}"


def test_no_import_reaches_a_higher_layer():
    upward = []
    for path in _sources():
        me = _unit(_module_name(path))
        if not me:
            continue
        for target in _imports(path, top_level_only=False):
            other = _unit(target)
            if other and LAYERS[other] > LAYERS[me]:
                upward.append(f"{_module_name(path)} -> {target}")
    assert not upward, "imports against the one-way flow:\n" + "\n".join(upward)


def test_module_level_imports_have_no_cycle():
    graph = {_module_name(p): _imports(p, top_level_only=True) for p in _sources()}
    known = set(graph)
    graph = {m: {t for t in deps if t in known and t != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack + [m, t]
            if t not in state and (cycle := visit(t, stack + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
