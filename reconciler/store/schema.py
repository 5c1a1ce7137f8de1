"""Table definitions (SQLAlchemy Core). The Alembic revisions create exactly these tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both databases.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``,
    which sorts chronologically). Naive datetimes are refused on the way in; values always come
    back aware, in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite rowid alias

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=True),
    # Points at the customer's desired request (the latest by requested_at). Maintained in the
    # same transaction as the change_requests rows (no FK: the two tables reference each other).
    sa.Column("desired_change_id", sa.Text, nullable=True),
    sa.Column("next_check_at", UTCDateTime, nullable=True),
    # Bumped by every write from outside a claim; a claim's reschedule compares it (see STORE.md).
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index(None, "next_check_at"),
    sa.Index(None, "customer_id"),
)

change_requests = sa.Table(
    "change_requests",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column(
        "customer",
        sa.Text,
        sa.ForeignKey("customers.customer", ondelete="RESTRICT"),
        nullable=False,
    ),
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
    # What OpenMeter showed when the change converged (reconciler.domain.drift; revision 0004).
    sa.Column("observed_mark", sa.Text, nullable=True),
    sa.UniqueConstraint("source", "source_id"),
    sa.CheckConstraint(
        "status IN ('pending','applied','scheduled','converged','superseded','failed')",
        name="status",
    ),
    sa.CheckConstraint("source IN ('webhook','cli','admin','sweep')", name="source"),
    # desired_for / supersession: the customer's requests by requested_at
    sa.Index(None, "customer", "requested_at"),
    # list_changes keysets: (received_at, id) overall, per status, per customer
    sa.Index(None, "received_at", "id"),
    sa.Index(None, "status", "received_at", "id"),
    sa.Index(None, "customer", "received_at", "id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigID, primary_key=True, autoincrement=True),
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
    sa.CheckConstraint("kind IN ('call','decision','event')", name="kind"),
    sa.Index(None, "customer", "id"),
    sa.Index(None, "change_id", "id"),
)

outbox_events = sa.Table(
    "outbox_events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
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
    sa.CheckConstraint("status IN ('pending','delivered','dead','disabled')", name="status"),
    # due_events: pending by next_attempt_at
    sa.Index(None, "status", "next_attempt_at"),
    # list_events keysets
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "status", "created_at", "id"),
)
