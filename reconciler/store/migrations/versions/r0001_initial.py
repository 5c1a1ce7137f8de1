"""Initial tables: customers, change_requests, audit_log, outbox_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from reconciler.store.schema import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _bigid() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=True),
        sa.Column("desired_change_id", sa.Text, nullable=True),
        sa.Column("next_check_at", UTCDateTime, nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("customer", name="pk_customers"),
    )
    op.create_index("ix_customers_next_check_at", "customers", ["next_check_at"])

    op.create_table(
        "change_requests",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=True),
        sa.Column("plan_key", sa.Text, nullable=False),
        sa.Column("plan_version", sa.Integer, nullable=True),
        sa.Column("requested_at", UTCDateTime, nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("direction", sa.Text, nullable=True),
        sa.Column("timing", sa.Text, nullable=True),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("effective_at", UTCDateTime, nullable=True),
        sa.Column("converges_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("details", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_change_requests"),
        sa.ForeignKeyConstraint(
            ["customer"],
            ["customers.customer"],
            name="fk_change_requests_customer_customers",
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("source", "source_id", name="uq_change_requests_source_source_id"),
        sa.CheckConstraint(
            "status IN ('pending','applied','scheduled','converged','superseded','failed')",
            name="ck_change_requests_status",
        ),
        sa.CheckConstraint(
            "source IN ('webhook','cli','admin','sweep')", name="ck_change_requests_source"
        ),
    )
    op.create_index(
        "ix_change_requests_customer_requested_at", "change_requests", ["customer", "requested_at"]
    )
    op.create_index("ix_change_requests_received_at_id", "change_requests", ["received_at", "id"])
    op.create_index(
        "ix_change_requests_status_received_at_id",
        "change_requests",
        ["status", "received_at", "id"],
    )
    op.create_index(
        "ix_change_requests_customer_received_at_id",
        "change_requests",
        ["customer", "received_at", "id"],
    )

    op.create_table(
        "audit_log",
        sa.Column("id", _bigid(), nullable=False, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("customer", sa.Text, nullable=True),
        sa.Column("change_id", sa.Text, nullable=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("request_body", _json(), nullable=True),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("data", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sa.CheckConstraint("kind IN ('call','decision','event')", name="ck_audit_log_kind"),
    )
    op.create_index("ix_audit_log_customer_id", "audit_log", ["customer", "id"])
    op.create_index("ix_audit_log_change_id_id", "audit_log", ["change_id", "id"])

    op.create_table(
        "outbox_events",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("customer", sa.Text, nullable=True),
        sa.Column("change_id", sa.Text, nullable=True),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_events"),
        sa.CheckConstraint(
            "status IN ('pending','delivered','dead','disabled')", name="ck_outbox_events_status"
        ),
    )
    op.create_index(
        "ix_outbox_events_status_next_attempt_at", "outbox_events", ["status", "next_attempt_at"]
    )
    op.create_index("ix_outbox_events_created_at_id", "outbox_events", ["created_at", "id"])
    op.create_index(
        "ix_outbox_events_status_created_at_id", "outbox_events", ["status", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_table("outbox_events")
    op.drop_table("audit_log")
    op.drop_table("change_requests")
    op.drop_table("customers")
