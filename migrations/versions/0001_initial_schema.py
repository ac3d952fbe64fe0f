"""initial schema: every table of governor 0.1

Revision ID: 0001
Revises:
Create Date: 2026-11-28 07:19:33.643850
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the whole schema of governor 0.1 (see governor/store/models.py)
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "price_plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("memory_basis", sa.String(length=16), nullable=False),
        sa.Column("effective", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cpu_core_hour", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("memory_gib_hour", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("io_read_gib", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("io_write_gib", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("oom_kill", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_plans")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_price_plans_name_version")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "applied_policies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy_hash", sa.String(length=128), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("writes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_applied_policies_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_applied_policies")),
    )
    with op.batch_alter_table("applied_policies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_applied_policies_node_applied", ["node_id", "applied_at"], unique=False
        )

    op.create_table(
        "gaps",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("from_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rows_lost", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_gaps_node_id_nodes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gaps")),
        sa.UniqueConstraint(
            "node_id",
            "from_ts",
            "to_ts",
            "reason",
            name=op.f("uq_gaps_node_id_from_ts_to_ts_reason"),
        ),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("cgroup_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metered_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_groups_node_id_nodes")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_groups_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint(
            "node_id", "path", "cgroup_id", name=op.f("uq_groups_node_id_path_cgroup_id")
        ),
    )
    op.create_table(
        "oom_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=True),
        sa.Column("comm", sa.String(length=64), nullable=True),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("missed_while_down", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_oom_events_group_id_groups")
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_oom_events_node_id_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_oom_events_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oom_events")),
    )
    with op.batch_alter_table("oom_events", schema=None) as batch_op:
        batch_op.create_index("ix_oom_events_node_ts", ["node_id", "ts"], unique=False)

    op.create_table(
        "rollups_hourly",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("covered_us", sa.BigInteger(), nullable=False),
        sa.Column("intervals", sa.Integer(), nullable=False),
        sa.Column("cpu_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_user_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_system_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_throttled_usec", sa.BigInteger(), nullable=False),
        sa.Column("memory_byte_seconds", sa.BigInteger(), nullable=False),
        sa.Column("io_rbytes", sa.BigInteger(), nullable=False),
        sa.Column("io_wbytes", sa.BigInteger(), nullable=False),
        sa.Column("io_rios", sa.BigInteger(), nullable=False),
        sa.Column("io_wios", sa.BigInteger(), nullable=False),
        sa.Column("io_dbytes", sa.BigInteger(), nullable=False),
        sa.Column("oom_events", sa.BigInteger(), nullable=False),
        sa.Column("oom_kills", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_rollups_hourly_group_id_groups")
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_rollups_hourly_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("group_id", "hour", "node_id", name=op.f("pk_rollups_hourly")),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "samples",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mono", sa.Float(), nullable=False),
        sa.Column("cpu_usage_usec", sa.BigInteger(), nullable=True),
        sa.Column("cpu_user_usec", sa.BigInteger(), nullable=True),
        sa.Column("cpu_system_usec", sa.BigInteger(), nullable=True),
        sa.Column("cpu_nr_periods", sa.BigInteger(), nullable=True),
        sa.Column("cpu_nr_throttled", sa.BigInteger(), nullable=True),
        sa.Column("cpu_throttled_usec", sa.BigInteger(), nullable=True),
        sa.Column("memory_current", sa.BigInteger(), nullable=True),
        sa.Column("memory_peak", sa.BigInteger(), nullable=True),
        sa.Column("memory_swap_current", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_low", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_high", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_max", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_oom", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_oom_kill", sa.BigInteger(), nullable=True),
        sa.Column("memory_events_oom_group_kill", sa.BigInteger(), nullable=True),
        sa.Column("memory_stat_anon", sa.BigInteger(), nullable=True),
        sa.Column("memory_stat_file", sa.BigInteger(), nullable=True),
        sa.Column("memory_stat_kernel", sa.BigInteger(), nullable=True),
        sa.Column("memory_stat_sock", sa.BigInteger(), nullable=True),
        sa.Column("memory_stat_shmem", sa.BigInteger(), nullable=True),
        sa.Column("pids_current", sa.BigInteger(), nullable=True),
        sa.Column("psi_cpu_some_usec", sa.BigInteger(), nullable=True),
        sa.Column("psi_cpu_full_usec", sa.BigInteger(), nullable=True),
        sa.Column("psi_memory_some_usec", sa.BigInteger(), nullable=True),
        sa.Column("psi_memory_full_usec", sa.BigInteger(), nullable=True),
        sa.Column("psi_io_some_usec", sa.BigInteger(), nullable=True),
        sa.Column("psi_io_full_usec", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("node_id", "ts", "group_id", name=op.f("pk_samples")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_intervals",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("end_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
        sa.Column("from_creation", sa.Boolean(), nullable=False),
        sa.Column("cpu_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_user_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_system_usec", sa.BigInteger(), nullable=False),
        sa.Column("cpu_throttled_usec", sa.BigInteger(), nullable=False),
        sa.Column("memory_byte_seconds", sa.BigInteger(), nullable=False),
        sa.Column("io_rbytes", sa.BigInteger(), nullable=False),
        sa.Column("io_wbytes", sa.BigInteger(), nullable=False),
        sa.Column("io_rios", sa.BigInteger(), nullable=False),
        sa.Column("io_wios", sa.BigInteger(), nullable=False),
        sa.Column("io_dbytes", sa.BigInteger(), nullable=False),
        sa.Column("oom_events", sa.BigInteger(), nullable=False),
        sa.Column("oom_kills", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_usage_intervals_group_id_groups")
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_usage_intervals_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("node_id", "group_id", "end_ts", name=op.f("pk_usage_intervals")),
    )
    op.create_table(
        "sample_io",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("rbytes", sa.BigInteger(), nullable=False),
        sa.Column("wbytes", sa.BigInteger(), nullable=False),
        sa.Column("rios", sa.BigInteger(), nullable=False),
        sa.Column("wios", sa.BigInteger(), nullable=False),
        sa.Column("dbytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "ts", "group_id", "device", name=op.f("pk_sample_io")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    # the whole schema of governor 0.1 (see governor/store/models.py)
    op.drop_table("sample_io")
    op.drop_table("usage_intervals")
    op.drop_table("samples")
    op.drop_table("rollups_hourly")
    with op.batch_alter_table("oom_events", schema=None) as batch_op:
        batch_op.drop_index("ix_oom_events_node_ts")

    op.drop_table("oom_events")
    op.drop_table("groups")
    op.drop_table("gaps")
    with op.batch_alter_table("applied_policies", schema=None) as batch_op:
        batch_op.drop_index("ix_applied_policies_node_applied")

    op.drop_table("applied_policies")
    op.drop_table("tenants")
    op.drop_table("price_plans")
    op.drop_table("nodes")
