"""The store against SQLite, and against PostgreSQL when FPL_TEST_POSTGRES_URL names one
(`postgresql+psycopg://user@127.0.0.1:5432/db`; each test gets a schema of its own)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, delete, func, inspect, make_url, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from conftest import REPO
from database import (
    CONNECT_TIMEOUT_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Base,
    ClientRound,
    Experiment,
    ExperimentStore,
    ModelWeights,
    Round,
    json_list,
    resolve_url,
)
from experiment_config import ExperimentConfig
from migrations import alembic_config, migration_lock, newest_revision

POSTGRES_URL = os.environ.get("FPL_TEST_POSTGRES_URL")


@pytest.fixture
def db_url(every_db_url: str) -> str:
    """SQLite, and PostgreSQL when FPL_TEST_POSTGRES_URL names a server (conftest.every_db_url)."""
    return every_db_url


def round_row(number: int, accuracy: float, clients: int = 2) -> dict:
    return {
        "round": number, "accuracy": accuracy, "loss": 1.0 / number, "epsilon": 0.0, "delta": 0.0,
        "seconds": 1.5, "eval_seconds": 0.25, "bytes_up": 100 * clients, "bytes_down": 100 * clients,
        "clients": [
            {"id": c, "num_examples": 10 + c, "steps": 3, "loss": 0.5 + c, "epsilon": 0.0} for c in range(clients)
        ],
    }  # fmt: skip


def test_experiment_round_trip_in_a_file_database(db_url):
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides(["model.name=mlp"]).to_dict()
    experiment_id = store.create_experiment(config, name="first")
    assert store.get_experiment(experiment_id).status == "queued"

    store.mark_running(experiment_id, pid=1234)
    store.set_label_counts(experiment_id, [[1, 2], [3, 4]])
    for number, accuracy in [(1, 0.5), (2, 0.75)]:
        store.record_round(experiment_id, round_row(number, accuracy))
    store.finish(experiment_id, "completed", final={"accuracy": 0.75, "loss": 0.5})

    reopened = ExperimentStore(db_url)  # a second process would see exactly this
    experiment = reopened.get_experiment(experiment_id)
    assert (experiment.status, experiment.name, experiment.rounds_done) == ("completed", "first", 2)
    assert experiment.config == config and ExperimentConfig.from_dict(experiment.config).model.name == "mlp"
    assert experiment.label_counts == [[1, 2], [3, 4]] and experiment.worker_pid == 1234
    assert experiment.final_accuracy == 0.75 and experiment.duration_seconds >= 0
    rounds = reopened.rounds_frame([experiment_id])
    assert rounds["round"].tolist() == [1, 2] and rounds["accuracy"].tolist() == [0.5, 0.75]
    assert rounds["bytes_up"].tolist() == [200, 200] and rounds["num_clients"].tolist() == [2, 2]
    clients = reopened.client_rounds_frame(experiment_id)
    assert len(clients) == 4 and clients["num_examples"].tolist() == [10, 11, 10, 11]


def test_list_is_newest_first_and_delete_cascades(db_url):
    store = ExperimentStore(db_url)
    first = store.create_experiment({"a": 1})
    second = store.create_experiment({"b": 2})
    store.record_round(first, round_row(1, 0.5))
    assert [e.id for e in store.list_experiments()] == [second, first]
    store.delete_experiment(first)
    assert [e.id for e in store.list_experiments()] == [second]
    assert store.rounds_frame([first]).empty and store.client_rounds_frame(first).empty
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM client_rounds")).scalar() == 0


def test_a_round_is_stored_once(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({})
    store.record_round(experiment_id, round_row(1, 0.5))
    with pytest.raises(IntegrityError, match="(?i)unique"):
        store.record_round(experiment_id, round_row(1, 0.6))
    assert store.rounds_frame([experiment_id])["accuracy"].tolist() == [0.5]
    assert len(store.client_rounds_frame(experiment_id)) == 2  # the failed write left nothing


def test_stop_flag_statuses_and_dead_workers(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({})
    assert not store.stop_requested(experiment_id)
    store.request_stop(experiment_id)
    assert store.stop_requested(experiment_id)
    with pytest.raises(ValueError, match="status"):
        store.finish(experiment_id, "running")
    with pytest.raises(KeyError):
        store.mark_running(999)

    alive = store.create_experiment({})
    store.mark_running(experiment_id, pid=111)
    store.mark_running(alive, pid=222)
    assert store.mark_interrupted_if_dead(lambda pid: pid == 222) == [experiment_id]
    assert store.get_experiment(experiment_id).status == "interrupted"
    assert store.get_experiment(alive).status == "running"


def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path):
    store = ExperimentStore(f"sqlite:///{tmp_path / 'experiments.db'}")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_url_comes_from_argument_then_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from-env.db")
    assert resolve_url("sqlite:///given.db") == "sqlite:///given.db"
    assert resolve_url(None) == "sqlite:///from-env.db"
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_url(None) == "sqlite:///experiments.db"


# The first release's schema (its `create_all` on SQLite), with one finished run.
FIRST_RELEASE = """
CREATE TABLE experiments (id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, status VARCHAR(20) NOT NULL,
    config JSON NOT NULL, runtime VARCHAR(40) NOT NULL, created_at DATETIME NOT NULL, started_at DATETIME,
    finished_at DATETIME, heartbeat_at DATETIME, error TEXT, code_version VARCHAR(64) NOT NULL, worker_pid INTEGER,
    worker_host VARCHAR(255), stop_requested BOOLEAN NOT NULL, label_counts JSON, final_accuracy FLOAT,
    final_loss FLOAT, final_epsilon FLOAT, PRIMARY KEY (id));
