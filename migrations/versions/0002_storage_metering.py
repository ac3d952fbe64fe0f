"""storage metering: the writable layers of containers launched from images (issue #19)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 09:00:00.000000

Four columns, every existing row kept:

* ``samples.storage_bytes`` (nullable, as ``memory_current``): NULL in the rows stored
  before, which measured no container storage (missing is not zero);
* ``usage_intervals.storage_byte_seconds`` and ``rollups_hourly.storage_byte_seconds``
  (NOT NULL, as ``memory_byte_seconds``): 0 in the rows written before, which is what they
  metered of it and what bills have charged for it; the server default also keeps the
  rollups' ``x = x + excluded.x`` upsert exact on an hour that began before the upgrade
  (a NULL there would swallow every later addition);
* ``price_plans.storage_gib_hour`` (nullable): NULL in the versions recorded before,
  which never priced storage (governor.billing.history reads such a version's storage price
  from the policy).

Plain ``ADD COLUMN`` on both dialects, no batch copy: SQLite adds a column with a constant
default in place (the raw tables are WITHOUT ROWID and can hold millions of rows; a batch
recreate would copy them all, and its reflected copy would lose WITHOUT ROWID), and
PostgreSQL (11 and later) does not rewrite the table for a constant default.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUANTITY_TABLES = ("usage_intervals", "rollups_hourly")


def upgrade() -> None:
    op.add_column("samples", sa.Column("storage_bytes", sa.BigInteger(), nullable=True))
    for table in _QUANTITY_TABLES:
        op.add_column(table, sa.Column("storage_byte_seconds", sa.BigInteger(),
                                       server_default=sa.text("0"), nullable=False))
    op.add_column("price_plans", sa.Column(
        "storage_gib_hour", sa.Numeric(precision=20, scale=10), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN: SQLite 3.35 and later, in place (see the upgrade)
    op.drop_column("price_plans", "storage_gib_hour")
    for table in reversed(_QUANTITY_TABLES):
        op.drop_column(table, "storage_byte_seconds")
    op.drop_column("samples", "storage_bytes")
