"""The module rules of DESIGN.md: only the UI imports streamlit; the engine knows no storage."""

from __future__ import annotations

import ast

from conftest import REPO

UI_FILES = {"main.py"}


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files():
    return [p for p in REPO.rglob("*.py") if "tests" not in p.parts and ".venv" not in p.parts]


def test_only_the_ui_imports_streamlit():
    offenders = [
        str(p.relative_to(REPO))
        for p in python_files()
        if "streamlit" in imported_modules(p)
        and str(p.relative_to(REPO)) not in UI_FILES
        and "app_pages" not in p.parts
    ]
    assert python_files() and offenders == []


def test_engine_imports_no_storage_or_ui():
    for module in ("federated_learning.py", "model.py", "data_handler.py", "strategies.py", "experiment_config.py"):
        imports = imported_modules(REPO / module)
        assert not imports & {"database", "sqlalchemy", "streamlit", "main", "cli", "visualization"}, module


def test_no_pickle_or_shell():
    for path in python_files():
        source = path.read_text()
        assert "shell=True" not in source, path
        assert "import pickle" not in source, path