CREATE INDEX ix_experiments_status ON experiments (status);
CREATE TABLE rounds (id INTEGER NOT NULL, experiment_id INTEGER NOT NULL, round INTEGER NOT NULL,
    accuracy FLOAT NOT NULL, loss FLOAT NOT NULL, epsilon FLOAT NOT NULL, delta FLOAT NOT NULL,
    seconds FLOAT NOT NULL, eval_seconds FLOAT NOT NULL, bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL,
    num_clients INTEGER NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (experiment_id, round),
    FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE);
CREATE INDEX ix_rounds_experiment_id ON rounds (experiment_id);
CREATE TABLE client_rounds (id INTEGER NOT NULL, round_id INTEGER NOT NULL, client_id INTEGER NOT NULL,
    num_examples INTEGER NOT NULL, steps INTEGER NOT NULL, loss FLOAT NOT NULL, epsilon FLOAT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(round_id) REFERENCES rounds (id) ON DELETE CASCADE);
CREATE INDEX ix_client_rounds_round_id ON client_rounds (round_id);
INSERT INTO experiments VALUES (1, 'old', 'completed', '{"seed": 7}', 'in-process', '2026-01-01 00:00:00',
    NULL, NULL, NULL, NULL, 'abc', NULL, NULL, 0, '[[1, 2]]', 0.9, 0.3, 0.0);
INSERT INTO rounds VALUES (1, 1, 1, 0.9, 0.3, 0.0, 0.0, 1.0, 0.1, 10, 10, 1, '2026-01-01 00:00:00');
INSERT INTO client_rounds VALUES (1, 1, 0, 12, 3, 0.4, 0.0);
"""


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_differences(url: str) -> list:
    """What autogenerate would change to make the database match the models ([] when it matches)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        revision = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    assert revision == head_revision()
    return differences


def test_a_new_database_is_created_at_the_newest_revision(db_url):
    ExperimentStore(db_url)
    engine = create_engine(db_url)
    assert set(inspect(engine).get_table_names()) == {
        "alembic_version", "experiments", "rounds", "client_rounds", "model_weights", "checkpoints",
    }  # fmt: skip
    engine.dispose()
    assert schema_differences(db_url) == []  # the models are exactly what the migrations build


def test_the_head_read_from_file_names_is_alembics_and_a_store_at_head_opens_without_alembic(tmp_path):
    script = ScriptDirectory.from_config(alembic_config())
    for revision in script.walk_revisions():  # the numbering newest_revision relies on: NNNN_*.py, one chain
        assert Path(revision.path).name.split("_", 1)[0] == revision.revision
    assert len(script.get_heads()) == 1 and newest_revision() == head_revision()
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    ExperimentStore(url)  # created and migrated here
    code = f"import sys; from database import ExperimentStore; ExperimentStore({url!r}); print('alembic' in sys.modules)"
    opened = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert opened.stdout.strip() == "False"


