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

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent
MIGRATION_LOCK_KEY = 0x46504C_4D494752  # PostgreSQL advisory lock id: "FPL", "MIGR"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for `migrations/`, handing it `connection` to migrate."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Apply the revisions the database lacks, all in one transaction under
    `migration_lock`; a quick read first, so a database already at head is left alone."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
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
