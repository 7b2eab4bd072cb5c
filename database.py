"""Experiment storage: SQLAlchemy 2.0 models and the repository the CLI, worker and page use.

The database is the source of truth for every run. The worker writes; the page reads.
Each finished round is committed in its own short transaction, so a reader (the live
view, a second tab) sees every round as soon as it exists.

    store = ExperimentStore()                     # DATABASE_URL or sqlite:///experiments.db
    experiment_id = store.create_experiment(config.to_dict())
    store.record_round(experiment_id, round_result)
    store.finish(experiment_id, "completed", final={"accuracy": 0.99})
    store.rounds_frame([experiment_id])            # pandas DataFrame for the charts
    store.save_weights(experiment_id, flat.numpy().astype("<f4").tobytes(), flat.numel())
    store.load_weights(experiment_id).values()     # a text model's final LoRA + head, float32

Any SQLAlchemy URL works: SQLite (the default; WAL and a busy timeout, so the page reads
while the worker writes) or PostgreSQL (`postgresql+psycopg://user:password@host/db`; a
connect and a statement timeout, so a server that never answers fails instead of hanging).

A run belongs to one worker at a time. `reopen` (resume) and `mark_running` claim it with a
conditional UPDATE whose row count decides, on every backend, so two resumes at once never
both run; a worker's rounds and result are written only while the run is still its own (its
PID and host). Liveness is by PID on this host and by heartbeat for runs on other hosts.

The schema is versioned with Alembic (`migrations/versions/`). Opening a store brings the
database to the newest revision by itself: a new database is created, an older one is
upgraded in place, keeping its rows, and one made before this project used Alembic is
adopted by the baseline revision (it gains the columns it lacks). Only one process
migrates at a time (`migrations.migration_lock`); the others wait, then find nothing
left to do.

To add a column: add it to its model below, then one revision file, the next in line.
From the repository root, against a scratch database, Alembic writes it for you:

    export DATABASE_URL=sqlite:////tmp/scratch.db
    python3 -m alembic upgrade head
    python3 -m alembic revision --autogenerate --rev-id 0002 -m "rounds.foo"

gives migrations/versions/0002_rounds_foo.py with, in `upgrade()`, something like

    op.add_column("rounds", sa.Column("foo", sa.Float(), nullable=False, server_default="0"))

Existing rows need a value: give a NOT NULL column a `server_default` (autogenerate
leaves it out), or make it nullable. On SQLite, changes beyond adding a column go inside
`with op.batch_alter_table("rounds") as batch_op:` (autogenerate writes that). Nothing
else to do: the tests fail until the models and the migrated schema agree, on SQLite
and on PostgreSQL, and an old database must still upgrade with its rows.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import socket
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    make_url,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from engine.results import CLIENT_FIELDS, ROUND_FIELDS
from migrations import upgrade_to_head

if TYPE_CHECKING:
    import pandas as pd  # (~0.4 s to import) loads when a frame is first read, not with the page's sidebar

DEFAULT_URL = "sqlite:///experiments.db"
STATUSES = ("queued", "running", "completed", "failed", "stopped", "interrupted")
FINAL_STATUSES = ("completed", "failed", "stopped", "interrupted")
ARRIVED = ("ok", "partial")  # client statuses whose update reached the server
WEIGHTS_DTYPE = np.dtype("<f4")  # stored weights: little-endian float32, whatever the machine
DEAD_WORKER_ERROR = "the worker process ended without finishing the run"
HEARTBEAT_SECONDS = 5.0  # a running worker touches `heartbeat_at` this often, even mid-round
# A run whose worker is on another machine counts as dead when its heartbeat is this old
# (on this machine its PID answers at once). Assumes the machines' clocks agree (NTP).
STALE_HEARTBEAT_SECONDS = 30.0
STALE_HEARTBEAT_ERROR = "the worker stopped sending its heartbeat (its machine or process died)"
RESUMABLE_STATUSES = ("interrupted", "stopped", "failed")
ACTIVE_STATUSES = ("queued", "running")  # claimed by a worker (waiting for it, or running in it)
# A PostgreSQL server that accepts connections but never answers fails a connect after this many
# seconds (libpq's connect_timeout, per address tried), and the server ends a statement after
# STATEMENT_TIMEOUT_SECONDS (a lock wait included) instead of letting a caller hang for ever. A
# server (or the network to it) that vanishes mid-query is noticed by TCP keepalives after about
# KEEPALIVE_IDLE_SECONDS + KEEPALIVE_COUNT × KEEPALIVE_INTERVAL_SECONDS (9 s), libpq's tcp_user_timeout
# for data that stays unacknowledged. Both within 10 s of the query.
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_SECONDS = 9
# A server whose kernel still ACKs (a frozen or stopped postgres process) never sends the statement
# timeout's error and keeps keepalives answered: the client gives up on its own after this long
# (psycopg's wait for the answer, `_AnsweringConnection`), the connection closed, never reused.
ANSWER_DEADLINE_SECONDS = STATEMENT_TIMEOUT_SECONDS + 1
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_COUNT = 5, 2, 2
# The id column is INTEGER: 64-bit on SQLite, 32-bit on PostgreSQL. A larger id names no
# experiment; the drivers would raise OverflowError / DataError for it, so the store never sends one.
MAX_ID = {"sqlite": 2**63 - 1}
MAX_ID_OTHERS = 2**31 - 1


class ClaimLost(ValueError):
    """A write refused because another worker has the run (or it was settled meanwhile)."""


class DatabaseCorrupted(RuntimeError):
    """A SQLite file whose pages `PRAGMA quick_check` finds damaged: nothing in it is to be trusted."""


class CheckpointCorrupted(ValueError):
    """A checkpoint whose state no longer matches the SHA-256 stored with it: resuming from it would
    silently give other results (or crash mid-restore), so it is refused."""


def check_intact(experiment_id: int, round_number: int, state: bytes, sha256: str | None) -> None:
    """Raise CheckpointCorrupted unless `state` hashes to `sha256` (None: a checkpoint from before
    migration 0008, accepted unchecked). Only the newest checkpoint is kept, so there is no earlier
    one to fall back to: the message says to start the run again."""
    if sha256 is not None and hashlib.sha256(state).hexdigest() != sha256:
        raise CheckpointCorrupted(
            f"experiment {experiment_id}: checkpoint of round {round_number} is corrupted (checksum mismatch); "
            f"resume from round {round_number + 1} impossible (only the newest checkpoint is kept): "
            "start the run again"
        )


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    # SQLite reuses max(id) + 1 after a delete without AUTOINCREMENT (migration 0006); PostgreSQL's
    # sequence never goes back. An id, once shown, names one experiment for good.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    runtime: Mapped[str] = mapped_column(String(40), default="in-process")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    code_version: Mapped[str] = mapped_column(String(64), default="")
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Per-client label counts of the partition: list (clients) of lists (classes).
    label_counts: Mapped[list[list[int]] | None] = mapped_column(JSON, nullable=True)
    final_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    final_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    final_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The σ the run used (after target-ε calibration) and why it ended early, if it did.
    noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The empirical privacy audit of the final model (membership inference): auc, advantage, ...
    audit: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The federation as set up: per client its speed, dropout probability, link, malice.
    client_profiles: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Personalization: per client the global and the personalized model's held-out accuracy.
    personalization: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # What data the run used: its source ("mnist", "synthetic", "imported"), task and clients.
    dataset_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A researcher's free labels (`set_tags`; NULL reads as none), and where the running round stands (`set_progress`).
    tags: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    rounds: Mapped[list[Round]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("experiment_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float)
    eval_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_up: Mapped[int] = mapped_column(Integer)
    bytes_down: Mapped[int] = mapped_column(Integer)
    num_clients: Mapped[int] = mapped_column(Integer)
    # The privacy ledger (zeros / empty without privacy); see federated_learning.RoundResult.
    noise_multiplier: Mapped[float] = mapped_column(Float, default=0.0)
    max_grad_norm: Mapped[float] = mapped_column(Float, default=0.0)
    sample_rate: Mapped[float] = mapped_column(Float, default=0.0)
    privacy_steps: Mapped[int] = mapped_column(Integer, default=0)
    accountant: Mapped[str] = mapped_column(String(16), default="")
    neighbouring_relation: Mapped[str] = mapped_column(String(32), default="")
    # Why the model was not updated this round ("" when it was), the clients selected,
    # and the simulated wall-clock time of the round over the simulated network.
    skipped: Mapped[str] = mapped_column(Text, default="")
    num_selected: Mapped[int] = mapped_column(Integer, default=0)
    simulated_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # Secure aggregation's statistics (bytes of keys/shares/masked vectors, dropouts recovered, seconds).
    secure_aggregation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Workload-specific metrics beyond accuracy/loss (NGSS: exact match, F1, MAE, per label and school).
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Fairness over every client's held-out split (engine.results.RoundResult; NULL without a client holdout).
    client_accuracy_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    client_accuracy_worst10: Mapped[float | None] = mapped_column(Float, nullable=True)
    client_accuracy_variance: Mapped[float | None] = mapped_column(Float, nullable=True)
    client_accuracy_gini: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    clients: Mapped[list[ClientRound]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class ClientRound(Base):
    __tablename__ = "client_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[int] = mapped_column(Integer)
    num_examples: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    sample_rate: Mapped[float] = mapped_column(Float, default=0.0)
    # ok | partial (straggler, fewer steps) | lost (trained, update never arrived) |
    # dropped (never started) | late (past the deadline, dropped) | failed (raised or sent NaN/inf: excluded) |
    # excluded (arrived, left out as suspicious)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    malicious: Mapped[bool] = mapped_column(Boolean, default=False)
    bytes_up: Mapped[int] = mapped_column(Integer, default=0)
    bytes_down: Mapped[int] = mapped_column(Integer, default=0)
    simulated_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    validation_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="", server_default="")  # why a failed client was excluded
    global_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # the round's global model, its holdout
    suspicion: Mapped[float | None] = mapped_column(Float, nullable=True)  # engine.suspicion's score; NULL: not scored
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    staleness: Mapped[int | None] = mapped_column(Integer, nullable=True)  # async: server steps it missed; NULL: sync


class ModelWeights(Base):
    """A text-model run's final exchanged weights (LoRA + head): `model.flatten` as little-endian float32."""

    __tablename__ = "model_weights"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    num_values: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Checkpoint(Base):
    """The state after a run's last committed round, to resume it (`federated_learning.FederatedRun.checkpoint`):
    one row per experiment, replaced in the same transaction as each round it follows."""

    __tablename__ = "checkpoints"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer)
    state: Mapped[bytes] = mapped_column(LargeBinary)  # torch.save of tensors and plain values; weights_only load
    # SHA-256 (hex) of `state`, checked before a resume; None for checkpoints written before migration 0008.
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