def rows_left_after_deleting_experiment(store: ExperimentStore, experiment_id: int) -> tuple[int, int]:
    """Delete the experiment's row alone: (its rounds, client rounds without a round) left
    after the database's ON DELETE CASCADE, (0, 0) when it took them."""
    with store.engine.begin() as connection:
        connection.execute(delete(Experiment).where(Experiment.id == experiment_id))
        rounds = connection.scalar(select(func.count()).select_from(Round).where(Round.experiment_id == experiment_id))
        orphans = connection.scalar(
            select(func.count()).select_from(ClientRound).where(ClientRound.round_id.not_in(select(Round.id)))
        )
    return rounds, orphans


def test_the_database_cascades_deletes(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({})
    store.record_round(experiment_id, round_row(1, 0.5))
    store.record_round(experiment_id, round_row(2, 0.6))
    assert rows_left_after_deleting_experiment(store, experiment_id) == (0, 0)


def test_a_database_from_before_alembic_is_adopted_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(FIRST_RELEASE)
    url = f"sqlite:///{path}"

    store = ExperimentStore(url)

    (old,) = store.list_experiments()
    assert (old.name, old.config, old.label_counts, old.final_accuracy) == ("old", {"seed": 7}, [[1, 2]], 0.9)
    assert (old.audit, old.stop_reason, old.dataset_info, old.stop_requested) == (None, None, None, False)
    ledger = store.rounds_frame([1])  # the columns added since, filled with the models' defaults
    assert ledger["accountant"].tolist() == [""] and ledger["privacy_steps"].tolist() == [0]
    assert ledger["noise_multiplier"].tolist() == [0.0] and ledger["metrics"].tolist() == [None]
    (client,) = store.client_rounds_frame(1).to_dict("records")
    assert (client["num_examples"], client["status"], client["malicious"], client["bytes_up"]) == (12, "ok", False, 0)
    assert schema_differences(url) == []
    new = store.create_experiment({"b": 1})
    store.record_round(new, round_row(1, 0.5))
    assert store.rounds_frame([new])["accuracy"].tolist() == [0.5]
    assert rows_left_after_deleting_experiment(store, 1) == (0, 0)  # the old foreign keys still cascade
    assert [e.id for e in store.list_experiments()] == [new]


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    ExperimentStore(url)
    with sqlite3.connect(tmp_path / "experiments.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(RuntimeError, match="revision '9999'.*newer version"):
        ExperimentStore(url)


def test_every_revision_downgrades_and_upgrades_again(db_url):
    store = ExperimentStore(db_url)
    with migration_lock(store.engine) as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    store.engine.dispose()
    assert ExperimentStore(db_url).list_experiments() == []
    assert schema_differences(db_url) == []


def test_a_migration_that_rebuilds_a_sqlite_table_keeps_the_rows_that_refer_to_it(tmp_path):
    store = ExperimentStore(f"sqlite:///{tmp_path / 'experiments.db'}")
    experiment_id = store.create_experiment({})
    store.record_round(experiment_id, round_row(1, 0.5))

    with migration_lock(store.engine) as connection:  # as a future revision would, in SQLite's batch mode
        with Operations(MigrationContext.configure(connection)).batch_alter_table("experiments", recreate="always"):
            pass

    assert store.rounds_frame([experiment_id])["accuracy"].tolist() == [0.5]
    assert len(store.client_rounds_frame(experiment_id)) == 2
    store.delete_experiment(experiment_id)  # and the foreign keys are back on
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM client_rounds")).scalar() == 0


OPEN_AND_WRITE = """
import sys
from database import ExperimentStore
print("ready", flush=True)
sys.stdin.readline()  # go: every process opens the new database at the same moment
store = ExperimentStore(sys.argv[1])
print(store.create_experiment({"process": int(sys.argv[2])}))
"""


def test_processes_opening_a_new_database_together_all_succeed(db_url):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_WRITE, db_url, str(number)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for number in range(2)
    ]  # fmt: skip
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    outcomes = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0] * 2, [err[-300:] for _, err in outcomes]
    store = ExperimentStore(db_url)
    assert sorted(e.config["process"] for e in store.list_experiments()) == [0, 1]
    assert schema_differences(db_url) == []


