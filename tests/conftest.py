"""Shared fixtures: the exact MNIST files in ../shared/data, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("FPL_DATA_DIR") or SHARED_DATA)

# Every config built in the tests (and in processes they start) reads MNIST from here.
os.environ["FPL_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="session")
def mnist():
    from data_handler import load_mnist

    return load_mnist(DATA_DIR, download=False)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'experiments.db'}"
