"""Typed errors raised by the store. Callers never see SQLAlchemy or driver exceptions."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error."""


class StoreLockedError(StoreError):
    """Another process already owns this SQLite database (single-instance guard)."""


class StoreConfigError(StoreError, ValueError):
    """The database URL is unusable (an unsupported scheme, not a URL)."""


class StoreReadOnlyError(StoreError):
    """A write on a store opened read-only (``Store.open(..., read_only=True)``)."""


class StoreUnavailable(StoreError):
    """The database could not be reached (disconnect, restart, ``database is locked``).

    Raised after a bounded retry. ``ambiguous`` is true when the failure happened while a write
    transaction was committing: the write may or may not have been applied.
    """

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class StoreConflictError(StoreError):
    """A write violated a constraint (e.g. an event id that already exists)."""


class NotFoundError(StoreError, KeyError):
    """The requested row does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else ""


class ChangeNotFoundError(NotFoundError):
    pass


class EventNotFoundError(NotFoundError):
    pass


class StaleChangeError(StoreError):
    """``update_change(expected_status=...)`` found the row in another status."""

    def __init__(self, change_id: str, expected: str, actual: str) -> None:
        super().__init__(
            f"change {change_id} is {actual!r}, expected {expected!r} (changed concurrently)"
        )
        self.change_id = change_id
        self.expected = expected
        self.actual = actual


class InvalidTransitionError(StoreError):
    """An outbox event cannot move to the requested status from its current one."""


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor that this store did not produce (or for another listing)."""
