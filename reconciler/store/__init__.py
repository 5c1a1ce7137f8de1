"""Persistence adapter: SQLAlchemy Core (async) over SQLite or PostgreSQL, Alembic migrations.

Only this package issues SQL. See docs/STORE.md.
"""

from reconciler.store.errors import (
    ChangeNotFoundError,
    EventNotFoundError,
    InvalidCursorError,
    InvalidTransitionError,
    NotFoundError,
    StaleChangeError,
    StoreConfigError,
    StoreConflictError,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreUnavailable,
)
from reconciler.store.store import Claim, Leadership, Store, advisory_key
from reconciler.store.types import (
    OPEN_STATUSES,
    AuditEntry,
    AuditKind,
    ChangeRecord,
    ChangeSource,
    ChangeStatus,
    CustomerRecord,
    DesiredSummary,
    EventStatus,
    NewEvent,
    OutboxEvent,
    SubmitResult,
)
from reconciler.store.urls import normalize_url

__all__ = [
    "OPEN_STATUSES",
    "AuditEntry",
    "AuditKind",
    "ChangeNotFoundError",
    "ChangeRecord",
    "ChangeSource",
    "ChangeStatus",
    "Claim",
    "CustomerRecord",
    "DesiredSummary",
    "EventNotFoundError",
    "EventStatus",
    "InvalidCursorError",
    "InvalidTransitionError",
    "Leadership",
    "NewEvent",
    "NotFoundError",
    "OutboxEvent",
    "StaleChangeError",
    "Store",
    "StoreConfigError",
    "StoreConflictError",
    "StoreError",
    "StoreLockedError",
    "StoreReadOnlyError",
    "StoreUnavailable",
    "SubmitResult",
    "advisory_key",
    "normalize_url",
]
