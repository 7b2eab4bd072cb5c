"""client_rounds.error: why a failed client was excluded from its round (an exception in
its training, or NaN/inf weights); "" for every other client. Older rows get "".

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.add_column(sa.Column("error", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.drop_column("error")
