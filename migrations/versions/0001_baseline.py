"""Baseline: the schema as it stood when Alembic was introduced.

On an empty database it creates the three tables. A database made before Alembic (by
`create_all` plus additive upgrades) has the tables already, perhaps without the newer
columns: it gains the columns it lacks, existing rows getting the model's default, and
is then stamped at this revision like any other.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


# `default` is the model's (database.py); the baseline uses it only to fill the rows of a
# pre-Alembic database when it adds a NOT NULL column to them.
def experiments() -> list[Any]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, default=""),
        sa.Column("status", sa.String(20), nullable=False, default="queued"),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("runtime", sa.String(40), nullable=False, default="in-process"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("code_version", sa.String(64), nullable=False, default=""),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("worker_host", sa.String(255), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False, default=False),
        sa.Column("label_counts", sa.JSON(), nullable=True),
        sa.Column("final_accuracy", sa.Float(), nullable=True),
        sa.Column("final_loss", sa.Float(), nullable=True),
        sa.Column("final_epsilon", sa.Float(), nullable=True),
        sa.Column("noise_multiplier", sa.Float(), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("audit", sa.JSON(), nullable=True),
        sa.Column("client_profiles", sa.JSON(), nullable=True),
        sa.Column("personalization", sa.JSON(), nullable=True),
        sa.Column("dataset_info", sa.JSON(), nullable=True),
    ]


def rounds() -> list[Any]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment_id", sa.Integer(), sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False, default=0.0),
        sa.Column("delta", sa.Float(), nullable=False, default=0.0),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("eval_seconds", sa.Float(), nullable=False),
        sa.Column("bytes_up", sa.Integer(), nullable=False),
        sa.Column("bytes_down", sa.Integer(), nullable=False),
        sa.Column("num_clients", sa.Integer(), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False, default=0.0),
        sa.Column("max_grad_norm", sa.Float(), nullable=False, default=0.0),
        sa.Column("sample_rate", sa.Float(), nullable=False, default=0.0),
        sa.Column("privacy_steps", sa.Integer(), nullable=False, default=0),
        sa.Column("accountant", sa.String(16), nullable=False, default=""),
        sa.Column("skipped", sa.Text(), nullable=False, default=""),
        sa.Column("num_selected", sa.Integer(), nullable=False, default=0),
        sa.Column("simulated_seconds", sa.Float(), nullable=False, default=0.0),
        sa.Column("secure_aggregation", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("experiment_id", "round"),
    ]


def client_rounds() -> list[Any]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("round_id", sa.Integer(), sa.ForeignKey("rounds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False, default=0.0),
        sa.Column("sample_rate", sa.Float(), nullable=False, default=0.0),
        sa.Column("status", sa.String(16), nullable=False, default="ok"),
        sa.Column("malicious", sa.Boolean(), nullable=False, default=False),
        sa.Column("bytes_up", sa.Integer(), nullable=False, default=0),
        sa.Column("bytes_down", sa.Integer(), nullable=False, default=0),
        sa.Column("simulated_seconds", sa.Float(), nullable=False, default=0.0),
        sa.Column("validation_accuracy", sa.Float(), nullable=True),
    ]


# table -> (its columns and constraints, its indexed column), parents before children
TABLES: dict[str, tuple[Callable[[], list[Any]], str]] = {
    "experiments": (experiments, "status"),
    "rounds": (rounds, "experiment_id"),
    "client_rounds": (client_rounds, "round_id"),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, (definition, indexed) in TABLES.items():
        if not inspector.has_table(table):
            op.create_table(table, *definition())
            op.create_index(op.f(f"ix_{table}_{indexed}"), table, [indexed])
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        for column in definition():
            if isinstance(column, sa.Column) and column.name not in present:
                op.add_column(table, with_backfill(column))


def with_backfill(column: sa.Column[Any]) -> sa.Column[Any]:
    """`column` to add to a table that has rows: a NOT NULL one gets the model's default as
    its database default, so the rows there get it too."""
    if column.nullable or column.default is None:
        return column
    value = column.default.arg
    server_default = (sa.true() if value else sa.false()) if isinstance(value, bool) else str(value)
    return sa.Column(column.name, column.type, nullable=False, server_default=server_default)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
