"""Storage hardening (issue 18): a damaged SQLite page is reported when a store opens the file (the CLI:
one line, exit 2), a run's error text is stored without NUL and control characters on every backend,
and a PostgreSQL statement stuck behind a lock fails at the statement timeout instead of hanging."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DataError, OperationalError

import cli
from database import (
    ANSWER_DEADLINE_SECONDS,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    DatabaseCorrupted,
    ExperimentStore,
    _connect_args,
)

CLIENTS_PER_ROUND, ROUNDS = 50, 40  # 2,000 client rows: many leaf pages in client_rounds


def filled_database(path: Path) -> str:
    """A SQLite experiments database with one run of ROUNDS rounds of CLIENTS_PER_ROUND clients."""
    url = f"sqlite:///{path}"
    store = ExperimentStore(url)
    experiment_id = store.create_experiment({"federation": {"rounds": ROUNDS}})
    for number in range(1, ROUNDS + 1):
        clients = [{"id": c, "num_examples": 600, "steps": 12, "loss": 0.3} for c in range(CLIENTS_PER_ROUND)]
        store.record_round(experiment_id, {"round": number, "accuracy": 0.9, "loss": 0.3, "seconds": 1.0,
                                           "bytes_up": 1, "bytes_down": 1, "clients": clients})  # fmt: skip
    store.finish(experiment_id, "completed")
    store.engine.dispose()
    return url


def damage_a_data_page(path: Path) -> int:
    """Overwrite 64 bytes of a leaf page of client_rounds (its cell pointers) with 0xFF; returns the page."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        page = connection.execute(
            "SELECT pageno FROM dbstat WHERE name = 'client_rounds' AND pagetype = 'leaf' "
            "ORDER BY pageno LIMIT 1 OFFSET 3"
        ).fetchone()[0]
    connection.close()
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * page_size + 16)
        handle.write(b"\xff" * 64)
    return page


def test_an_intact_file_opens(tmp_path):
    url = filled_database(tmp_path / "intact.db")
    assert ExperimentStore(url).get_experiment(1).rounds_done == ROUNDS


def test_a_damaged_page_is_reported_when_the_store_opens(tmp_path):
    path = tmp_path / "damaged.db"
    url = filled_database(path)
    page = damage_a_data_page(path)

    # SQLite names the page, or (when the damage stops the check itself) says the image is malformed.
    found = rf"(On tree page {page} .*|database disk image is malformed)"
    with pytest.raises(DatabaseCorrupted, match=rf"{path} is corrupted \(quick_check: {found}\)") as raised:
        ExperimentStore(url)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("command", [["list"], ["show", "1"], ["run", "--set", "federation.rounds=1"]])
def test_the_cli_turns_a_damaged_file_into_one_line_and_exit_2(tmp_path, capsys, command):
    path = tmp_path / "damaged.db"
    url = filled_database(path)
    damage_a_data_page(path)
    before = path.read_bytes()

    exit_code = cli.main([*command, "--db", url])

    out, err = capsys.readouterr()
    assert exit_code == cli.EXIT_BAD_CONFIG
    assert err.count("\n") == 1 and "is corrupted (quick_check:" in err and "sqlite3 FILE .recover" in err
    assert out == ""  # nothing listed, shown or run
    assert path.read_bytes() == before  # nothing written: no migration, no new run


def test_an_error_text_is_stored_without_nul_and_control_characters(every_db_url):
    store = ExperimentStore(every_db_url)
    experiment_id = store.create_experiment({})
    raw = "RuntimeError: bad\x00 value\x1b[31m red\x07\r\n  line two\tend \ud800!"

    store.finish(experiment_id, "failed", error=raw, stop_reason="why\x00 not")

    stored = store.get_experiment(experiment_id)
    assert stored.error == "RuntimeError: bad value[31m red\n  line two\tend \ufffd!"  # by hand: \x00 \x1b \x07 \r out
    assert stored.stop_reason == "why not"
    store.engine.dispose()


