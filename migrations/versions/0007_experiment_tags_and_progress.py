"""experiments.tags and experiments.progress: a researcher's free tags on a run (a JSON list of
strings; NULL, read as none, for older rows), and where a running round stands (a JSON object the worker
replaces during a round: round, clients_done, clients_total, batches_done, batches_total,
seconds; NULL when there is none). The name column already exists (0001).

Downgrading drops both columns; a run's tags are lost with them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table: keep 0006's AUTOINCREMENT in the rebuilt one.
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("progress")
        batch.drop_column("tags")
