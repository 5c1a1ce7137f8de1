"""PostgreSQL: the hot statements on psycopg's own connections, below SQLAlchemy.

An engine step's commit through SQLAlchemy's async engine costs about 0.6–0.75 ms more CPU than
the same statements sent on the psycopg connection underneath: per statement, the greenlet
bridge, an execution context, the result's set-up and the type processing of every value
(docs/BENCHMARKS.md §6–8, twelfth session). The statements of every upgrade and webhook — a
step's commit, an audit append, the submit, the claim, the alias lookup — are sent here
instead: on a connection of the store's own pool (``Database.pg_tx``, ``pgpool``), or, inside
a claim's transaction, on the psycopg connection under the claim's SQLAlchemy one (``as_op``).

- **Statements** are built from the table definitions (``schema.py``) once per shape
  (``Columns``), or compiled once from SQLAlchemy Core (``Statement``), so a column added
  there is in them too. psycopg prepares a statement server-side on its fifth use.
- **Values** are bound as SQLAlchemy's psycopg dialect binds them: JSON columns as ``Jsonb``
  (``None`` as SQL NULL, ``none_as_null``), timestamps aware (a naive one is refused, as
  ``UTCDateTime`` refuses it). Rows come back with their timestamps in UTC, as through
  ``UTCDateTime``.
- **Faults** are raised as SQLAlchemy's ``DBAPIError`` classes (``as_dbapi_error``), so the
  retry, the ambiguity of a fault while committing and the translation to store errors are
  ``Database.tx``'s own. A lost connection under SQLAlchemy is first shown to it, which then
  discards it and every pooled connection older than the failure, as it does for its own
  statements; ``pgpool`` does the same for its connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC
from typing import Any, TypeAlias, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store.pgpool import PgConn as PgConn
from reconciler.store.schema import UTCDateTime

_Convert: TypeAlias = Callable[[Any], Any]
T = TypeVar("T")
#: The dialect the engine uses on PostgreSQL: ``Statement`` compiles with it, so the SQL sent is
#: the SQL SQLAlchemy would send.
_DIALECT: sa.Dialect = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


async def driver(conn: AsyncConnection) -> PgConn:
    """The psycopg connection under ``conn`` (checked out of the pool by ``conn``)."""
    raw = await conn.get_raw_connection()
    pg = raw.driver_connection
    assert isinstance(pg, psycopg.AsyncConnection)
    return pg


async def as_dbapi_error(conn: AsyncConnection, pg: PgConn, err: psycopg.Error) -> exc.DBAPIError:
    """``err`` as SQLAlchemy would have raised it. When the connection is lost, a statement
    through SQLAlchemy on it lets SQLAlchemy see the disconnect: it invalidates this connection
    and the pool's older ones, and raises with ``connection_invalidated``."""
    if pg.broken or pg.closed:
        try:
            await conn.exec_driver_sql("SELECT 1")
        except exc.DBAPIError as seen:
            if seen.connection_invalidated:
                return seen
    wrapped = exc.DBAPIError.instance(None, None, err, psycopg.Error)
    assert isinstance(wrapped, exc.DBAPIError)
    return wrapped


def as_op(fn: Callable[[PgConn], Awaitable[T]]) -> Callable[[AsyncConnection], Awaitable[T]]:
    """``fn`` as an operation on a SQLAlchemy connection: run on its psycopg connection, in
    whatever transaction it is in (a claim's savepoint), its faults raised as SQLAlchemy's."""

    async def op(conn: AsyncConnection) -> T:
        pg = await driver(conn)
        try:
            return await fn(pg)
        except psycopg.Error as e:
            raise await as_dbapi_error(conn, pg, e) from e

    return op


def _json(value: Any) -> Any:
    return Jsonb(value) if value is not None else None


def _timestamp(value: Any) -> Any:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
    return value


def _utc(value: Any) -> Any:
    return value.astimezone(UTC) if value is not None else None


def _bind(type_: sa.types.TypeEngine[Any]) -> _Convert | None:
    if isinstance(type_, sa.JSON):
        return _json
    if isinstance(type_, UTCDateTime):
        return _timestamp
    return None


