"""rounds.neighbouring_relation: what the round's ε protects against, stated with the number
("add/remove one client" for central DP with Poisson client sampling, "replace one client" for
exactly k of n clients a round, "add/remove one example" for local DP-SGD; "" without privacy).
Older rows get "": they were all accounted as add/remove (central DP then sampled by Poisson only).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("neighbouring_relation", sa.String(32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("neighbouring_relation")