@dataclass(frozen=True)
class StoredWeights:
    """One run's stored final weights, session-free: `values()` is the (num_values,) float32 vector."""

    experiment_id: int
    weights: bytes
    num_values: int
    created_at: datetime

    def values(self) -> np.ndarray:
        return np.frombuffer(self.weights, dtype=WEIGHTS_DTYPE)


@dataclass(frozen=True)
class ExperimentSummary:
    """A plain, session-free view of one experiment for the CLI and the page."""

    id: int
    name: str
    status: str
    config: dict[str, Any]
    runtime: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    code_version: str
    worker_pid: int | None
    worker_host: str | None
    stop_requested: bool
    label_counts: list[list[int]] | None
    final_accuracy: float | None
    final_loss: float | None
    final_epsilon: float | None
    noise_multiplier: float | None
    stop_reason: str | None
    audit: dict[str, Any] | None
    rounds_done: int
    client_profiles: list[dict[str, Any]] | None = None
    personalization: dict[str, Any] | None = None
    dataset_info: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    def to_json_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.__dataclass_fields__}
        for key in ("created_at", "started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["duration_seconds"] = self.duration_seconds
        return out


def resolve_url(url: str | None = None) -> str:
    """The URL given, else `DATABASE_URL`, else `sqlite:///experiments.db`."""
    return url or os.environ.get("DATABASE_URL") or DEFAULT_URL


def make_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """An engine for `url` (see `resolve_url`), its database brought to the newest schema
    revision unless `migrate` is false. SQLite gets WAL and a busy timeout; only SQLite. An
    existing SQLite file is checked first (`check_sqlite_file`): DatabaseCorrupted, before
    anything reads or migrates it, when its pages are damaged."""
    url = resolve_url(url)
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    path = make_url(url).database if is_sqlite else None
    if path and path != ":memory:":
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args=_connect_args(url), json_serializer=json_dumps)
    if make_url(url).drivername == "postgresql+psycopg":
        event.listen(engine, "do_connect", _answering_connect)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        if path and path != ":memory:" and Path(path).expanduser().is_file():
            check_sqlite_file(engine, Path(path).expanduser())
    if migrate:
        upgrade_to_head(engine)
    return engine