def _reads(types: Sequence[sa.types.TypeEngine[Any]]) -> tuple[tuple[int, _Convert], ...]:
    return tuple((i, _utc) for i, t in enumerate(types) if isinstance(t, UTCDateTime))


def _read(reads: tuple[tuple[int, _Convert], ...], row: Sequence[Any]) -> list[Any]:
    out = list(row)
    for i, conv in reads:
        out[i] = conv(out[i])
    return out


class Columns:
    """Columns of one table in a fixed order: their list for SQL, their values bound from a row
    mapping, and rows read back as mappings (timestamps in UTC)."""

    def __init__(self, table: sa.Table, names: Sequence[str] | None = None) -> None:
        cols = [table.c[n] for n in names] if names is not None else list(table.c)
        # The SQL here is built from the schema's names alone, never from values; they are
        # plain lower-case identifiers, which need no quoting.
        for name in (table.name, *(c.name for c in cols)):
            if not (name.isidentifier() and name == name.lower() and name.isascii()):
                raise ValueError(f"{name!r} is not a plain identifier")
        self.table = table.name
        self.names = tuple(c.name for c in cols)
        self.sql = ", ".join(self.names)
        self._binds = tuple(_bind(c.type) for c in cols)
        self._reads = _reads([c.type for c in cols])

    def values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """``row``'s values in this order, bound for psycopg."""
        return tuple(
            conv(row[n]) if conv is not None else row[n]
            for n, conv in zip(self.names, self._binds, strict=True)
        )

    def read(self, row: Sequence[Any]) -> list[Any]:
        """A row selected or returned in this order, its timestamps in UTC."""
        return _read(self._reads, row)

    def insert(self) -> str:
        """``INSERT`` of one row of these columns (``executemany`` for several)."""
        marks = ", ".join(["%s"] * len(self.names))
        return f"INSERT INTO {self.table} ({self.sql}) VALUES ({marks})"  # noqa: S608 (names)


async def insert_many(
    pg: PgConn, cols: Columns, sql: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` (mappings of ``cols``' names) in the connection's transaction: one
    statement, several rows pipelined by psycopg's ``executemany``."""
    if not rows:
        return
    async with pg.cursor() as cur:
        if len(rows) == 1:
            await cur.execute(sql, cols.values(rows[0]))
        else:
            await cur.executemany(sql, [cols.values(r) for r in rows])


class Statement:
    """A SQLAlchemy Core statement compiled once for psycopg: the statements of the hot paths
    that are not a plain insert or update of one table (a claim's locking read, its
    reschedule), sent as SQLAlchemy would send them, without its per-execution cost.

    ``names`` are the columns it returns (selected, or ``RETURNING``), in order. Values are
    bound by each parameter's type, as in ``Columns``; a statement whose SQL depends on its
    values (an expanding ``IN``, a post-compiled ``LIMIT``) is refused.
    """

    def __init__(self, stmt: sa.Select[Any] | sa.UpdateBase) -> None:
        compiled = stmt.compile(dialect=_DIALECT)
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("a statement rendered per execution cannot be compiled once")
        self.sql = compiled.string
        self._defaults = dict(compiled.params)  # anonymous parameters keep their values
        self._binds = tuple(
            (name, conv)
            for name, bind in compiled.binds.items()
            if (conv := _bind(bind.type)) is not None
        )
        columns = list(stmt.exported_columns)
        self.names = tuple(c.name for c in columns)
        self._reads = _reads([c.type for c in columns])

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The statement's parameters from ``values`` (by name), bound for psycopg."""
        out = {**self._defaults, **values}
        for name, conv in self._binds:
            out[name] = conv(out[name])
        return out

    async def rows(self, pg: PgConn, values: Mapping[str, Any]) -> list[list[Any]]:
        """Run it in the connection's transaction: the rows it returns (timestamps in UTC),
        in ``names``' order; none for a statement that returns none."""
        async with pg.cursor() as cur:
            await cur.execute(self.sql, self.params(values))
            found = await cur.fetchall() if cur.description is not None else []
        return [_read(self._reads, r) for r in found]
