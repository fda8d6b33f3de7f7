"""The package's structure: imports point one way (no cycles, none from a lower layer to a higher
one), Typer and Rich only in `cli/`, the folder list stays short, and importing the package leaves
the process environment alone."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sparseinst_cli"
ROOT = PACKAGE.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every module of the package that `name` imports, anywhere in the file (functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_import_walk_sees_relative_and_absolute_imports():
    assert "sparseinst_cli.loading" in GRAPH["sparseinst_cli.predictor"]  # from .loading import
    assert "sparseinst_cli.data.transforms" in GRAPH["sparseinst_cli.data.coco"]  # absolute
    assert "sparseinst_cli.engine.run_dir" in GRAPH["sparseinst_cli.training.loop"]  # from ..eng
    assert "sparseinst_cli.cli.train" in GRAPH["sparseinst_cli.cli.app"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    assert _cycles(GRAPH) == []


# Top to bottom: a module imports its own layer or lower ones. Commands -> loops -> the Python API
# and export -> loading a model -> the core (network with its matcher and losses, evaluator) ->
# data and configs -> files, images, devices.
LAYERS = [
    ("__main__", "cli"),
    ("training",),
    ("engine",),
    ("predictor", "export"),
    ("loading",),
    ("modeling", "evaluation", "preprocess"),
    ("data", "config", "d2_config"),
    ("media", "fileio", "runtime", "postprocess", "errors"),
]
CORE = ("modeling", "evaluation", "data")


def _layer(name: str) -> int:
    """Index in LAYERS (0 = top) of the part that holds module `name`."""
    part = name.removeprefix(f"{ROOT}.").split(".")[0]
    if name == ROOT:
        return len(LAYERS)  # the package's face hands names on lazily (importlib)
    return next(i for i, parts in enumerate(LAYERS) if part in parts)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != ROOT))
def test_every_module_has_a_layer(name):
    assert any(name.removeprefix(f"{ROOT}.").split(".")[0] in parts for parts in LAYERS)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                    if _layer(b) < _layer(a))
    assert upward == []


def test_the_top_level_lists_parts_not_files():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 10, top


@pytest.mark.parametrize("folder", sorted({p.parent for p in PACKAGE.rglob("*.py")}),
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_folder_holds_more_than_14_modules(folder):
    modules = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    assert len(modules) <= 14, modules


@pytest.mark.parametrize("name", sorted(n for n in MODULES
                                        if n.removeprefix(f"{ROOT}.").split(".")[0] in CORE))
def test_the_core_never_imports_the_commands_or_the_terminal(name):
    assert not any(t.startswith(f"{ROOT}.cli") for t in GRAPH[name])
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"typer", "rich", "click"}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(f"{ROOT}.cli")))
def test_only_cli_imports_typer_or_rich(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"typer", "rich"}


def test_importing_the_package_changes_no_environment_variable():
    code = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import sparseinst_cli\n"
        "print(json.dumps([before, dict(os.environ)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code, "--dtype", "fp32"], env=env,
                         capture_output=True, text=True, check=True)
    before, after = json.loads(out.stdout)
    assert after == before
