"""generic controller values: the values, usage and rollups of controllers added through
governor.controllers (issue #17: hugetlb first), and their prices

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 12:00:00.000000

Three new tables and one column, every existing row kept:

* ``sample_values`` (node_id, group_id, ts, key, value): a sample's ``GroupSample.values``,
  one row per key, keyed as ``sample_io`` (the sample's key plus its own), WITHOUT ROWID on
  SQLite; the samples stored before hold none (no generic controller was read);
* ``usage_values`` (node_id, group_id, end_ts, quantity, value): the generic quantities of
  one metered interval;
* ``rollup_values`` (node_id, group_id, hour, quantity, value): their hourly sums, keyed
  (group, hour, node, quantity) as ``rollups_hourly``, WITHOUT ROWID on SQLite;
* ``price_plans.quantity_prices`` (nullable JSON, {plan key: decimal text}): NULL in the
  versions recorded before, which priced no generic quantity
  (governor.billing.history reads such a version's price from the policy).

Plain ``CREATE TABLE`` and ``ADD COLUMN`` (no batch copy of an existing table).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sample_values",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "ts", "group_id", "key",
                                name=op.f("pk_sample_values")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_values",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("end_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"],
                                name=op.f("fk_usage_values_group_id_groups")),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"],
                                name=op.f("fk_usage_values_node_id_nodes")),
        sa.PrimaryKeyConstraint("node_id", "group_id", "end_ts", "quantity",
                                name=op.f("pk_usage_values")),
    )
    op.create_table(
        "rollup_values",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"],
                                name=op.f("fk_rollup_values_group_id_groups")),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"],
                                name=op.f("fk_rollup_values_node_id_nodes")),
        sa.PrimaryKeyConstraint("group_id", "hour", "node_id", "quantity",
                                name=op.f("pk_rollup_values")),
        sqlite_with_rowid=False,
    )
    op.add_column("price_plans", sa.Column("quantity_prices", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN: SQLite 3.35 and later, in place
    op.drop_column("price_plans", "quantity_prices")
    op.drop_table("rollup_values")
    op.drop_table("usage_values")
    op.drop_table("sample_values")
