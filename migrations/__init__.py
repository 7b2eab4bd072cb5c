"""Alembic migrations of the experiment database: `upgrade_to_head`, which a store calls
when it opens a database (database.make_engine), and the lock it migrates under.

`env.py` is Alembic's entry point; `versions/` holds one file per schema revision, the
first (`0001_baseline.py`) creating the schema as it stood when Alembic was introduced.
How to add a column: database.py's docstring.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent
MIGRATION_LOCK_KEY = 0x46504C_4D494752  # PostgreSQL advisory lock id: "FPL", "MIGR"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for `migrations/`, handing it `connection` to migrate."""
    from alembic.config import Config  # Alembic (~0.2 s to import) loads only to migrate

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def newest_revision() -> str:
    """The head revision, read from the file names alone: revisions are numbered (`--rev-id
    NNNN`, database.py's docstring) in one chain, so the highest number is the head
    (tests/test_database.py checks this against Alembic's own reading of `versions/`)."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def stored_revision(connection: Connection) -> str | None:
    """The revision the database is at (Alembic's `alembic_version` table); None for a new one."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_to_head(engine: Engine) -> None:
    """Apply the revisions the database lacks, all in one transaction under
    `migration_lock`; a quick read first, so a database already at head is left alone
    without importing Alembic (the page opens a store as it starts)."""
    with engine.connect() as connection:
        current = stored_revision(connection)
    if current == newest_revision():
        return
    from alembic import command  # Alembic (~0.2 s to import) loads only to migrate
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if current == head:
        return
    if current is not None and current not in {revision.revision for revision in script.walk_revisions()}:
        where = engine.url.render_as_string(hide_password=True)
        raise RuntimeError(
            f"the database {where} is at schema revision {current!r}, which this code does not know"
            f" (its newest is {head!r}): a newer version migrated it; update this checkout"
        )
    with migration_lock(engine) as connection:
        command.upgrade(alembic_config(connection), "head")


@contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that one process at a time can hold; what is done on
    it commits on leaving the block, or rolls back on an error.

    SQLite: `BEGIN IMMEDIATE` takes the write lock (others wait up to the busy timeout);
    the driver's own BEGIN is switched off for it, since it never starts a transaction
    before DDL. Foreign keys are off meanwhile: rebuilding a table (batch mode) drops the
    old one, which would otherwise cascade to the rows that refer to it. PostgreSQL: a
    transaction-scoped advisory lock. Others: a plain transaction.
    """
    with engine.connect() as connection:
        if engine.dialect.name != "sqlite":
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                yield connection
            return
        connection.execution_options(isolation_level="AUTOCOMMIT")  # the driver stays out of it
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: before BEGIN
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
