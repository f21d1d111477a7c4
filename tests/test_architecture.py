"""The layering the design promises: libraries below, commands above, and no import cycle anywhere.

Read from the source (every ``import``, function-level ones included), so a cycle or a parser that a lazy
import hides is still found.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: installed package name -> its folder
PACKAGES = {"hsrl": ROOT / "hsrl", "hsrl_service": ROOT / "service"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported_names(module: str, path: Path) -> list[str]:
    names = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in _imported_names(name, path):
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                graph[name].add(".".join(parts))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_projects_modules() -> None:
    assert cycles(import_graph()) == []


def test_only_the_cli_package_and_the_service_parse_arguments() -> None:
    parsers = []
    for name, path in _modules().items():
        if name.startswith(("hsrl.cli", "hsrl_service.cli")):
            continue
        if "argparse" in _imported_names(name, path):
            parsers.append(name)
    assert parsers == [], f"library modules with an argument parser: {parsers}"


def test_the_library_imports_neither_the_service_nor_the_recipes() -> None:
    graph = import_graph()
    upward = sorted(
        (name, target) for name, targets in graph.items() if name.startswith("hsrl.") or name == "hsrl"
        for target in targets if target.startswith("hsrl_service")
    )  # fmt: skip
    assert upward == []


def test_the_library_loads_no_file_by_path() -> None:
    for path in PACKAGES["hsrl"].rglob("*.py"):
        text = path.read_text()
        assert "spec_from_file_location" not in text and "runpy" not in text, f"{path} loads a file by path"


def test_every_objective_parses_without_importing_a_model_module() -> None:
    """The objective table is static: ``quickthought`` parses in a fresh interpreter that imported only losses."""
    code = (
        "import sys; from hsrl.losses import TERMS, parse_objective;"
        "parse_objective('quickthought:1,context=1 + align:1 + uniform:1 + contrastive:1');"
        "assert not any(m.startswith('hsrl.models') for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