def check_sqlite_file(engine: Engine, path: Path) -> None:
    """Raise DatabaseCorrupted (one line naming the file and SQLite's first finding) unless `PRAGMA
    quick_check` finds the file's pages intact. It reads every page once, without integrity_check's
    cross-check of each index against its table: 0.1 s for a 50 MB file here (integrity_check 0.2 s),
    so it runs whenever a store opens one, and a damaged page is reported then, not as wrong or
    missing rows later."""
    try:
        with engine.connect() as connection:
            findings = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check").all()]
    except DBAPIError as error:  # a header or root page too damaged to even run the check
        if not isinstance(error.orig, sqlite3.DatabaseError) or isinstance(error.orig, sqlite3.OperationalError):
            raise
        findings = [" ".join(str(error.orig).split())]
    if findings != ["ok"]:  # one finding may span lines, under a "*** in database main ***" heading
        engine.dispose()  # no pooled connection stays open on the damaged file
        lines = [line for finding in findings for line in finding.splitlines() if not line.startswith("***")]
        first = lines[0][:120] if lines else "no answer"
        more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
        raise DatabaseCorrupted(
            f"the SQLite file {path} is corrupted (quick_check: {first}{more}): "
            "restore it from a backup or salvage it with `sqlite3 FILE .recover`"
        )


def _answering_connect(_dialect: Any, _record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
    """SQLAlchemy's `do_connect` for psycopg 3: the connection waits for answers with a deadline."""
    return _answering_connection_class().connect(*cargs, **cparams)


@functools.cache
def _answering_connection_class() -> type:
    """A psycopg connection whose every wait for the server (a statement, a fetch, a commit) ends
    after ANSWER_DEADLINE_SECONDS with OperationalError, the connection closed: the server's own
    statement_timeout ends what it runs before that, so only a server that cannot answer at all
    (frozen, stopped, its machine hung while its kernel still ACKs) gets here."""
    import psycopg
    from psycopg import errors

    class _AnsweringConnection(psycopg.Connection):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval=interval, timeout=ANSWER_DEADLINE_SECONDS if timeout is None else timeout)
            except errors._WaitTimeout:  # psycopg's own "wait timeout expired": the deadline passed
                self.pgconn.finish()  # mid-protocol: the connection cannot be used again
                raise psycopg.OperationalError(
                    f"the PostgreSQL server did not answer within {ANSWER_DEADLINE_SECONDS} s (frozen or overloaded?)"
                ) from None

    return _AnsweringConnection


