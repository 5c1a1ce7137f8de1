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


@overload
def iso_offset(dt: datetime) -> str: ...
@overload
def iso_offset(dt: datetime | None) -> str | None: ...
def iso_offset(dt: datetime | None) -> str | None:
    """``dt`` as ISO 8601 with its numeric offset (``2026-03-10T08:30:45+00:00``), as status
    documents, event payloads and refusals have always written it; ``None`` stays ``None``."""
    return dt.isoformat() if dt is not None else None


def parse_iso(text: str | None) -> datetime | None:
    """The inverse of ``iso_z`` and ``iso_offset`` (``Z`` or an offset); ``None`` stays ``None``."""
    if text is None:
        return None
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)