def test_postgresql_itself_refuses_the_nul_the_store_removes(every_db_url):
    """Why the backstop exists: the same text written straight past the store fails on PostgreSQL."""
    if not every_db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite stores a NUL")
    store = ExperimentStore(every_db_url)
    experiment_id = store.create_experiment({})
    with pytest.raises(DataError, match="(?i)nul|0x00"), store.engine.begin() as connection:
        connection.execute(text("UPDATE experiments SET error = :error WHERE id = :id"),
                           {"error": "bad\x00", "id": experiment_id})  # fmt: skip
    store.engine.dispose()


def test_a_statement_stuck_behind_a_lock_fails_at_the_statement_timeout(every_db_url, capsys):
    """A server that answers the connection but not the query (here: a table lock held by another
    session) ends the statement after STATEMENT_TIMEOUT_SECONDS; the CLI says so in one line, exit 2."""
    if not every_db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only (SQLite's lock wait: its busy timeout)")
    assert STATEMENT_TIMEOUT_SECONDS <= 10
    ExperimentStore(every_db_url).engine.dispose()  # the schema, migrated
    holder = create_engine(every_db_url)
    with holder.connect() as connection, connection.begin():
        connection.execute(text("LOCK TABLE experiments IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        exit_code = cli.main(["list", "--db", every_db_url])
        elapsed = time.monotonic() - started
    holder.dispose()

    err = capsys.readouterr().err
    assert exit_code == cli.EXIT_BAD_CONFIG
    assert err.count("\n") == 1 and "canceling statement due to statement timeout" in err
    print(f"\nthe locked query failed after {elapsed:.1f} s (statement_timeout {STATEMENT_TIMEOUT_SECONDS} s)")


def test_a_frozen_server_whose_kernel_still_answers_fails_within_the_deadline(every_db_url):
    """The backend serving the store's connection is stopped (SIGSTOP): its kernel still ACKs, so
    neither keepalives nor the server's statement_timeout can end the query. The client's own
    deadline does, within ANSWER_DEADLINE_SECONDS (≤ 10 s), and the next call gets a fresh connection."""
    if not every_db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    assert ANSWER_DEADLINE_SECONDS <= 10
    store = ExperimentStore(every_db_url)
    with store.engine.connect() as connection:  # the pool's one connection, reused by the next call
        backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match=f"did not answer within {ANSWER_DEADLINE_SECONDS} s"):
            store.list_experiments()
        elapsed = time.monotonic() - started
    finally:
        os.kill(backend, signal.SIGCONT)
    assert ANSWER_DEADLINE_SECONDS - 0.5 <= elapsed < ANSWER_DEADLINE_SECONDS + 3
    assert store.list_experiments() == []  # the closed connection was dropped; a fresh one answers
    store.engine.dispose()
    print(f"\nthe frozen server's query failed after {elapsed:.1f} s (deadline {ANSWER_DEADLINE_SECONDS} s)")


def test_postgresql_connections_carry_keepalives_that_a_url_can_override(every_db_url):
    """A server gone mid-query: libpq's keepalives notice it (the real driver connection's settings)."""
    if not every_db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    store = ExperimentStore(every_db_url)
    with store.engine.connect() as connection:
        parameters = connection.connection.driver_connection.info.get_parameters()
    assert (parameters["keepalives"], parameters["keepalives_idle"]) == ("1", str(KEEPALIVE_IDLE_SECONDS))
    assert parameters["keepalives_interval"] == str(KEEPALIVE_INTERVAL_SECONDS)
    assert parameters["keepalives_count"] == str(KEEPALIVE_COUNT)
    store.engine.dispose()
    own = make_url(every_db_url).update_query_dict({"keepalives_idle": "30"}).render_as_string(hide_password=False)
    assert "keepalives_idle" not in _connect_args(own)  # the URL's own value reaches libpq instead


def test_sqlite_and_other_drivers_get_no_postgresql_arguments():
    assert _connect_args("sqlite:///x.db") == {"timeout": 30}
    assert _connect_args("mysql+pymysql://u@h/db") == {}
