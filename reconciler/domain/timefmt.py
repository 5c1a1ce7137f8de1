"""Instants as text: the one way the reconciler writes a datetime into a document it returns
(previews, quotes, status and change views) or sends (outbound events)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso_z(dt: datetime) -> str: ...
@overload
def iso_z(dt: datetime | None) -> str | None: ...
def iso_z(dt: datetime | None) -> str | None:
    """``dt`` in UTC as ISO 8601 / RFC 3339 with ``Z`` for the offset
    (``2026-03-10T08:30:45.123456Z``); ``None`` stays ``None``."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
