"""Checkpoint checksums (issue 18): a checkpoint whose bytes changed is refused with one line before a
resume claims the run, an intact one resumes to exactly the uninterrupted run's end, and one written
before checksums existed (migration 0008) still loads."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

import cli
from database import CheckpointCorrupted, ExperimentStore
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from migrations import alembic_config, migration_lock

CORRUPTED_BYTES = 64


def small_config() -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 3, "batch_size": 25, "learning_rate": 0.1},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": 3},
    })  # fmt: skip


def interrupted_after_round_one(store: ExperimentStore, config: ExperimentConfig, mnist) -> int:
    """A stored run that finished round 1 of 3 (with its checkpoint) and then died."""
    experiment_id = store.create_experiment(config.to_dict())
    run = FederatedRun(config, data=mnist)
    rounds = run.rounds()
    store.record_round(experiment_id, next(rounds).to_dict(), checkpoint=run.checkpoint())
    rounds.close()
    store.finish(experiment_id, "interrupted", error="killed")
    return experiment_id


def overwrite_state(store: ExperimentStore, experiment_id: int, state: bytes) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE checkpoints SET state = :state WHERE experiment_id = :id"),
                           {"state": state, "id": experiment_id})  # fmt: skip


def corrupted(state: bytes) -> bytes:
    """`state` with CORRUPTED_BYTES bytes in its middle inverted (so every one of them differs)."""
    middle = len(state) // 2
    flipped = bytes(b ^ 0xFF for b in state[middle : middle + CORRUPTED_BYTES])
    return state[:middle] + flipped + state[middle + CORRUPTED_BYTES :]


def test_a_checkpoint_is_stored_with_the_sha256_of_its_state(every_db_url, mnist):
    store = ExperimentStore(every_db_url)
    experiment_id = interrupted_after_round_one(store, small_config(), mnist)

    with store.engine.connect() as connection:
        state, digest = connection.execute(
            text("SELECT state, sha256 FROM checkpoints WHERE experiment_id = :id"), {"id": experiment_id}
        ).one()
    assert digest == hashlib.sha256(bytes(state)).hexdigest()
    assert store.load_checkpoint(experiment_id) == (1, bytes(state))
    store.engine.dispose()


def test_a_corrupted_checkpoint_is_refused_with_one_line_and_the_run_is_left_as_it_was(every_db_url, mnist, capsys):
    store = ExperimentStore(every_db_url)
    experiment_id = interrupted_after_round_one(store, small_config(), mnist)
    _round, state = store.load_checkpoint(experiment_id)
    overwrite_state(store, experiment_id, corrupted(state))

    with pytest.raises(CheckpointCorrupted, match=r"checkpoint of round 1 is corrupted \(checksum mismatch\)"):
        store.load_checkpoint(experiment_id)
    exit_code = cli.main(["resume", str(experiment_id), "--db", every_db_url])

    err = capsys.readouterr().err
    assert exit_code == cli.EXIT_FAILED
    assert err.count("\n") == 1 and "checkpoint of round 1 is corrupted (checksum mismatch)" in err
    assert "resume from round 2 impossible" in err
    after = store.get_experiment(experiment_id)
    assert (after.status, after.error, after.rounds_done) == ("interrupted", "killed", 1)  # the claim rolled back
    store.engine.dispose()


def test_an_intact_checkpoint_resumes_to_the_uninterrupted_runs_end(db_url, mnist):
    config = small_config()
    straight = list(FederatedRun(config, data=mnist).rounds())
    store = ExperimentStore(db_url)
    experiment_id = interrupted_after_round_one(store, config, mnist)

    assert cli.main(["resume", str(experiment_id), "--db", db_url]) == cli.EXIT_OK

    resumed = store.get_experiment(experiment_id)
    assert resumed.status == "completed" and resumed.rounds_done == 3
    assert resumed.final_accuracy == straight[-1].accuracy and resumed.final_loss == straight[-1].loss


def test_a_checkpoint_without_a_checksum_still_loads_and_resumes(db_url, mnist):
    """Written before migration 0008: sha256 is NULL, and the state loads unchecked."""
    config = small_config()
    straight = list(FederatedRun(config, data=mnist).rounds())
    store = ExperimentStore(db_url)
    experiment_id = interrupted_after_round_one(store, config, mnist)
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE checkpoints SET sha256 = NULL"))

    assert store.load_checkpoint(experiment_id)[0] == 1
    assert cli.main(["resume", str(experiment_id), "--db", db_url]) == cli.EXIT_OK
    assert store.get_experiment(experiment_id).final_accuracy == straight[-1].accuracy


def test_a_database_from_before_the_checksums_upgrades_and_its_checkpoints_load(db_url):
    from alembic import command

    store = ExperimentStore(db_url)
    with migration_lock(store.engine) as connection:
        command.downgrade(alembic_config(connection), "0007")
    experiment_id = store.create_experiment({})
    with store.engine.begin() as connection:
        columns = [row[1] for row in connection.execute(text("PRAGMA table_info(checkpoints)"))]
        assert "sha256" not in columns
        connection.execute(
            text(
                "INSERT INTO checkpoints (experiment_id, round, state, created_at) "
                "VALUES (:id, 2, :state, '2026-01-01')"
            ),
            {"id": experiment_id, "state": b"old state"},
        )
    store.engine.dispose()

    upgraded = ExperimentStore(db_url)  # opening brings it to head: 0008 adds the column, NULL for the old row

    assert upgraded.load_checkpoint(experiment_id) == (2, b"old state")
