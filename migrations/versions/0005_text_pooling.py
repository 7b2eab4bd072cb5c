"""experiments.config: a minilm-lora run stored before `model.pooling` existed read [CLS] through
BERT's pooler, and its weights only score correctly that way; minilm-lora now defaults to mean
pooling. Those rows gain `model.pooling = "cls"`, so reloading one (the scoring page, resuming)
builds the model it trained. Rows of other models need nothing: their default did not change.

Downgrading removes `model.pooling` from every row (older code refuses unknown keys); a run
stored with mean pooling then reloads as [CLS] and scores wrongly: back it up first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

experiments = sa.table("experiments", sa.column("id", sa.Integer()), sa.column("config", sa.JSON()))


def _rewrite(change) -> None:
    """Apply `change(model_section) → new section or None (unchanged)` to every stored config."""
    connection = op.get_bind()
    for row_id, config in connection.execute(sa.select(experiments.c.id, experiments.c.config)).all():
        model: Any = config.get("model") if isinstance(config, dict) else None
        if not isinstance(model, dict):
            continue
        new_model = change(model)
        if new_model is not None:
            new_config = {**config, "model": new_model}
            connection.execute(experiments.update().where(experiments.c.id == row_id).values(config=new_config))


def upgrade() -> None:
    _rewrite(lambda m: {**m, "pooling": "cls"} if m.get("name") == "minilm-lora" and "pooling" not in m else None)


def downgrade() -> None:
    _rewrite(lambda m: {k: v for k, v in m.items() if k != "pooling"} if "pooling" in m else None)
