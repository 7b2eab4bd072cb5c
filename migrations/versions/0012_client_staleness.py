"""Asynchronous FL (FedBuff): per client row the staleness of its applied update, the server steps the global
model moved on while it trained (client_rounds.staleness; NULL under synchronous rounds, as for every older row).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.add_column(sa.Column("staleness", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.drop_column("staleness")
