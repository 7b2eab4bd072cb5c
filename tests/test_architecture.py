"""The module rules of DESIGN.md, over the import graph followed transitively: no import cycles
(imports inside functions and under TYPE_CHECKING count), only the page imports streamlit, the
engine reaches no storage, UI, CLI or runs service, the page never imports `cli.py`; at most 12
modules at the root, no engine function over 60 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

SKIPPED_DIRS = {"tests", ".venv", "migrations", "bench", "docs", "data", ".git"}
PAGE = {"main"} | {"app_pages"}  # the Streamlit page: main.py and everything under app_pages/
# The engine: the round loop and everything it computes with. None of it may reach the modules below.
ENGINE_PACKAGES = ("engine", "privacy", "ngss", "mlx_runtime")
ENGINE_ROOT = ("federated_learning", "model", "differential_privacy", "data_handler", "experiment_config")
NOT_FOR_THE_ENGINE = {"database", "sqlalchemy", "streamlit", "cli", "main", "app_pages", "visualization", "runs"}
# What the privacy report is: a view of stored runs (it reads `database.ExperimentSummary`).
STORED_VIEWS = {"privacy.report"}
ROOT_MODULE_LIMIT = 12
ENGINE_FUNCTION_LINES = 60


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} of the project's own code (not tests, benchmarks or migrations)."""
    modules = {}
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in SKIPPED_DIRS or any(part.startswith(".") for part in relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every name `path` imports, anywhere in the file (functions and TYPE_CHECKING blocks too):
    project modules by their dotted name, third-party ones by their top-level package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name if alias.name in known else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:  # `from engine import strategies`
                    names.add(submodule)
            names.add(node.module if node.module in known else node.module.split(".")[0])
    return names


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports_of(path, known) if target != name}
    return edges


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def top(name: str) -> str:
    return name.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue  # a third-party package
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    yield from components


def test_the_graph_sees_the_project(graph):
    assert {"federated_learning", "cli", "main", "runs.service", "engine.strategies", "flower_runtime.server_app"} <= set(graph)
    assert "engine.strategies" in graph["federated_learning"]  # `from engine.strategies import ...`
    assert "runs.workers" in graph["app_pages.common"]  # `from runs import workers as processes`


def test_no_import_cycles(graph):
    assert list(cycles(graph)) == []


def test_the_cycle_finder_finds_a_cycle():
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(cycles(toy)) == [["a", "b", "c"]]


def test_only_the_page_imports_streamlit(graph):
    direct = sorted(name for name, targets in graph.items() if "streamlit" in targets and top(name) not in PAGE)
    assert direct == []


def test_the_engine_reaches_no_storage_ui_cli_or_runs_service(graph):
    engine = [n for n in graph if top(n) in ENGINE_PACKAGES or n in ENGINE_ROOT]
    assert len(engine) > 20
    offenders = {}
    for name in engine:
        if name in STORED_VIEWS:
            continue
        bad = {t for t in reachable(graph, name) - STORED_VIEWS if top(t) in NOT_FOR_THE_ENGINE}
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}


def test_the_page_never_imports_the_cli(graph):
    for name in (n for n in graph if top(n) in PAGE):
        assert "cli" not in reachable(graph, name), name


def test_the_database_module_holds_no_threads_or_subprocesses(graph):
    assert not graph["database"] & {"threading", "subprocess", "multiprocessing", "runs"}


def test_few_modules_at_the_root():
    root = sorted(p.name for p in REPO.glob("*.py"))
    assert len(root) <= ROOT_MODULE_LIMIT, root


def test_no_folder_shadows_an_installed_package():
    import importlib.util

    for folder in (p for p in REPO.iterdir() if (p / "__init__.py").exists()):
        spec = importlib.util.find_spec(folder.name)
        assert spec is not None and Path(spec.origin).resolve().parent == folder.resolve(), folder.name
    for name in ("mlx", "flwr"):
        assert not (REPO / name).exists()


def long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_no_engine_function_over_60_lines():
    files = [REPO / f"{name}.py" for name in ENGINE_ROOT] + [
        p for package in ("engine", "privacy") for p in (REPO / package).glob("*.py")
    ]
    assert [line for path in files for line in long_functions(path, ENGINE_FUNCTION_LINES)] == []


def test_no_pickle_or_shell():
    for path in project_modules().values():
        source = path.read_text()
        assert "shell=True" not in source, path
        assert "import pickle" not in source, path