def test_the_store_keeps_nothing_it_wrote_alive(db_url):
    """A 100,000-client profile list is written once and dropped: nothing in the store (SQLAlchemy's cache of
    compiled statements held the first one, 24 MB) may keep it; the finish values, written the same way, too."""
    import gc
    import tracemalloc

    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(ExperimentConfig().to_dict())
    tracemalloc.start()  # the store's first write of profiles: the statement that a cache would keep
    try:
        store.set_client_profiles(experiment_id, [{"id": k, "speed": float(k)} for k in range(100_000)])
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 2**20, f"{kept / 2**20:.1f} MB still held after the write"
    assert len(store.get_experiment(experiment_id).client_profiles) == 100_000
    store.mark_running(experiment_id)
    assert store.finish(experiment_id, "completed", final={"accuracy": 0.5}, worker_pid=os.getpid())
    assert store.get_experiment(experiment_id).final_accuracy == 0.5


def test_long_lists_are_written_a_chunk_at_a_time_and_read_back_whole(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(ExperimentConfig().to_dict())
    profiles = [{"id": k, "speed": k / 3, "latency_ms": float("nan") if k == 1_500 else 1.0} for k in range(2_345)]
    store.set_client_profiles(experiment_id, iter(profiles))  # 3 chunks of JSON_CHUNK, the last one short
    counts = np.arange(2_001 * 3).reshape(2_001, 3)
    store.set_label_counts(experiment_id, counts)  # a numpy array's rows
    experiment = store.get_experiment(experiment_id)
    profiles[1_500]["latency_ms"] = None  # NaN is stored as null, as everywhere
    assert experiment.client_profiles == profiles and experiment.label_counts == counts.tolist()
    assert json_list([]) == "[]" and json_list(iter([[1, 2]])) == "[[1, 2]]"
    store.set_client_profiles(experiment_id, [])
    assert store.get_experiment(experiment_id).client_profiles == []


def test_profiles_given_as_columns_are_stored_as_columns_and_read_back_as_rows(db_url):
    """`ClientProfiles.table()`: 100,000 clients written from 7 columns, never 100,000 dicts at once, and read
    back exactly as `[p.to_dict() for p in profiles]` (the rows older runs stored, still read as they were)."""
    import tracemalloc

    from engine.client_population import make_profiles

    config = ExperimentConfig.from_dict({"federation": {"num_clients": 100_000, "clients_per_round": 10,
                                                        "speed_spread": 0.5}, "attack": {"fraction": 0.1}})  # fmt: skip
    profiles = make_profiles(config, sizes=[6] * 100_000)
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(config.to_dict())
    tracemalloc.start()
    try:
        store.set_client_profiles(experiment_id, profiles.table())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.1f} MB at the peak"  # 24 MB; as dicts 52 (in chunks) to 91 MB
    assert store.get_experiment(experiment_id).client_profiles == [p.to_dict() for p in profiles]
    with store.sessions() as session:
        assert set(session.get(Experiment, experiment_id).client_profiles["columns"]) == {"id", *profiles.columns}
    with pytest.raises(ValueError, match="one length"):
        store.set_client_profiles(experiment_id, {"id": [0, 1], "speed": [1.0]})


