"""experiments.id: never reused after a delete. Without AUTOINCREMENT SQLite gives a new row
max(id) + 1, so deleting the newest run hands its id to the next one, and a link, a note or a
log that named the old run now names another. SQLite rebuilds the table with AUTOINCREMENT
(batch mode: copy, drop, rename), keeping every row and id; the rows that refer to it keep
their foreign keys (`migrations.migration_lock` has them off meanwhile). Ids deleted before
this revision are forgotten: the next is one past the largest that is left. PostgreSQL's
sequence never goes back, and other backends are left as they are: nothing to do there.

Downgrading rebuilds SQLite's table without AUTOINCREMENT again, keeping its rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def _rebuild_experiments(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "experiments", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass  # nothing changes but the table's own option: recreate="always" rebuilds it with it


def upgrade() -> None:
    _rebuild_experiments(autoincrement=True)


def downgrade() -> None:
    _rebuild_experiments(autoincrement=False)
