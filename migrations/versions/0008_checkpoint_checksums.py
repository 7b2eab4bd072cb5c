"""checkpoints.sha256: the SHA-256 of each checkpoint's state, written with it and checked before
a resume, so a checkpoint whose bytes changed on disk (a bad sector, a hand edit, a partial copy)
is refused with one line instead of resuming silently into different results.

Older checkpoints get NULL: they carry no checksum and still load as before.

Downgrading drops the column; the checkpoints stay, unchecked.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("sha256")
