"""Fairness columns: per round, the aggregated global model's accuracy on every client's held-out
split summarised (rounds.client_accuracy_mean, _worst10, _variance, _gini), and per client row that
accuracy itself (client_rounds.global_accuracy). All NULL for older rows and runs without a client
holdout: they were never measured.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

ROUND_COLUMNS = ("client_accuracy_mean", "client_accuracy_worst10", "client_accuracy_variance", "client_accuracy_gini")


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        for name in ROUND_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    with op.batch_alter_table("client_rounds") as batch:
        batch.add_column(sa.Column("global_accuracy", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("client_rounds") as batch:
        batch.drop_column("global_accuracy")
    with op.batch_alter_table("rounds") as batch:
        for name in reversed(ROUND_COLUMNS):
            batch.drop_column(name)
