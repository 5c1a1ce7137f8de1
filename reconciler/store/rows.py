"""Rows in and out, shared by the repositories: records built from rows, timestamps checked on
the way in, reads that map their rows, and keyset pages with opaque cursors."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store.database import Database
from reconciler.store.errors import InvalidCursorError

R = TypeVar("R")

_Layout = tuple[tuple[str, int, Callable[[Any], Any] | None], ...]  # field, position, converter


def enum_lookup(enum: type[Enum]) -> Callable[[Any], Any]:
    """``enum(value)`` through a dict (calling an Enum class costs ~1 µs per row)."""
    members = {m.value: m for m in enum}

    def convert(value: Any) -> Any:
        member = members.get(value)
        return member if member is not None else enum(value)

    return convert


def optional_enum(enum: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: enum(v) if v else None


class Mapper(Generic[R]):
    """Builds records of ``cls`` from rows whose columns carry the dataclass's field names;
    ``convert`` maps a field's stored value to its type (enums, defaults), None staying None.

    Which row positions feed which fields is worked out once per column list, not per row
    (looking each field up by name in each row was most of the cost of mapping a row)."""

    def __init__(
        self,
        cls: type[R],
        convert: Mapping[str, Callable[[Any], Any]] | None = None,
        *,
        prefix: str = "",
    ) -> None:
        self.cls = cls
        self.prefix = prefix  # the columns are named ``<prefix><field>``
        self.convert = {
            name: enum_lookup(c) if isinstance(c, type) and issubclass(c, Enum) else c
            for name, c in (convert or {}).items()
        }
        self.names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        self._layouts: dict[tuple[str, ...], _Layout] = {}

    def _layout(self, keys: tuple[str, ...]) -> _Layout:
        layout = self._layouts.get(keys)
        if layout is None:
            index: dict[str, int] = {}
            for i, k in enumerate(keys):  # the first column of a name wins
                index.setdefault(k, i)
            p = self.prefix
            layout = tuple(
                (name, index[p + name], self.convert.get(name))
                for name in self.names
                if p + name in index
            )
            self._layouts[keys] = layout
        return layout

    def __call__(self, row: Row[Any]) -> R:
        return self.of(tuple(row._fields), row)

    def of(self, keys: tuple[str, ...], values: Sequence[Any]) -> R:
        """A record from ``values``, the row's columns named ``keys``."""
        out: dict[str, Any] = {}
        for name, i, conv in self._layout(keys):
            v = values[i]
            out[name] = conv(v) if conv is not None and v is not None else v
        return self.cls(**out)


def aware(value: datetime, name: str) -> datetime:
    """``value`` in UTC; a naive datetime is refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


# -- reads ------------------------------------------------------------------------------------


async def read_all(
    db: Database,
    q: sa.Select[Any],
    record: Callable[[Row[Any]], R],
    params: Mapping[str, Any] | None = None,
    *,
    autocommit: bool = False,
) -> list[R]:
    """``q``'s rows as records, in one read transaction (``params``: its bound values;
    ``autocommit``: on PostgreSQL without BEGIN and COMMIT, for a query that needs no
    snapshot beyond its own)."""

    async def op(conn: AsyncConnection) -> list[R]:
        return [record(r) for r in (await conn.execute(q, params)).all()]

    return await db.tx(op, write=False, autocommit=autocommit)


async def read_one(db: Database, q: sa.Select[Any], record: Callable[[Row[Any]], R]) -> R | None:
    """``q``'s first row as a record (None: no row), in one read transaction."""

    async def op(conn: AsyncConnection) -> R | None:
        row = (await conn.execute(q)).first()
        return record(row) if row is not None else None

    return await db.tx(op, write=False)


async def read_scalars(db: Database, q: sa.Select[Any]) -> list[Any]:
    """``q``'s first column, in one read transaction."""

    async def op(conn: AsyncConnection) -> list[Any]:
        return list((await conn.execute(q)).scalars())

    return await db.tx(op, write=False)


async def count_by_status(
    db: Database, status: sa.ColumnElement[str], statuses: Sequence[Enum]
) -> dict[str, int]:
    """Rows per value of the ``status`` column, every one of ``statuses`` present (metrics)."""

    async def op(conn: AsyncConnection) -> dict[str, int]:
        rows = await conn.execute(sa.select(status, sa.func.count()).group_by(status))
        return {str(s): int(n) for s, n in rows.all()}

    counts = {s.value: 0 for s in statuses}
    counts.update(await db.tx(op, write=False))
    return counts


# -- keyset pages -----------------------------------------------------------------------------


def _encode_cursor(kind: str, at: datetime, ident: str) -> str:
    raw = json.dumps([kind, at.astimezone(UTC).isoformat(), ident], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        got_kind, at, ident = json.loads(base64.urlsafe_b64decode(padded))
        if got_kind != kind or not isinstance(ident, str):
            raise ValueError(kind)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(at)
        return when, ident
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise InvalidCursorError(f"invalid cursor for {kind}") from e


async def keyset_page(
    db: Database,
    name: str,
    q: sa.Select[Any],
    at_col: sa.ColumnElement[Any],
    id_col: sa.ColumnElement[Any],
    cursor: str | None,
    limit: int,
    record: Callable[[Row[Any]], R],
    key_of: Callable[[R], tuple[datetime, str]],
) -> tuple[list[R], str | None]:
    """Newest first by (``at_col``, ``id_col``); ``cursor`` continues after the last row of
    the previous page. The cursor for the next page is None on the last page."""
    if limit < 1:
        raise ValueError("limit must be positive")
    if cursor is not None:
        at, ident = _decode_cursor(name, cursor)
        q = q.where(sa.or_(at_col < at, sa.and_(at_col == at, id_col < ident)))
    q = q.order_by(at_col.desc(), id_col.desc()).limit(limit + 1)
    rows = await read_all(db, q, record)
    if len(rows) > limit:
        last = rows[limit - 1]
        return rows[:limit], _encode_cursor(name, *key_of(last))
    return rows, None
