"""model_weights: a text-model run's final exchanged weights (LoRA + head), for scoring.

One row per experiment (its primary key), deleted with it: `weights` holds `num_values`
little-endian float32 values (`model.flatten` of the exchanged parameters, ~17k for
TinyLLama-v0 with LoRA r=8 and a 3-label head). Older databases gain the empty table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "model_weights",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("num_values", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id"),
    )


def downgrade() -> None:
    op.drop_table("model_weights")
