"""Byzantine clients: per client row its update's suspicion score (client_rounds.suspicion, NULL where the
server did not score it, as for every older row) and whether it was flagged (client_rounds.flagged, false
for older rows: nobody was flagged then).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.add_column(sa.Column("suspicion", sa.Float(), nullable=True))
        batch.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.drop_column("flagged")
        batch.drop_column("suspicion")
