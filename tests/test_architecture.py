"""The package's shape: imports point downward (no cycle, counting function-level
imports), backends know nothing of the engine, and no module reaches into another
module's private names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mlpx

ROOT = Path(mlpx.__file__).resolve().parent
BACKENDS = ROOT.parent / "backends"


def _module_files() -> dict[str, Path]:
    files = {}
    for base, prefix in ((ROOT, "mlpx"), (BACKENDS, "mlpx.backends")):
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            files[".".join([prefix, *parts])] = path
    return files


FILES = _module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if FILES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body."""
    graph: dict[str, set[str]] = {m: set() for m in FILES}
    for module, path in FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                while t and t not in FILES:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != module and not (FILES[t].name == "__init__.py" and module.startswith(t + ".")):
                    graph[module].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_counting_function_level_imports() -> None:
    graph = import_graph()
    # The package's own __init__ re-exports (it imports everything by design).
    graph = {m: {t for t in ts if t != "mlpx"} for m, ts in graph.items() if m != "mlpx"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_backends_know_nothing_of_the_engine() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("mlpx.backends"):
            assert all(t.startswith("mlpx.backends") for t in targets), (module, targets)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for module, path in FILES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("mlpx", ".")):
                bad += [f"{module}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, bad


@pytest.mark.parametrize("name", ["fit", "train_step", "evaluate"])
def test_public_training_api_has_explicit_signatures(name: str) -> None:
    params = inspect.signature(getattr(mlpx.Sequential, name)).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
