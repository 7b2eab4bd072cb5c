"""Alembic's environment: how a migration reaches the database.

A store migrates by itself (`migrations.upgrade_to_head`) and hands its connection in
`config.attributes["connection"]`, already inside `migrations.migration_lock`. The
`alembic` command line (alembic.ini, run from the repository root) opens `DATABASE_URL`,
else sqlite:///experiments.db, and takes the same lock.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from database import Base, make_engine
from migrations import migration_lock


def _ours(name: str | None, type_: str, parent_names: dict) -> bool:
    """Optuna's study tables (`runs.studies`) share the database: they are not ours to compare or drop."""
    return type_ != "table" or name in Base.metadata.tables


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=_ours,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: the baseline revision inspects the database")
given = context.config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"), migrate=False)
    with migration_lock(engine) as connection:
        run_migrations(connection)
    engine.dispose()
