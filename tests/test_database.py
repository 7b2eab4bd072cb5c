from __future__ import annotations

import pytest
from sqlalchemy import text

from database import ExperimentStore, resolve_url
from experiment_config import ExperimentConfig


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
    with pytest.raises(Exception, match="UNIQUE"):
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


def test_sqlite_uses_wal_and_a_busy_timeout(db_url):
    store = ExperimentStore(db_url)
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_url_comes_from_argument_then_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from-env.db")
    assert resolve_url("sqlite:///given.db") == "sqlite:///given.db"
    assert resolve_url(None) == "sqlite:///from-env.db"
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_url(None) == "sqlite:///experiments.db"


def test_a_database_from_an_earlier_version_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:  # the first release's schema, with one finished run
        connection.executescript(
            """
            CREATE TABLE experiments (id INTEGER PRIMARY KEY, name VARCHAR(200), status VARCHAR(20), config JSON,
                runtime VARCHAR(40), created_at DATETIME, started_at DATETIME, finished_at DATETIME,
                heartbeat_at DATETIME, error TEXT, code_version VARCHAR(64), worker_pid INTEGER,
                worker_host VARCHAR(255), stop_requested BOOLEAN, label_counts JSON, final_accuracy FLOAT,
                final_loss FLOAT, final_epsilon FLOAT);
            CREATE TABLE rounds (id INTEGER PRIMARY KEY, experiment_id INTEGER, round INTEGER, accuracy FLOAT,
                loss FLOAT, epsilon FLOAT, delta FLOAT, seconds FLOAT, eval_seconds FLOAT, bytes_up INTEGER,
                bytes_down INTEGER, num_clients INTEGER, created_at DATETIME);
            CREATE TABLE client_rounds (id INTEGER PRIMARY KEY, round_id INTEGER, client_id INTEGER,
                num_examples INTEGER, steps INTEGER, loss FLOAT, epsilon FLOAT);
            INSERT INTO experiments VALUES (1, 'old', 'completed', '{}', 'in-process', '2026-01-01 00:00:00',
                NULL, NULL, NULL, NULL, 'abc', NULL, NULL, 0, NULL, 0.9, 0.3, 0.0);
            INSERT INTO rounds VALUES (1, 1, 1, 0.9, 0.3, 0.0, 0.0, 1.0, 0.1, 10, 10, 2, '2026-01-01 00:00:00');
            """
        )
    store = ExperimentStore(f"sqlite:///{path}")
    (old,) = store.list_experiments()
    assert (old.name, old.final_accuracy, old.audit, old.stop_reason) == ("old", 0.9, None, None)
    ledger = store.rounds_frame([1])
    assert ledger["accountant"].tolist() == [""] and ledger["privacy_steps"].tolist() == [0]
    new = store.create_experiment({"b": 1})
    store.record_round(new, round_row(1, 0.5))
    assert store.rounds_frame([new])["accuracy"].tolist() == [0.5]


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
