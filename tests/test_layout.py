"""The package's layout rules (docs/architecture.md), checked on the source itself.

Layers follow the data: a module imports only from its own layer or below; no two files import each other
in a circle; no file is longer than one sitting's read; environment switches are read in ops/backend.py.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "groundthink"

# Lowest first. A top-level module or package may import from any layer up to its own.
LAYERS = [
    {"errors", "devices", "progress", "fileio"},
    {"ops"},
    {"layers", "data"},
    {"models"},
    {"inference"},
    {"training", "hf"},
    {"diagnostics"},
    {"experiments"},
    {"cli"},
    {"__main__", "__init__"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_LINES = 420
# Reads of os.environ outside ops/backend.py, each not a switch: torchrun's protocol (who this process is)
# and environments copied whole for a child process.
ENVIRONMENT_READS = {"training/launch.py": 4, "ops/child_check.py": 2, "experiments/sweep.py": 1}


def sources() -> dict[str, Path]:
    return {str(path.relative_to(PACKAGE)): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """``groundthink.x.y`` modules a file imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "groundthink":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "groundthink")
    return found


def top_level(relative: str) -> str:
    return relative.split("/")[0].removesuffix(".py")


def module_files() -> dict[str, str]:
    """Dotted module name -> relative path, for every module of the package."""
    names = {}
    for relative in sources():
        parts = relative.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(["groundthink", *parts])] = relative
    return names


def test_no_import_runs_upward():
    upward = []
    for relative, path in sources().items():
        own = LEVEL[top_level(relative)]
        for module in imported_modules(path):
            parts = module.split(".")
            if len(parts) < 2 or parts[1] not in LEVEL:
                continue
            if LEVEL[parts[1]] > own:
                upward.append(f"{relative} imports {module}")
    assert not upward, upward


def test_no_import_circles():
    files = module_files()
    graph = {relative: set() for relative in sources()}
    for relative, path in sources().items():
        for module in imported_modules(path):
            target = files.get(module)
            if target is not None and target != relative and not target.endswith("__init__.py"):
                graph[relative].add(target)
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not circles, circles


def test_files_are_short_enough_to_read_in_one_sitting():
    long = {relative: n for relative, path in sources().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_environment_switches_are_read_in_ops_backend_only():
    reads = {}
    for relative, path in sources().items():
        if relative == "ops/backend.py":
            continue
        count = len(re.findall(r"os\.environ|os\.getenv", path.read_text(encoding="utf-8")))
        if count:
            reads[relative] = count
    assert reads == ENVIRONMENT_READS


def test_the_layer_table_names_every_part_of_the_package():
    assert {top_level(relative) for relative in sources()} <= set(LEVEL)