def _connect_args(url: str) -> dict[str, Any]:
    """The driver's timeouts. SQLite: 30 s for a lock (and `_sqlite_pragmas`' busy timeout).
    PostgreSQL (psycopg, psycopg2): CONNECT_TIMEOUT_SECONDS to connect and STATEMENT_TIMEOUT_SECONDS
    per statement, in front of any `options` the URL carries (so a URL's own setting wins), and TCP
    keepalives, so a server gone mid-query fails the statement instead of hanging it; a URL's own
    keepalive or tcp_user_timeout parameters win too."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"timeout": 30}
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        return {}
    given = parsed.query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    args: dict[str, Any] = {"options": f"-c statement_timeout={STATEMENT_TIMEOUT_SECONDS * 1000} {given}".strip()}
    defaults = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS, "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": (KEEPALIVE_IDLE_SECONDS + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_SECONDS) * 1000,  # ms
    }  # fmt: skip
    args.update({key: value for key, value in defaults.items() if key not in parsed.query})
    return args


def storable_text(text: str | None) -> str | None:
    """`text` as every backend stores it: NUL (PostgreSQL refuses it in a text column) and the other
    control characters removed, line breaks and tabs kept (a traceback's lines), a lone surrogate
    (which has no UTF-8) replaced by U+FFFD. Whatever an exception said, the run's end is stored."""
    if text is None:
        return None
    kept = (char for char in text if char in "\n\t" or unicodedata.category(char) != "Cc")
    return "".join("\ufffd" if unicodedata.category(char) == "Cs" else char for char in kept)


class JSONText(str):
    """A value the JSON columns store as it is: JSON already written (`json_list`, `json_columns`)."""


def json_dumps(value: Any) -> str:
    """Standard JSON for the JSON columns: NaN and ±infinity become null. PostgreSQL rejects
    them, and SQLite gets the same, so a run stores the same whatever the backend. A value
    with none is written as it is, without first being copied."""
    if isinstance(value, JSONText):
        return str(value)
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a non-finite float somewhere
        return json.dumps(_finite(value))


JSON_CHUNK = 1_000  # items `json_list` holds as Python objects at once


def json_columns(columns: Mapping[str, Sequence[Any]]) -> JSONText:
    """{"columns": {name: [values]}} as JSON, one column (a list or a numpy array) turned into Python values at
    a time; `profile_rows` reads it back as rows. The columns must be of one length."""
    if len({len(column) for column in columns.values()}) > 1:
        raise ValueError("the columns are not all of one length")
    pieces = [f"{json.dumps(str(name))}: {json_dumps(np.asarray(column).tolist())}" for name, column in columns.items()]
    return JSONText('{"columns": {' + ", ".join(pieces) + "}}")


def json_list(items: Iterable[Any]) -> JSONText:
    """The JSON array of `items` (as `json_dumps` writes each), built `JSON_CHUNK` items at a time: storing
    100,000 clients' profiles never holds 100,000 dicts at once."""
    iterator, pieces = iter(items), []
    while chunk := list(itertools.islice(iterator, JSON_CHUNK)):
        pieces.append(json_dumps(chunk)[1:-1])
    return JSONText("[" + ",".join(pieces) + "]")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # ms a writer waits for a lock; first, for the next line
    # Readers never wait for the writer. Switching a new file to WAL needs an exclusive lock, and SQLite
    # reports "database is locked" at once (no busy wait) while another process is opening it too: retry.
    deadline = time.monotonic() + 30.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _bound_update(values: dict[str, Any], *where: Any) -> tuple[Any, dict[str, Any]]:
    """(statement, parameters) of an UPDATE of `values` on the experiments matching `where`, the values bound
    at execution rather than written into the statement: SQLAlchemy's compiled-statement cache keeps the
    first statement of each shape alive, and with it whatever it carries (a 100,000-client profile list)."""
    columns = Experiment.__table__.columns
    statement = update(Experiment).where(*where).values(
        {name: bindparam(f"new_{name}", type_=columns[name].type) for name in values})
    return statement, {f"new_{name}": value for name, value in values.items()}


class ExperimentStore:
    """Repository over one database. One per process; every method is one transaction."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.max_id = MAX_ID.get(self.engine.dialect.name, MAX_ID_OTHERS)

    def _fits(self, experiment_id: int) -> bool:
        """Whether `experiment_id` fits the id column; one that does not names no experiment."""
        return -self.max_id - 1 <= experiment_id <= self.max_id

    # -- writing (the worker) -------------------------------------------------

    def create_experiment(
        self, config: dict[str, Any], *, name: str = "", runtime: str = "in-process", code_version: str = "unknown"
    ) -> int:
        """A new `queued` experiment; `code_version`: the commit of the code that will run it.
        Raises ValueError for a name longer than the column holds or with a NUL character."""
        limit = Experiment.__table__.c.name.type.length
        if len(name) > limit:
            raise ValueError(f"name: {len(name)} characters, at most {limit}")
        if "\x00" in name:
            raise ValueError("name: contains a NUL character")
        with self.sessions.begin() as session:
            experiment = Experiment(
                name=name, status="queued", config=config, runtime=runtime, code_version=code_version
            )
            session.add(experiment)
            session.flush()
            return experiment.id

    def mark_running(self, experiment_id: int, *, pid: int | None = None) -> None:
        """Start a `queued` run in process `pid` (default: this one) on this host. Raises ClaimLost
        when the run is not queued (another worker runs it, or it was settled meanwhile): nothing
        is written then. KeyError when there is no such run."""
        now = utcnow()
        if not self._fits(experiment_id):
            raise KeyError(f"no experiment with id {experiment_id}")
        with self.sessions.begin() as session:
            started = session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id, Experiment.status == "queued")
                .values(
                    status="running",
                    started_at=func.coalesce(Experiment.started_at, now),  # a resumed run keeps its start
                    heartbeat_at=now,
                    worker_pid=pid if pid is not None else os.getpid(),
                    worker_host=socket.gethostname(),
                )
            ).rowcount
            if not started:
                raise self._why_not(session, experiment_id, "start")

    def set_worker(self, experiment_id: int, pid: int) -> None:
        """Record the process that will run a queued experiment (to detect if it dies)."""
        self._update(experiment_id, worker_pid=pid, worker_host=socket.gethostname())

    def set_label_counts(self, experiment_id: int, label_counts: Iterable[Sequence[int]]) -> None:
        """Store the (clients, classes) example counts, a row a client (lists or a numpy array's rows)."""
        self._update(experiment_id, label_counts=json_list([int(count) for count in row] for row in label_counts))

    def heartbeat(self, experiment_id: int) -> None:
        self._update(experiment_id, heartbeat_at=utcnow())

    def record_round(
        self, experiment_id: int, result: dict[str, Any], *, checkpoint: bytes | None = None,
        worker_pid: int | None = None,
    ) -> None:  # fmt: skip
        """Store one round (`round, accuracy, loss, ...`, `clients: [...]`) atomically, with the
        run's `checkpoint` after it when given: a round is never stored without its checkpoint.
        `worker_pid`: only while the run is still this worker's (PID and host), else ClaimLost and
        nothing is stored (a worker whose run another one resumed writes nothing more). KeyError
        when there is no such run."""
        if not self._fits(experiment_id):
            raise KeyError(f"no experiment with id {experiment_id}")
        with self.sessions.begin() as session:
            touched = session.execute(  # first: it takes the row (SQLite: the database) for this write
                update(Experiment)
                .where(Experiment.id == experiment_id, *self._claimed_by(worker_pid))
                .values(heartbeat_at=utcnow())
            ).rowcount
            if not touched:
                raise self._why_not(session, experiment_id, "record a round of")
            clients = result.get("clients", [])
            row = Round(
                experiment_id=experiment_id,
                num_clients=sum(c.get("status", "ok") in ARRIVED for c in clients),
                num_selected=len(clients),
                **_columns(Round, result, ROUND_FIELDS),
            )
            session.add(row)
            session.flush()  # its id, for the client rows
            if clients:  # one executemany, no ORM object per client (10,000 clients a round: ~50 MB less at peak)
                session.execute(insert(ClientRound), [
                    {"round_id": row.id, "client_id": int(client["id"]),
                     **_columns(ClientRound, client, CLIENT_FIELDS[1:])}
                    for client in clients
                ])  # fmt: skip
            if checkpoint is not None:
                state = bytes(checkpoint)
                session.merge(Checkpoint(
                    experiment_id=experiment_id, round=row.round, state=state,
                    sha256=hashlib.sha256(state).hexdigest(), created_at=utcnow(),
                ))  # fmt: skip

    def load_checkpoint(self, experiment_id: int) -> tuple[int, bytes] | None:
        """(round, state) of a run's newest checkpoint, or None if it has none. CheckpointCorrupted (a
        ValueError, one line) when the state no longer matches the SHA-256 stored with it; one written
        before checksums existed (no SHA-256) loads unchecked."""
        if not self._fits(experiment_id):
            return None
        with self.sessions() as session:
            row = session.get(Checkpoint, experiment_id)
            if row is None:
                return None
            state = bytes(row.state)
            check_intact(experiment_id, row.round, state, row.sha256)
            return row.round, state

    def checkpoint_round(self, experiment_id: int) -> int | None:
        """The round a run's checkpoint follows (without reading the state), or None."""
        if not self._fits(experiment_id):
            return None
        with self.sessions() as session:
            return session.scalar(select(Checkpoint.round).where(Checkpoint.experiment_id == experiment_id))

    def reopen(self, experiment_id: int, *, worker_pid: int | None = None) -> int:
        """Claim an interrupted, stopped or failed run with a checkpoint for process `worker_pid`
        (default: this one) on this host: it becomes `queued` again, to resume after the
        checkpoint's round; rounds stored after it (none, as both are written in one transaction)
        are removed. Returns that round. Raises ValueError when it cannot resume (naming the worker
        that has it when another one claimed it first), KeyError when there is no such run.

        The claim is one conditional UPDATE whose row count decides, so of two resumes at once
        exactly one wins on every backend: SQLite serialises the writes (the second waits for the
        first to commit, then finds the run queued), PostgreSQL re-checks the condition on the row
        the first one committed. A look-up first (even `SELECT ... FOR UPDATE`, which SQLite
        ignores) would let both read "interrupted" and both run. A refusal changes nothing."""
        pid = worker_pid if worker_pid is not None else os.getpid()
        if not self._fits(experiment_id):
            raise KeyError(f"no experiment with id {experiment_id}")
        with self.sessions.begin() as session:
            claimed = session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id, Experiment.status.in_(RESUMABLE_STATUSES))
                .values(
                    status="queued", finished_at=None, error=None, stop_requested=False, stop_reason=None,
                    worker_pid=pid, worker_host=socket.gethostname(),
                    final_accuracy=None, final_loss=None, final_epsilon=None, audit=null(), personalization=null(),
                )
            ).rowcount  # fmt: skip
            if not claimed:
                raise self._why_not(session, experiment_id, "resume")
            # Below, a refusal raises: the transaction, the claim with it, rolls back.
            saved = session.get(Checkpoint, experiment_id)
            if saved is None:
                raise ValueError(
                    f"experiment {experiment_id} has no checkpoint (it finished no round, or ran before checkpoints "
                    "existed, or on Flower): start it again instead"
                )
            checkpoint = saved.round
            check_intact(experiment_id, checkpoint, bytes(saved.state), saved.sha256)
            config = session.scalar(select(Experiment.config).where(Experiment.id == experiment_id))
            total = int((config or {}).get("federation", {}).get("rounds", 0))
            if checkpoint >= total:
                raise ValueError(f"experiment {experiment_id} already ran all {total} rounds")
            later = select(Round.id).where(Round.experiment_id == experiment_id, Round.round > checkpoint)
            session.execute(delete(ClientRound).where(ClientRound.round_id.in_(later)))
            session.execute(delete(Round).where(Round.experiment_id == experiment_id, Round.round > checkpoint))
            return checkpoint

    @staticmethod
    def _claimed_by(worker_pid: int | None) -> tuple[Any, ...]:
        """The conditions that a run is still worker `worker_pid`'s on this host (none for None)."""
        if worker_pid is None:
            return ()
        return (Experiment.worker_pid == worker_pid, Experiment.worker_host == socket.gethostname())

    @staticmethod
    def _why_not(session: Any, experiment_id: int, what: str) -> Exception:
        """Why a conditional write of `what` (resume, start, ...) changed no row: KeyError when the
        run is gone, ClaimLost (a ValueError) naming its status and the worker that has it."""
        columns = (Experiment.status, Experiment.worker_pid, Experiment.worker_host)
        row = session.execute(select(*columns).where(Experiment.id == experiment_id)).first()
        if row is None:
            return KeyError(f"no experiment with id {experiment_id}")
        status, pid, host = row
        worker = f"by PID {pid} on {host}" if pid is not None else "by a worker not started yet"
        if status == "running":
            return ClaimLost(f"experiment {experiment_id} is already running ({worker}): cannot {what} it")
        if status == "queued":
            resumed = session.scalar(select(Checkpoint.round).where(Checkpoint.experiment_id == experiment_id))
            doing = "being resumed" if resumed is not None else "queued to run"
            return ClaimLost(f"experiment {experiment_id} is already {doing} ({worker}): cannot {what} it")
        if what == "resume":
            return ClaimLost(
                f"experiment {experiment_id} is {status}: only {', '.join(RESUMABLE_STATUSES)} runs resume"
            )
        return ClaimLost(f"experiment {experiment_id} is {status} (last {worker}): cannot {what} it")

    def set_noise_multiplier(self, experiment_id: int, noise_multiplier: float) -> None:
        """Record the σ the run uses (the calibrated one when a target ε was set)."""
        self._update(experiment_id, noise_multiplier=noise_multiplier)

    def set_client_profiles(
        self, experiment_id: int, profiles: Iterable[dict[str, Any]] | Mapping[str, Sequence[Any]]
    ) -> None:
        """Store the federation as set up: one JSON-able dict per client (an iterable is read a chunk at a time),
        or columns, {field: one value per client} (`ClientProfiles.table`), stored as columns: 100,000 clients'
        profiles are 8 MB of JSON written from 7 lists, instead of 18 MB from 100,000 dicts. Read back as one
        dict per client either way (`profile_rows`)."""
        if isinstance(profiles, Mapping):
            self._update(experiment_id, client_profiles=json_columns(profiles))
        else:
            self._update(experiment_id, client_profiles=json_list(profiles))

    def set_personalization(self, experiment_id: int, personalization: dict[str, Any]) -> None:
        """Store the per-client personalized vs global accuracy (JSON-able dict)."""
        self._update(experiment_id, personalization=personalization)

    def set_runtime(self, experiment_id: int, runtime: str) -> None:
        """Record where the run executes ("in-process", "flower")."""
        self._update(experiment_id, runtime=runtime)

    def set_dataset_info(self, experiment_id: int, info: dict[str, Any]) -> None:
        """Store what data the run used (source, task, clients; JSON-able dict)."""
        self._update(experiment_id, dataset_info=info)

    def save_weights(self, experiment_id: int, tensor_bytes: bytes, num_values: int) -> None:
        """Store (or replace) a run's final exchanged weights: `num_values` little-endian float32
        values, `num_values * 4` bytes (`np.asarray(flat, "<f4").tobytes()`)."""
        if num_values < 1 or len(tensor_bytes) != num_values * WEIGHTS_DTYPE.itemsize:
            raise ValueError(
                f"weights: {len(tensor_bytes)} bytes are not {num_values} float32 values "
                f"({num_values * WEIGHTS_DTYPE.itemsize} bytes)"
            )
        if not self._fits(experiment_id):
            raise KeyError(f"no experiment with id {experiment_id}")
        with self.sessions.begin() as session:
            if session.get(Experiment, experiment_id) is None:
                raise KeyError(f"no experiment with id {experiment_id}")
            session.merge(ModelWeights(
                experiment_id=experiment_id, weights=bytes(tensor_bytes), num_values=num_values, created_at=utcnow()
            ))  # fmt: skip

    def load_weights(self, experiment_id: int) -> StoredWeights | None:
        """A run's stored final weights, or None if it has none."""
        if not self._fits(experiment_id):
            return None
        with self.sessions() as session:
            row = session.get(ModelWeights, experiment_id)
            if row is None:
                return None
            return StoredWeights(row.experiment_id, bytes(row.weights), row.num_values, row.created_at)

    def experiments_with_weights(self) -> set[int]:
        """The ids of the experiments that have stored weights (without reading the weights)."""
        with self.sessions() as session:
            return set(session.scalars(select(ModelWeights.experiment_id)).all())

    def rename(self, experiment_id: int, name: str) -> None:
        """Give a run a new name (stripped; "" for none). ValueError for one over MAX_NAME_CHARS or
        with a control character (nothing written); KeyError for no such run."""
        self._update(experiment_id, name=checked_name(name))

    def set_tags(self, experiment_id: int, tags: list[str]) -> None:
        """Replace a run's tags: each stripped, empty ones and repeats left out, order kept. ValueError
        (nothing written) past MAX_TAGS tags or MAX_TAG_CHARS characters, or with a control character."""
        self._update(experiment_id, tags=checked_tags(tags))

    def set_progress(self, experiment_id: int, progress: dict[str, Any]) -> None:
        """Where the running round stands ({"round", "clients_done", "clients_total", "batches_done",
        "batches_total", "seconds"}): one short UPDATE, replaced as the round goes on. Once round
        `progress["round"]` is recorded the row is stale (readers compare it with `rounds_done`).
        KeyError for no such run."""
        self._update(experiment_id, progress=dict(progress))

    def set_audit(self, experiment_id: int, audit: dict[str, Any]) -> None:
        """Store the membership-inference audit of the final model (JSON-able dict)."""
        self._update(experiment_id, audit=audit)

    def finish(
        self,
        experiment_id: int,
        status: str,
        *,
        error: str | None = None,
        final: dict[str, float] | None = None,
        stop_reason: str | None = None,
        worker_pid: int | None = None,
    ) -> bool:
        """Record how a run ended. `worker_pid`: only while the run is still that worker's (PID and
        host): a worker whose run another one has resumed, or that was deleted, changes nothing.
        Returns whether it was written; KeyError for no such run (without `worker_pid`)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        final = final or {}
        error, stop_reason = storable_text(error), storable_text(stop_reason)
        values = {
            "status": status, "error": error, "stop_reason": stop_reason, "finished_at": utcnow(),
            "final_accuracy": final.get("accuracy"), "final_loss": final.get("loss"),
            "final_epsilon": final.get("epsilon"),
        }  # fmt: skip
        if worker_pid is None:
            self._update(experiment_id, **values)
            return True
        if not self._fits(experiment_id):
            return False
        with self.sessions.begin() as session:
            result = session.execute(*_bound_update(values, Experiment.id == experiment_id, *self._claimed_by(worker_pid)))
            return bool(result.rowcount)

    def request_stop(self, experiment_id: int) -> None:
        """Ask the worker to stop after its current round (it polls this flag)."""
        self._update(experiment_id, stop_requested=True)

    def stop_requested(self, experiment_id: int) -> bool:
        if not self._fits(experiment_id):
            return False
        with self.sessions() as session:
            return bool(session.scalar(select(Experiment.stop_requested).where(Experiment.id == experiment_id)))

    def delete_experiment(self, experiment_id: int) -> str | None:
        """Delete a run with its rounds, checkpoint and weights (nothing for no such run). Returns
        the run's imported data file (`data.csv_path`) when no experiment left names it, decided in
        the same transaction, so the caller may remove the file (the page: its uploads); else None.
        Refuses (ValueError) a queued or running one that a worker has (its PID is recorded): the worker
        would go on writing into rows that are gone and crash. Stop it first; it is deletable once
        it ends. (Deleting after a stop request would have to wait for the worker's round to end,
        minutes, or leave a delete pending that nobody finishes if the worker dies: refusing is
        atomic and says what to do.)"""
        if not self._fits(experiment_id):
            return None
        with self.sessions.begin() as session:
            # First a write, only if no worker has the run: it takes the row (SQLite: the database),
            # so none can claim or start it between this check and the delete.
            settled = session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id)
                .where(or_(Experiment.status.not_in(ACTIVE_STATUSES), Experiment.worker_pid.is_(None)))
                .values(status=Experiment.status)
            ).rowcount
            if not settled:
                columns = (Experiment.status, Experiment.worker_pid, Experiment.worker_host)
                row = session.execute(select(*columns).where(Experiment.id == experiment_id)).first()
                if row is None:
                    return None
                raise ValueError(
                    f"experiment {experiment_id} is {row.status} (PID {row.worker_pid} on {row.worker_host}): "
                    "stop it first, then delete it once it has ended"
                )
            data_file = _csv_path(session.scalar(select(Experiment.config).where(Experiment.id == experiment_id)))
            round_ids = select(Round.id).where(Round.experiment_id == experiment_id)
            session.execute(delete(ClientRound).where(ClientRound.round_id.in_(round_ids)))
            session.execute(delete(Round).where(Round.experiment_id == experiment_id))
            session.execute(delete(ModelWeights).where(ModelWeights.experiment_id == experiment_id))
            session.execute(delete(Checkpoint).where(Checkpoint.experiment_id == experiment_id))
            session.execute(delete(Experiment).where(Experiment.id == experiment_id))
            left = session.scalars(select(Experiment.config))
            if not data_file or data_file in {_csv_path(config) for config in left}:
                return None
            return data_file

    def _update(self, experiment_id: int, **values: Any) -> None:
        if not self._fits(experiment_id):
            raise KeyError(f"no experiment with id {experiment_id}")
        with self.sessions.begin() as session:
            result = session.execute(*_bound_update(values, Experiment.id == experiment_id))
            if result.rowcount == 0:
                raise KeyError(f"no experiment with id {experiment_id}")

    # -- reading (the page, the CLI) ----------------------------------------------

    def list_experiments(self) -> list[ExperimentSummary]:
        """All experiments, newest first."""
        with self.sessions() as session:
            experiments = session.scalars(select(Experiment).order_by(Experiment.id.desc())).all()
            counts = self._round_counts(session)
            return [_summary(e, counts.get(e.id, 0)) for e in experiments]

    def get_experiment(self, experiment_id: int) -> ExperimentSummary | None:
        """Experiment `experiment_id`, or None if there is none (whatever the id: one too large
        for the column names none)."""
        if not self._fits(experiment_id):
            return None
        with self.sessions() as session:
            experiment = session.get(Experiment, experiment_id)
            if experiment is None:
                return None
            return _summary(experiment, self._round_counts(session, experiment_id).get(experiment_id, 0))

    def rounds_frame(self, experiment_ids: list[int]) -> pd.DataFrame:
        """One row per round: experiment_id, round, accuracy, loss, epsilon, ..."""
        import pandas as pd

        columns = ["experiment_id", *ROUND_FIELDS, "num_clients", "num_selected", "created_at"]
        experiment_ids = [i for i in experiment_ids if self._fits(i)]
        with self.sessions() as session:
            rows = session.execute(
                select(*(getattr(Round, c) for c in columns))
                .where(Round.experiment_id.in_(experiment_ids))
                .order_by(Round.experiment_id, Round.round)
            ).all()
        return pd.DataFrame(rows, columns=columns)

    def round_rows(self, experiment_id: int, *, after_round: int = 0) -> list[dict[str, Any]]:
        """The stored rounds after `after_round`, each as `RoundResult.to_dict()` gave it (with its
        `clients`), in order: what `cli.py run --json` prints, whichever process ran the round."""
        if not self._fits(experiment_id):
            return []
        with self.sessions() as session:
            rounds = session.scalars(
                select(Round).where(Round.experiment_id == experiment_id, Round.round > after_round).order_by(Round.round)
            ).all()
            return [
                {**{name: getattr(row, name) for name in ROUND_FIELDS},
                 "clients": [{"id": c.client_id, **{name: getattr(c, name) for name in CLIENT_FIELDS[1:]}}
                             for c in sorted(row.clients, key=lambda c: c.client_id)]}
                for row in rounds
            ]  # fmt: skip

    def client_rounds_frame(self, experiment_id: int) -> pd.DataFrame:
        """One row per client per round: round, client_id, num_examples, steps, loss, epsilon,
        sample_rate, status, malicious, bytes_up, bytes_down, simulated_seconds, validation_accuracy, error,
        global_accuracy."""
        import pandas as pd

        columns = ["round", "client_id", *CLIENT_FIELDS[1:]]
        if not self._fits(experiment_id):
            return pd.DataFrame([], columns=columns)
        with self.sessions() as session:
            rows = session.execute(
                select(Round.round, *(getattr(ClientRound, c) for c in columns[1:]))
                .join(Round, ClientRound.round_id == Round.id)
                .where(Round.experiment_id == experiment_id)
                .order_by(Round.round, ClientRound.client_id)
            ).all()
        return pd.DataFrame(rows, columns=columns)

    def mark_interrupted_if_dead(self, is_alive: Any) -> list[int]:
        """Mark `interrupted` the active runs whose worker is gone: on this host, a `queued` or
        `running` run whose worker PID `is_alive(pid)` denies, and only that (a live PID is never
        marked, however old its heartbeat: a stopped or very busy process is alive, and a second
        copy resumed beside it would run the rounds twice); on another host (or with no PID
        recorded), a `running` run whose heartbeat is older than STALE_HEARTBEAT_SECONDS (the
        worker beats every HEARTBEAT_SECONDS, mid-round too, so this catches a dead machine).

        The updates are conditional: a worker that finishes its run (or beats) between the
        look-up and the check has already written, and what it wrote stands."""
        host = socket.gethostname()
        active = ACTIVE_STATUSES
        stale = utcnow() - timedelta(seconds=STALE_HEARTBEAT_SECONDS)
        marked = []
        with self.sessions.begin() as session:
            candidates = session.execute(
                select(Experiment.id, Experiment.worker_pid).where(
                    Experiment.status.in_(active), Experiment.worker_host == host, Experiment.worker_pid.is_not(None)
                )
            ).all()
            for experiment_id, pid in candidates:
                if is_alive(pid):
                    continue
                result = session.execute(  # only if its worker has not finished it meanwhile
                    update(Experiment)
                    .where(Experiment.id == experiment_id, Experiment.worker_pid == pid, Experiment.status.in_(active))
                    .values(status="interrupted", finished_at=utcnow(), error=DEAD_WORKER_ERROR)
                )
                if result.rowcount:
                    marked.append(experiment_id)
            elsewhere = or_(
                Experiment.worker_host.is_(None), Experiment.worker_host != host, Experiment.worker_pid.is_(None)
            )
            silent = session.scalars(
                select(Experiment.id).where(Experiment.status == "running", Experiment.heartbeat_at < stale, elsewhere)
            ).all()
            for experiment_id in silent:
                result = session.execute(
                    update(Experiment)
                    .where(Experiment.id == experiment_id, Experiment.status == "running")
                    .where(Experiment.heartbeat_at < stale, elsewhere)
                    .values(status="interrupted", finished_at=utcnow(), error=STALE_HEARTBEAT_ERROR)
                )
                if result.rowcount:
                    marked.append(experiment_id)
        return marked

    @staticmethod
    def _round_counts(session: Any, experiment_id: int | None = None) -> dict[int, int]:
        query = select(Round.experiment_id, func.count(Round.id)).group_by(Round.experiment_id)
        if experiment_id is not None:
            query = query.where(Round.experiment_id == experiment_id)
        return dict(session.execute(query).all())


def _columns(table: type[Base], values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """{name: value} for `table`'s columns `names` from a result dict: plain Python values of the
    column's type (numpy scalars are not for every driver), the column's default where missing."""
    out = {}
    for name in names:
        column = table.__table__.c[name]
        value = values.get(name)
        if value is None:
            out[name] = column.default.arg if column.default is not None and not column.nullable else None
            continue
        kind = column.type.python_type if not isinstance(column.type, JSON) else None
        out[name] = kind(value) if kind in (int, float, str, bool) else value
    return out


def profile_rows(stored: Any) -> list[dict[str, Any]] | None:
    """Stored client profiles as one dict per client: columns (`json_columns`) turned into rows, a list of
    dicts (as runs before columns stored them) as it is."""
    if isinstance(stored, dict) and isinstance(columns := stored.get("columns"), dict):
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return stored


def _csv_path(config: dict[str, Any] | None) -> str:
    """The data file or folder a stored config imports: its CSV, or its image folder ("" for MNIST, the
    synthetic NGSS data or no config)."""
    data = (config or {}).get("data") or {}
    if data.get("dataset") == "folder":
        return str(data.get("folder_path") or "")
    return str(data.get("csv_path") or "") if data.get("dataset") == "csv" else ""


def _summary(experiment: Experiment, rounds_done: int) -> ExperimentSummary:
    """The session-free view of a row: every `ExperimentSummary` field is the column of that name
    (the config a deep copy, so callers never touch the ORM's JSON), plus the rounds stored."""
    values = {f.name: getattr(experiment, f.name) for f in fields(ExperimentSummary) if f.name != "rounds_done"}
    values["config"] = json.loads(json.dumps(experiment.config))
    values["tags"] = list(experiment.tags or [])
    values["client_profiles"] = profile_rows(experiment.client_profiles)
    return ExperimentSummary(**values, rounds_done=rounds_done)


MAX_NAME_CHARS = 200  # the name column's length
MAX_TAGS = 20
MAX_TAG_CHARS = 40
_CONTROL_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # controls (NUL, ESC, newline), lone surrogates, line separators


def checked_name(name: str) -> str:
    """A run's name, stripped, if it can be stored and shown on one line; else ValueError, one line."""
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"name: {len(name)} characters, at most {MAX_NAME_CHARS}")
    if _has_control(name):
        raise ValueError("name: contains a control character (a newline, tab, NUL, ...)")
    return name


def checked_tags(tags: list[str]) -> list[str]:
    """Tags stripped, without empty ones or repeats (first kept), if there are at most MAX_TAGS of at
    most MAX_TAG_CHARS characters each, none with a control character; else ValueError, one line."""
    if isinstance(tags, str):
        raise ValueError("tags: a list of strings, not one string")  # noqa: TRY004 (refused like any bad input)
    kept: list[str] = []
    for tag in (str(tag).strip() for tag in tags):
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(f"tags: a tag of {len(tag)} characters, at most {MAX_TAG_CHARS}")
        if _has_control(tag):
            raise ValueError("tags: a tag contains a control character (a newline, tab, NUL, ...)")
        if tag and tag not in kept:
            kept.append(tag)
    if len(kept) > MAX_TAGS:
        raise ValueError(f"tags: {len(kept)} tags, at most {MAX_TAGS}")
    return kept


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in text)
