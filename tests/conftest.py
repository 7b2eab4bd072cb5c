"""Shared fixtures: the exact MNIST files in ../shared/data, loaded once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
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


POSTGRES_URL = os.environ.get("FPL_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def every_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a new SQLite file, or a new schema on the PostgreSQL server that
    `FPL_TEST_POSTGRES_URL` names (skipped without one, except under CI=true, where it fails)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'experiments.db'}"
        return
    if not POSTGRES_URL:
        message = "PostgreSQL: set FPL_TEST_POSTGRES_URL (postgresql+psycopg://user@host:port/db) to run against it"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.schema import CreateSchema, DropSchema

    schema = f"fpl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(CreateSchema(schema))
    try:
        # Every connection, in this process and the ones it starts, sees that schema only.
        yield make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as connection:
            connection.execute(DropSchema(schema, cascade=True))
        admin.dispose()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (use it with `pytestmark`), like MLX's CPU BLAS and the
    engine's workers: fast and steady on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_opacus_per_sample_gradients(model, batch, labels, pad_token_id: int = 0) -> None:
    """Opacus's per-example gradients of a text model's trainable parameters (LoRA and head) equal each
    example's own gradient, computed alone on its unpadded row."""
    import torch
    from opacus import GradSampleModule

    from model import clean_name, get_parameters

    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    torch.nn.functional.binary_cross_entropy_with_logits(wrapped(batch), labels).backward()
    per_sample = {clean_name(n): p.grad_sample for n, p in wrapped.named_parameters() if p.requires_grad}
    assert per_sample.keys() == get_parameters(model).keys()
    wrapped.disable_hooks()
    for i in range(len(batch)):
        model.zero_grad(set_to_none=True)
        row = batch[i][batch[i] != pad_token_id][None]
        torch.nn.functional.binary_cross_entropy_with_logits(model(row), labels[i : i + 1]).backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per_sample[clean_name(name)][i], p.grad, rtol=1e-4, atol=1e-6)
