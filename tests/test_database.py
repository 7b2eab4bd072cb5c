"""The store against SQLite, and against PostgreSQL when FPL_TEST_POSTGRES_URL names one
(`postgresql+psycopg://user@127.0.0.1:5432/db`; each test gets a schema of its own)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, delete, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from conftest import REPO
from database import (
    Base,
    ClientRound,
    Experiment,
    ExperimentStore,
    ModelWeights,
    Round,
    resolve_url,
)
from experiment_config import ExperimentConfig
from migrations import alembic_config, migration_lock

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