def test_federation_details_round_trip(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(ExperimentConfig().to_dict())
    profiles = [{"id": 0, "speed": 0.5, "malicious": True}, {"id": 1, "speed": 2.0, "malicious": False}]
    store.set_client_profiles(experiment_id, profiles)
    personal = {"method": "finetune", "clients": [{"client": 0, "global_accuracy": 0.5, "personalized_accuracy": 0.9}]}
    store.set_personalization(experiment_id, personal)
    row = round_row(1, 0.5, clients=3)
    row.update(skipped="1 update(s) arrived, fewer than federation.min_clients = 2", simulated_seconds=4.5)
    row["clients"][0].update(status="dropped", malicious=True, bytes_up=0, bytes_down=0)
    row["clients"][1].update(status="lost", bytes_up=0, bytes_down=100, simulated_seconds=2.0)
    row["clients"][2].update(status="partial", bytes_up=40, bytes_down=100, validation_accuracy=0.8)
    store.record_round(experiment_id, row)

    experiment = store.get_experiment(experiment_id)
    assert experiment.client_profiles == profiles and experiment.personalization == personal
    rounds = store.rounds_frame([experiment_id])
    assert rounds["num_clients"].tolist() == [1] and rounds["num_selected"].tolist() == [3]  # only "partial" arrived
    assert rounds["skipped"].tolist() == [row["skipped"]] and rounds["simulated_seconds"].tolist() == [4.5]
    clients = store.client_rounds_frame(experiment_id)
    assert clients["status"].tolist() == ["dropped", "lost", "partial"]
    assert clients["malicious"].tolist() == [True, False, False]
    assert clients["bytes_up"].tolist() == [0, 0, 40] and clients["bytes_down"].tolist() == [0, 100, 100]
    assert clients["validation_accuracy"].isna().tolist() == [True, True, False]


def test_json_is_standard_and_the_same_on_every_backend(db_url):
    store = ExperimentStore(db_url)  # PostgreSQL refuses NaN and infinity in JSON; SQLite would keep them
    experiment_id = store.create_experiment({"seed": 1, "nested": [1.5, {"x": float("inf")}]})
    store.set_audit(experiment_id, {"auc": float("nan"), "advantage": 0.25})
    store.finish(experiment_id, "completed", final={"accuracy": 0.5, "epsilon": float("inf")})

    experiment = ExperimentStore(db_url).get_experiment(experiment_id)
    assert experiment.config == {"seed": 1, "nested": [1.5, {"x": None}]}
    assert experiment.audit == {"auc": None, "advantage": 0.25}
    assert experiment.final_epsilon == float("inf")  # a float column keeps infinity: ε of an un-noised run


def test_final_weights_round_trip_replace_and_go_with_their_experiment(db_url):
    store = ExperimentStore(db_url)
    kept, deleted, without = (store.create_experiment({}) for _ in range(3))
    values = np.linspace(-1.5, 2.5, 17_000, dtype=np.float32)
    store.save_weights(kept, values.astype("<f4").tobytes(), values.size)
    store.save_weights(deleted, np.ones(4, "<f4").tobytes(), 4)
    store.save_weights(deleted, np.full(3, 2.0, "<f4").tobytes(), 3)  # a second save replaces the first

    stored = ExperimentStore(db_url).load_weights(kept)
    assert (stored.experiment_id, stored.num_values) == (kept, 17_000)
    assert stored.values().dtype == np.float32 and np.array_equal(stored.values(), values)
    assert store.load_weights(deleted).values().tolist() == [2.0, 2.0, 2.0]
    assert store.load_weights(without) is None
    assert store.experiments_with_weights() == {kept, deleted}
    store.delete_experiment(deleted)
    assert store.experiments_with_weights() == {kept}
    with store.engine.begin() as connection:  # the database's own cascade, without the store
        connection.execute(delete(Experiment).where(Experiment.id == kept))
        assert connection.scalar(select(func.count()).select_from(ModelWeights)) == 0


def test_weights_of_the_wrong_size_or_for_no_experiment_are_refused(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({})
    with pytest.raises(ValueError, match="10 bytes are not 3 float32 values"):
        store.save_weights(experiment_id, b"0" * 10, 3)
    with pytest.raises(KeyError):
        store.save_weights(999, np.ones(2, "<f4").tobytes(), 2)
    assert store.experiments_with_weights() == set()


def test_a_database_at_the_first_revision_gains_the_weights_table_and_keeps_its_rows(db_url):
    engine = create_engine(db_url)
    with migration_lock(engine) as connection:
        command.upgrade(alembic_config(connection), "0001")
    with engine.begin() as connection:
        assert "model_weights" not in inspect(connection).get_table_names()
        connection.execute(text(
            "INSERT INTO experiments (id, name, status, config, runtime, created_at, code_version, stop_requested) "
            "VALUES (5, 'before', 'completed', '{}', 'in-process', '2026-01-01 00:00:00', 'abc', false)"
        ))  # fmt: skip
    engine.dispose()

    store = ExperimentStore(db_url)

    assert [(e.id, e.name) for e in store.list_experiments()] == [(5, "before")]
    assert store.load_weights(5) is None
    store.save_weights(5, np.arange(3, dtype="<f4").tobytes(), 3)
    assert store.load_weights(5).values().tolist() == [0.0, 1.0, 2.0]
    assert schema_differences(db_url) == []


def test_a_failed_clients_reason_is_stored(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({"federation": {"rounds": 1}})
    store.record_round(experiment_id, {
        "round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1,
        "clients": [
            {"id": 0, "num_examples": 10, "steps": 1, "loss": 0.5},
            {"id": 1, "num_examples": 10, "steps": 0, "loss": 0.0, "status": "failed", "error": "MemoryError: boom"},
        ],
    })  # fmt: skip
    frame = store.client_rounds_frame(experiment_id)
    assert frame["error"].tolist() == ["", "MemoryError: boom"] and frame["status"].tolist() == ["ok", "failed"]


def test_minilm_runs_stored_before_pooling_existed_keep_reading_cls(db_url):
    store = ExperimentStore(db_url)
    minilm = {"data": {"dataset": "ngss", "partition": "natural"}, "model": {"name": "minilm-lora"},
              "federation": {"num_clients": 9, "clients_per_round": 9}}  # fmt: skip
    tinyllama = {**minilm, "model": {"name": "tinyllama-lora", "pretrained": False}}
    ids = [store.create_experiment(c) for c in (minilm, tinyllama, {"model": {"name": "cnn"}}, {})]
    mean = store.create_experiment({**minilm, "model": {"name": "minilm-lora", "pooling": "mean"}})
    with migration_lock(store.engine) as connection:  # back to before 0005, as an older version stored them
        command.downgrade(alembic_config(connection), "0004")
    with store.engine.connect() as connection:
        downgraded = connection.execute(select(Experiment.config).where(Experiment.id == mean)).scalar_one()
    assert downgraded["model"] == {"name": "minilm-lora"}  # older code refuses keys it does not know
    store.engine.dispose()

    store = ExperimentStore(db_url)  # opening migrates to head

    configs = {i: store.get_experiment(i).config for i in [*ids, mean]}
    assert configs[ids[0]]["model"] == {"name": "minilm-lora", "pooling": "cls"}
    assert ExperimentConfig.from_dict(configs[ids[0]]).model.pooling == "cls"
    assert configs[ids[1]] == tinyllama and configs[ids[2]] == {"model": {"name": "cnn"}} and configs[ids[3]] == {}
    assert configs[mean]["model"] == {"name": "minilm-lora", "pooling": "cls"}  # downgrading dropped "mean"


# -- issue 18: claims, deletes, ids, names and timeouts -------------------------------------


def test_experiment_ids_are_never_reused_after_a_delete(db_url):
    store = ExperimentStore(db_url)
    first, second, third = (store.create_experiment({"n": n}) for n in range(3))
    store.delete_experiment(third)
    assert store.create_experiment({"n": 3}) == third + 1  # SQLite without AUTOINCREMENT gave `third` again
    assert [e.id for e in store.list_experiments()] == [third + 1, second, first]


def test_migration_0006_makes_sqlite_ids_autoincrement_keeps_the_rows_and_downgrades(tmp_path):
    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    store = ExperimentStore(url)
    with store.engine.begin() as connection:
        for number in (1, 2, 3):
            connection.execute(text(
                "INSERT INTO experiments (id, name, status, config, runtime, created_at, code_version, stop_requested) "
                f"VALUES ({number}, 'run {number}', 'completed', '{{}}', 'in-process', '2026-01-01 00:00:00', 'abc', 0)"
            ))  # fmt: skip
    store.record_round(1, round_row(1, 0.5))  # at head: the store's model has the round columns of later revisions
    with migration_lock(store.engine) as connection:  # a database as revision 0005 left it (downgrades keep rows)
        command.downgrade(alembic_config(connection), "0005")
    store.delete_experiment(3)
    assert store.create_experiment({}) == 3  # the old schema hands the deleted id out again
    store.delete_experiment(3)
    store.engine.dispose()

    store = ExperimentStore(url)  # opening migrates to head: 0006 rebuilds the table

    with store.engine.connect() as connection:
        schema = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'experiments'")).scalar()
    assert "AUTOINCREMENT" in schema
    assert [(e.id, e.name) for e in store.list_experiments()] == [(2, "run 2"), (1, "run 1")]
    assert store.rounds_frame([1])["accuracy"].tolist() == [0.5] and len(store.client_rounds_frame(1)) == 2
    newest = store.create_experiment({})
    store.delete_experiment(newest)
    assert store.create_experiment({}) == newest + 1
    assert rows_left_after_deleting_experiment(store, 1) == (0, 0)  # the foreign keys still cascade
    assert schema_differences(url) == []

    with migration_lock(store.engine) as connection:
        command.downgrade(alembic_config(connection), "0005")
    with store.engine.connect() as connection:
        schema = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'experiments'")).scalar()
        ids = connection.execute(text("SELECT id FROM experiments ORDER BY id DESC")).scalars().all()
    assert "AUTOINCREMENT" not in schema
    assert ids == [newest + 1, 2]  # read in SQL: the store's model has the columns of later revisions


@pytest.mark.parametrize("experiment_id", [2**31, 2**63, -(2**63) - 1, 10**30])
def test_an_id_too_large_for_the_column_names_no_experiment(db_url, experiment_id):
    """SQLite's INTEGER holds 64 bits, PostgreSQL's 32: a larger id raised OverflowError / DataError."""
    store = ExperimentStore(db_url)
    store.create_experiment({})

    assert store.get_experiment(experiment_id) is None
    assert store.load_checkpoint(experiment_id) is None and store.checkpoint_round(experiment_id) is None
    assert store.load_weights(experiment_id) is None and not store.stop_requested(experiment_id)
    assert store.rounds_frame([experiment_id]).empty and store.client_rounds_frame(experiment_id).empty
    assert store.round_rows(experiment_id) == []
    for write in (store.reopen, store.mark_running, store.request_stop, lambda i: store.finish(i, "failed")):
        with pytest.raises(KeyError, match="no experiment"):
            write(experiment_id)
    with pytest.raises(KeyError, match="no experiment"):
        store.record_round(experiment_id, round_row(1, 0.5))
    store.delete_experiment(experiment_id)  # nothing to delete
    assert len(store.list_experiments()) == 1


def test_a_name_longer_than_its_column_is_refused_before_anything_is_stored(db_url):
    store = ExperimentStore(db_url)
    with pytest.raises(ValueError, match="name: 201 characters, at most 200"):
        store.create_experiment({}, name="x" * 201)
    with pytest.raises(ValueError, match="NUL"):
        store.create_experiment({}, name="a\x00b")
    assert store.list_experiments() == []
    longest = store.create_experiment({}, name="é" * 200)  # characters, not bytes
    assert store.get_experiment(longest).name == "é" * 200


def claimed_run(store: ExperimentStore, *, rounds: int = 3) -> int:
    """A run killed after round 2 of `rounds` (its checkpoint with it), marked interrupted."""
    experiment_id = store.create_experiment({"federation": {"rounds": rounds}})
    store.mark_running(experiment_id, pid=111)
    for number in (1, 2):
        store.record_round(experiment_id, round_row(number, 0.5), checkpoint=b"state", worker_pid=111)
    store.finish(experiment_id, "interrupted", error="killed")
    return experiment_id


def test_reopen_is_a_claim_the_second_one_is_refused_and_changes_nothing(db_url):
    store = ExperimentStore(db_url)
    experiment_id = claimed_run(store)

    assert store.reopen(experiment_id, worker_pid=222) == 2
    with pytest.raises(ValueError, match=rf"experiment {experiment_id} is already being resumed \(by PID 222 on "):
        store.reopen(experiment_id, worker_pid=333)

    claimed = store.get_experiment(experiment_id)
    assert (claimed.status, claimed.worker_pid, claimed.error) == ("queued", 222, None)
    store.mark_running(experiment_id, pid=222)
    with pytest.raises(ValueError, match=r"is already running \(by PID 222 on "):
        store.reopen(experiment_id, worker_pid=333)
    with pytest.raises(ValueError, match="already running"):
        store.mark_running(experiment_id, pid=333)  # a second worker cannot start it either
    assert store.get_experiment(experiment_id).worker_pid == 222


def test_a_worker_that_lost_its_run_writes_nothing_more(db_url):
    store = ExperimentStore(db_url)
    experiment_id = claimed_run(store)  # worker 111 was taken for dead...
    store.reopen(experiment_id, worker_pid=222)  # ...and worker 222 resumed the run
    store.mark_running(experiment_id, pid=222)

    with pytest.raises(ValueError, match="already running"):  # 111 is still alive after all
        store.record_round(experiment_id, round_row(3, 0.9), checkpoint=b"stale", worker_pid=111)
    assert not store.finish(experiment_id, "failed", error="UNIQUE constraint failed", worker_pid=111)

    store.record_round(experiment_id, round_row(3, 0.7), checkpoint=b"state 3", worker_pid=222)
    assert store.finish(experiment_id, "completed", final={"accuracy": 0.7}, worker_pid=222)
    assert not store.finish(experiment_id, "failed", error="late", worker_pid=111)
    done = store.get_experiment(experiment_id)
    assert (done.status, done.error, done.final_accuracy) == ("completed", None, 0.7)
    assert store.rounds_frame([experiment_id])["accuracy"].tolist() == [0.5, 0.5, 0.7]
    assert store.load_checkpoint(experiment_id) == (3, b"state 3")
    with pytest.raises(ValueError, match="completed"):
        store.mark_running(experiment_id, pid=111)  # a settled run is never started again


def test_delete_refuses_a_run_that_a_worker_has(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({})
    store.record_round(experiment_id, round_row(1, 0.5))
    store.mark_running(experiment_id, pid=4242)

    with pytest.raises(ValueError, match=rf"experiment {experiment_id} is running \(PID 4242 on .*stop it first"):
        store.delete_experiment(experiment_id)
    assert store.rounds_frame([experiment_id])["round"].tolist() == [1]  # nothing was deleted

    store.finish(experiment_id, "stopped")
    store.delete_experiment(experiment_id)
    assert store.get_experiment(experiment_id) is None and store.rounds_frame([experiment_id]).empty
    unclaimed = store.create_experiment({})  # queued, no worker yet: nobody writes into it
    store.delete_experiment(unclaimed)
    assert store.list_experiments() == []


def test_postgresql_sessions_get_a_statement_timeout_and_keep_the_urls_own_options(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only (SQLite's busy timeout: test_sqlite_uses_wal_and_a_busy_timeout)")
    store = ExperimentStore(db_url)
    with store.engine.connect() as connection:
        assert connection.execute(text("SHOW statement_timeout")).scalar() == f"{STATEMENT_TIMEOUT_SECONDS}s"
        assert "fpl_test_" in connection.execute(text("SHOW search_path")).scalar()  # the fixture's options
    store.engine.dispose()
    url = make_url(db_url)
    faster = url.update_query_dict({"options": f"{url.query['options']} -c statement_timeout=200"})
    store = ExperimentStore(faster.render_as_string(hide_password=False))  # the URL's own setting wins
    started = time.monotonic()
    with store.engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
        connection.execute(text("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 3
    store.engine.dispose()


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: (its port, the
    connections it accepted). Everything is closed on leaving."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
        for connection in accepted:
            connection.close()


def test_a_postgresql_server_that_never_answers_fails_within_ten_seconds():
    with silent_server() as (port, accepted):
        started = time.monotonic()
        with pytest.raises(OperationalError, match="(?i)timeout"):
            ExperimentStore(f"postgresql+psycopg://fpl@127.0.0.1:{port}/fpl")
        elapsed = time.monotonic() - started
    assert accepted, "the driver never reached the silent server"
    assert elapsed < 10
    print(f"\na silent server failed the store after {elapsed:.1f} s (connect_timeout {CONNECT_TIMEOUT_SECONDS} s)")
