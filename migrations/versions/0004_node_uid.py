"""node identity: ``nodes.uid``, the uuid4 a daemon keeps in its state directory, so that
a node keeps its rows when its hostname changes (issue #18)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 05:00:00.000000

One nullable column and a unique index, every existing row kept: the rows written before
have no uid until their daemon starts again and adopts the row of its name
(governor.store.nodes.ensure_node).  Plain ``ADD COLUMN`` and ``CREATE UNIQUE INDEX`` (both
dialects allow many NULLs in a unique index); no batch copy of the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("uid", sa.String(length=36), nullable=True))
    op.create_index("ix_nodes_uid", "nodes", ["uid"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_nodes_uid", table_name="nodes")
    # ALTER TABLE ... DROP COLUMN: SQLite 3.35 and later, in place
    op.drop_column("nodes", "uid")
