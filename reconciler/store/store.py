"""The repository: every SQL statement of the product lives here.

One ``Store`` per process. SQLite (``sqlite3`` on a database thread, WAL) for a single instance,
PostgreSQL (psycopg 3 async) for replicas. See docs/STORE.md for the design (claims, leadership,
outbox, migrations).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, exc
from sqlalchemy.dialects.postgresql import ARRAY as pg_ARRAY
from sqlalchemy.engine import URL, Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from reconciler.domain.model import Direction, Timing
from reconciler.store.errors import (
    ChangeNotFoundError,
    EventNotFoundError,
    InvalidCursorError,
    InvalidTransitionError,
    StaleChangeError,
    StoreConflictError,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreUnavailable,
)
from reconciler.store.ids import new_event_id, new_ulid
from reconciler.store.schema import audit_log, change_requests, customers, outbox_events
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
from reconciler.store.urls import is_sqlite, normalize_url, sqlite_path

T = TypeVar("T")
R = TypeVar("R")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = "reconciler.store.migrate"

#: Fields of a change request that ``update_change`` may set.
UPDATABLE_CHANGE_FIELDS = frozenset(
    {
        "customer_id",
        "plan_version",
        "status",
        "direction",
        "timing",
        "rule",
        "effective_at",
        "converges_at",
        "last_error",
        "attempts",
        "next_attempt_at",
        "details",
        "observed_mark",
    }
)

# Claims held by the current task (and the tasks it spawns), so that writes to a claimed
# customer's row from inside the claim go through the claim's connection instead of waiting on
# the claim's own row lock (a self-deadlock).
_HELD_CLAIMS: ContextVar[Mapping[tuple[int, str], Claim] | None] = ContextVar(
    "reconciler_store_claims", default=None
)


def _push_claim(store: Store, claim: Claim) -> Token[Mapping[tuple[int, str], Claim] | None]:
    held = dict(_HELD_CLAIMS.get() or {})
    held[(id(store), claim.customer)] = claim
    return _HELD_CLAIMS.set(held)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's ``hash`` is randomised)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# row mapping


_Layout = tuple[tuple[str, int, Callable[[Any], Any] | None], ...]  # field, position, converter


def _enum_lookup(enum: type[Enum]) -> Callable[[Any], Any]:
    """``enum(value)`` through a dict (calling an Enum class costs ~1 µs per row)."""
    members = {m.value: m for m in enum}

    def convert(value: Any) -> Any:
        member = members.get(value)
        return member if member is not None else enum(value)

    return convert


class _Mapper(Generic[R]):
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
            name: _enum_lookup(c) if isinstance(c, type) and issubclass(c, Enum) else c
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
        out: dict[str, Any] = {}
        for name, i, conv in self._layout(tuple(row._fields)):
            v = row[i]
            out[name] = conv(v) if conv is not None and v is not None else v
        return self.cls(**out)


def _optional_enum(enum: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: enum(v) if v else None


_CHANGE_CONVERT: dict[str, Callable[[Any], Any]] = {
    "source": ChangeSource,
    "status": ChangeStatus,
    "direction": _optional_enum(Direction),
    "timing": _optional_enum(Timing),
}
_CHANGE = _Mapper(ChangeRecord, _CHANGE_CONVERT)
#: A change joined beside another table's columns, as ``desired_<field>`` (the claim's read).
_DESIRED = _Mapper(ChangeRecord, _CHANGE_CONVERT, prefix="desired_")
_CUSTOMER = _Mapper(CustomerRecord)
_EVENT = _Mapper(OutboxEvent, {"status": EventStatus})
_AUDIT = _Mapper(AuditEntry, {"kind": AuditKind})


def _change(row: Row[Any]) -> ChangeRecord:
    rec = _CHANGE(row)
    return rec if rec.details is not None else dataclasses.replace(rec, details={})


def _desired_change(row: Row[Any]) -> ChangeRecord | None:
    """The ``desired_*`` columns of ``row`` as a change (None: the customer has none)."""
    if row.desired_id is None:
        return None
    rec = _DESIRED(row)
    return rec if rec.details is not None else dataclasses.replace(rec, details={})


def _customer(row: Row[Any]) -> CustomerRecord:
    return _CUSTOMER(row)


def _event(row: Row[Any]) -> OutboxEvent:
    return _EVENT(row)


def _audit(row: Row[Any]) -> AuditEntry:
    return _AUDIT(row)


def _audit_rows(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    return [
        {
            "at": _aware(e.at, "at"),
            "customer": e.customer,
            "change_id": e.change_id,
            "kind": AuditKind(e.kind).value,
            "operation": e.operation,
            "method": e.method,
            "path": e.path,
            "request_body": e.request_body,
            "status": e.status,
            "detail": e.detail,
            "data": dict(e.data) if e.data is not None else None,
        }
        for e in entries
    ]


class Keep:
    """``Store.commit(reschedule=KEEP)``: leave the customer's next check as it is."""

    __slots__ = ()


KEEP = Keep()


class _SyncConnection:
    """What the store's operations use of an ``AsyncConnection`` (``execute``, ``run_sync``),
    answered by a sync connection on SQLite's database thread: nothing ever suspends."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._conn, *args)


def _drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (a store operation on ``_SyncConnection``)."""
    coro = cast(Coroutine[Any, Any, T], awaitable)
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise RuntimeError("a store operation awaited something other than the database")


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _reschedule() -> sa.Update:
    """A claim's next check, in one statement: ``b_at``, unless the row changed since the claim
    read it (``version``: a request submitted meanwhile made it due) — then the earlier of the
    two, and the row's own time when ``b_at`` is None (nothing due by the pass)."""
    c = customers.c
    at = sa.bindparam("b_at", type_=c.next_check_at.type)
    return (
        customers.update()
        .where(c.customer == sa.bindparam("b_customer"))
        .values(
            next_check_at=sa.case(
                (sa.or_(c.version == sa.bindparam("b_version"), c.next_check_at.is_(None)), at),
                (at.is_(None), c.next_check_at),
                (at < c.next_check_at, at),
                else_=c.next_check_at,
            ),
            updated_at=sa.bindparam("b_now", type_=c.updated_at.type),
        )
        .returning(c.next_check_at)
    )


_Q_RESCHEDULE = _reschedule()


def _is_open(status: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """``status IN (open statuses)`` with the values as ordinary bound parameters: an ``in_``
    list is an "expanding" parameter, rendered into the SQL again on every execution."""
    return sa.or_(*(status == sa.bindparam(f"open_{s.value}", s.value) for s in OPEN_STATUSES))


# Statements of the hot paths (a webhook's submit, a reconcile's claim), built once: SQLAlchemy
# then only looks their compiled form up instead of building and hashing them per call.
_Q_CHANGE_BY_ID = sa.select(change_requests).where(change_requests.c.id == sa.bindparam("b_id"))


#: A sweep page's desired states: the reference, then ``DesiredSummary``'s columns in order.
def _desired_summaries(postgresql: bool) -> sa.Select[Any]:
    c = customers.c.customer
    refs = (
        # one array parameter: bound and prepared once, not 500 parameters rendered each time
        c == sa.any_(sa.bindparam("b_refs", type_=pg_ARRAY(sa.Text())))
        if postgresql
        else c.in_(sa.bindparam("b_refs", expanding=True))
    )
    return (
        sa.select(
            customers.c.customer.label("desired_ref"),
            change_requests.c.id,
            change_requests.c.customer,
            change_requests.c.plan_key,
            change_requests.c.plan_version,
            change_requests.c.status,
            change_requests.c.converges_at,
            change_requests.c.observed_mark,
        )
        .join(customers, customers.c.desired_change_id == change_requests.c.id)
        .where(refs)
    )


#: by "is PostgreSQL"
_Q_DESIRED_SUMMARIES = {pg: _desired_summaries(pg) for pg in (False, True)}


_TO_STATUS = _enum_lookup(ChangeStatus)


async def _read_summaries(
    conn: AsyncConnection, refs: list[str], out: dict[str, DesiredSummary], *, postgresql: bool
) -> None:
    """Add the desired-state summaries of ``refs`` to ``out`` (one query per 500)."""
    query = _Q_DESIRED_SUMMARIES[postgresql]
    for i in range(0, len(refs), 500):
        rows = await conn.execute(query, {"b_refs": refs[i : i + 500]})
        for ref, id_, customer, plan_key, plan_version, status, converges_at, mark in rows:
            out[ref] = DesiredSummary(
                id_, customer, plan_key, plan_version, _TO_STATUS(status), converges_at, mark
            )


_Q_CUSTOMER = sa.select(customers).where(customers.c.customer == sa.bindparam("b_customer"))
#: The customer's desired request, joined beside the request being looked up.
_desired = change_requests.alias("desired")
#: Always one row: the request stored under (source, source_id) — a twin of the one being
#: submitted — or NULLs; the submit's reads join what else they need beside it.
_TWIN = (
    sa.select(sa.literal(1).label("one"))
    .subquery("one")
    .outerjoin(
        change_requests,
        sa.and_(
            change_requests.c.source == sa.bindparam("b_source"),
            change_requests.c.source_id == sa.bindparam("b_source_id"),
        ),
    )
)
#: SQLite, in one read (the transaction began IMMEDIATE: nothing commits meanwhile): the request
#: already stored under (source, source_id) if any (its columns, else NULLs), whether the
#: customer's row exists, its resolved id and the time of its desired request.
_Q_SQLITE_SUBMIT_READ = sa.select(
    change_requests,
    customers.c.customer.label("known_customer"),
    customers.c.customer_id.label("known_customer_id"),
    _desired.c.requested_at.label("desired_requested_at"),
).select_from(
    _TWIN.outerjoin(customers, customers.c.customer == sa.bindparam("b_customer")).outerjoin(
        _desired, _desired.c.id == customers.c.desired_change_id
    )
)
_claimed_desired = change_requests.alias("claimed_desired")
#: PostgreSQL: a reconcile's claim, a row lock kept for the pass (None: missing, or held), with
#: the customer's desired request beside it (``desired_<column>``). Nothing waits (SKIP
#: LOCKED), so both come from one snapshot, in which a request and the pointer to it were
#: committed together.
_Q_CLAIM_CUSTOMER = (
    sa.select(customers, *(c.label(f"desired_{c.name}") for c in _claimed_desired.c))
    .select_from(
        customers.outerjoin(
            _claimed_desired, _claimed_desired.c.id == customers.c.desired_change_id
        )
    )
    .where(customers.c.customer == sa.bindparam("b_customer"))
    .with_for_update(of=customers, skip_locked=True)
)


def _pg_submit() -> sa.TextualSelect:
    """PostgreSQL: the whole submit in one statement, the function ``reconciler_submit_change``
    (Alembic revision 0003). Its rows: the request (the twin stored earlier under the same
    (source, source_id), or the new row), then the requests it superseded."""
    c = change_requests.c
    return (
        sa.text(
            "SELECT * FROM reconciler_submit_change(:b_id, :b_customer, :b_customer_id, "
            ":b_plan_key, CAST(:b_plan_version AS integer), :b_requested_at, :b_source, "
            ":b_source_id, :b_details, :b_now)"
        )
        .bindparams(
            sa.bindparam("b_requested_at", type_=c.requested_at.type),
            sa.bindparam("b_details", type_=c.details.type),
            sa.bindparam("b_now", type_=c.updated_at.type),
        )
        .columns(*c)
    )


_Q_PG_SUBMIT = _pg_submit()
#: Create the customer's row unless it exists. Written as text: the dialects' ``ON CONFLICT``
#: insert constructs have no cache key, so SQLAlchemy compiled them again on every call (a
#: webhook for a new customer). Both databases accept this spelling.
_Q_ENSURE_CUSTOMER = sa.text(
    "INSERT INTO customers (customer, version, updated_at) "
    "VALUES (:b_customer, 0, :b_updated_at) ON CONFLICT (customer) DO NOTHING"
).bindparams(
    sa.bindparam("b_customer", type_=customers.c.customer.type),
    sa.bindparam("b_updated_at", type_=customers.c.updated_at.type),
)
_Q_INSERT_CHANGE = change_requests.insert()
#: SQLite: supersede the customer's open requests other than ``b_id``; returns their ids.
_Q_SUPERSEDE_OPEN = (
    change_requests.update()
    .where(
        change_requests.c.customer == sa.bindparam("b_customer"),
        _is_open(change_requests.c.status),
        change_requests.c.id != sa.bindparam("b_id"),
    )
    .values(status=ChangeStatus.SUPERSEDED.value, updated_at=sa.bindparam("b_now"))
    .returning(change_requests.c.id)
)


def _make_desired() -> sa.Update:
    """SQLite: make ``b_id`` the customer's desired request, due now."""
    now = sa.bindparam("b_now", type_=customers.c.updated_at.type)
    return (
        customers.update()
        .where(customers.c.customer == sa.bindparam("b_customer"))
        .values(
            desired_change_id=sa.bindparam("b_id"),
            next_check_at=now,
            customer_id=sa.bindparam("b_customer_id"),
            version=customers.c.version + 1,
            updated_at=now,
        )
    )


_Q_MAKE_DESIRED = _make_desired()


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


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# fault classification


def _is_transient(err: BaseException, sqlite: bool) -> bool:
    if isinstance(err, exc.DBAPIError):
        if err.connection_invalidated:
            return True
        if sqlite:
            msg = str(err.orig).lower()
            return isinstance(err, exc.OperationalError) and ("locked" in msg or "busy" in msg)
        # psycopg.OperationalError: connection refused/lost, server shutting down, ...
        return isinstance(err, exc.OperationalError | exc.InterfaceError)
    return isinstance(err, ConnectionError | TimeoutError | OSError)


def _translate(err: exc.DBAPIError) -> StoreError:
    """A non-transient database error as a store error (callers never see SQLAlchemy's)."""
    if isinstance(err, exc.IntegrityError):
        return StoreConflictError(f"constraint violated: {err.orig}")
    return StoreError(f"database error: {err.orig}")


# ---------------------------------------------------------------------------------------------
# claims and leadership


class Claim:
    """This worker's exclusive right to reconcile one customer, for the ``async with`` block.

    The customer row as it was when claimed is available as attributes. Writes to the customer's
    row made while the claim is held should go through the claim (``reschedule``,
    ``set_customer_id``); ``Store.schedule_customer`` and ``Store.submit_change`` called from
    inside the block are routed through it automatically.
    """

    def __init__(
        self,
        store: Store,
        row: CustomerRecord,
        version: int,
        conn: AsyncConnection | None,
        desired: ChangeRecord | None = None,
    ) -> None:
        self._store = store
        self._conn = conn  # PostgreSQL: the connection holding the row lock
        self._lock = asyncio.Lock()
        self._version = version
        self.customer = row.customer
        self.customer_id = row.customer_id
        self.desired_change_id = row.desired_change_id
        self.next_check_at = row.next_check_at
        #: The customer's desired request as it was when claimed (``Store.desired_for``).
        self.desired = desired

    def is_due(self, now: datetime) -> bool:
        """Whether the customer was due at ``now`` when claimed. A name from ``claim_due`` may
        have been handled by another worker between that call and ``claim()``: check this."""
        return self.next_check_at is not None and self.next_check_at <= now

    async def reschedule(self, at: datetime | None) -> None:
        """Set when the worker should look at this customer next (None: nothing due).

        A request submitted while the claim was held (only possible on SQLite, where the claim
        is not a row lock) is not lost: the earlier of the two times wins then.
        """
        await self._run(self._reschedule_op(at))

    def _reschedule_op(self, at: datetime | None) -> Callable[[AsyncConnection], Awaitable[None]]:
        at_utc = _aware(at, "at") if at is not None else None
        now = self._store._clock()

        async def op(conn: AsyncConnection) -> None:
            row = (
                await conn.execute(
                    _Q_RESCHEDULE,
                    {
                        "b_customer": self.customer,
                        "b_version": self._version,
                        "b_at": at_utc,
                        "b_now": now,
                    },
                )
            ).first()
            if row is not None:
                self.next_check_at = row.next_check_at

        return op

    async def set_customer_id(self, customer_id: str) -> None:
        """Remember the resolved OpenMeter id of this customer."""
        await self._run(self._customer_id_op(customer_id))

    def _customer_id_op(self, customer_id: str) -> Callable[[AsyncConnection], Awaitable[None]]:
        now = self._store._clock()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                customers.update()
                .where(customers.c.customer == self.customer)
                .values(customer_id=customer_id, updated_at=now)
            )
            self.customer_id = customer_id

        return op

    async def _run(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._conn is None:
            return await self._store._tx(fn, write=True)
        async with self._lock:
            try:
                async with self._conn.begin_nested():
                    return await fn(self._conn)
            except exc.DBAPIError as e:
                if _is_transient(e, False):
                    raise StoreUnavailable(f"claim connection lost: {e.orig}") from e
                raise _translate(e) from e


class Leadership:
    """Handle of ``Store.leader(name)``. ``held`` is true while this process is the leader."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name
        self._key = advisory_key("leader:" + name)
        self._conn: AsyncConnection | None = None
        self._held = store._sqlite  # SQLite: single instance, always the leader

    @property
    def held(self) -> bool:
        return self._held

    async def check(self) -> bool:
        """Re-validate leadership (connection still alive) or retry acquiring it."""
        if self._store._closed:
            return False
        if self._store._sqlite:
            return True
        if self._held and self._conn is not None:
            try:
                await self._conn.execute(sa.text("SELECT 1"))
                await self._conn.commit()
                return True
            except (exc.DBAPIError, OSError):
                await self._drop()
        return await self._try_acquire()

    async def _try_acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = await self._store._pg.connect()
            got = (
                await self._conn.execute(sa.select(sa.func.pg_try_advisory_lock(self._key)))
            ).scalar_one()
            await self._conn.commit()  # session-level lock: survives the transaction
        except (exc.DBAPIError, OSError):
            await self._drop()
            return False
        self._held = bool(got)
        return self._held

    async def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing the DBAPI connection (not returning it to the pool) ends the session, and
            # with it any session-level advisory lock it holds.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _release(self) -> None:
        if self._store._sqlite:
            self._held = False
            return
        if self._conn is not None and self._held:
            with contextlib.suppress(Exception):
                await self._conn.execute(sa.select(sa.func.pg_advisory_unlock(self._key)))
                await self._conn.commit()
        await self._drop()


# ---------------------------------------------------------------------------------------------
# the store


SUPERSEDED = ChangeStatus.SUPERSEDED.value


class Store:
    """Async repository over SQLite or PostgreSQL. Create with ``await Store.open(url, ...)``."""

    def __init__(
        self,
        engine: AsyncEngine | Engine,
        url: URL,
        *,
        instance_id: str,
        clock: Callable[[], datetime],
        retries: int,
        lock_fd: int | None,
        read_only: bool = False,
    ) -> None:
        # PostgreSQL: an async engine (psycopg 3). SQLite: a sync engine used only from one
        # database thread, where each transaction runs whole (``_thread_tx``). (PostgreSQL
        # transactions on threads were tried: several threads doing SQLAlchemy's Python work
        # took the GIL from the event loop, and 200 concurrent upgrades got slower.)
        self._async = engine if isinstance(engine, AsyncEngine) else None
        self._autocommit: AsyncEngine | None = None  # PostgreSQL, made on first use
        self._sync = engine if isinstance(engine, Engine) else None
        self._db_thread = (
            ThreadPoolExecutor(1, thread_name_prefix="reconciler-sqlite")
            if self._sync is not None
            else None
        )
        self._thread_conn: Connection | None = None  # used on the database thread only
        self.url = url
        self.instance_id = instance_id
        self._clock = clock
        self._retries = retries
        self._lock_fd = lock_fd
        self.read_only = read_only
        self._sqlite = is_sqlite(url)
        self._sqlite_claims: set[str] = set()
        self._leaderships: set[Leadership] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str | URL,
        *,
        instance_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        pool_size: int = 10,
        max_overflow: int = 20,
        retries: int = 3,
        busy_timeout_ms: int = 5000,
        read_only: bool = False,
    ) -> Store:
        """Open (not migrate) the database. SQLite files are locked against a second process.

        ``read_only``: no writes (``StoreReadOnlyError``), and on SQLite no lock either, so the
        CLI's read-only commands run beside ``reconciler run`` on the same file (WAL lets
        readers in while the service writes; they read the last committed state). The file
        must exist.
        """
        u = normalize_url(url)
        instance = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        lock_fd: int | None = None
        if is_sqlite(u):
            path = sqlite_path(u)
            sync_url = u
            engine: AsyncEngine | Engine
            if read_only and path is not None:
                _require_sqlite_file(path)
                engine = create_engine(
                    sync_url,
                    pool_size=2,
                    max_overflow=0,
                    connect_args={"check_same_thread": False},
                )
                _configure_sqlite(
                    engine, wal=False, busy_timeout_ms=busy_timeout_ms, query_only=True
                )
                return cls(
                    engine,
                    u,
                    instance_id=instance,
                    clock=clock or _utcnow,
                    retries=retries,
                    lock_fd=None,
                    read_only=True,
                )
            if path is None:
                engine = create_engine(
                    sync_url.set(database=":memory:"),
                    poolclass=StaticPool,
                    connect_args={"check_same_thread": False},
                )
            else:
                lock_fd = _lock_sqlite_file(path, instance)
                # one database thread: a connection or two is all it ever holds
                engine = create_engine(
                    sync_url,
                    pool_size=2,
                    max_overflow=0,
                    connect_args={"check_same_thread": False},
                )
            _configure_sqlite(engine, wal=path is not None, busy_timeout_ms=busy_timeout_ms)
            return cls(
                engine,
                u,
                instance_id=instance,
                clock=clock or _utcnow,
                retries=retries,
                lock_fd=lock_fd,
            )
        # No pre-ping on either engine: it costs a round trip per transaction. A dead pooled
        # connection fails its first statement, which is retried (nothing was committed), and
        # SQLAlchemy then recycles every connection older than the failure.
        async_engine = create_async_engine(u, pool_size=pool_size, max_overflow=max_overflow)
        return cls(
            async_engine,
            u,
            instance_id=instance,
            clock=clock or _utcnow,
            retries=retries,
            lock_fd=lock_fd,
            read_only=read_only,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in list(self._leaderships):
            await handle._release()  # dispose() would leave checked-out connections open
        if self._async is not None:
            await self._async.dispose()
        if self._sync is not None and self._db_thread is not None:
            # queued after any transaction still running; then the thread ends
            await asyncio.get_running_loop().run_in_executor(self._db_thread, self._dispose_sync)
            self._db_thread.shutdown(wait=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def dialect(self) -> str:
        return "sqlite" if self._sqlite else "postgresql"

    async def ping(self) -> bool:
        """True when the database answers a trivial query (for readiness probes)."""
        try:
            if self._sqlite and self._sync is not None:
                await self._in_db_thread(_select_one, self._sync)
                return True
            async with self._pg.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except (exc.DBAPIError, OSError):
            return False

    @property
    def _pg(self) -> AsyncEngine:
        assert self._async is not None, "PostgreSQL only"
        return self._async

    @property
    def _pg_autocommit(self) -> AsyncEngine:
        """The same pool, its connections in autocommit while checked out."""
        if self._autocommit is None:
            self._autocommit = self._pg.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit

    async def _in_db_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """SQLite: run ``fn`` on the database thread."""
        if self._closed or self._db_thread is None:
            raise StoreError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    # -- migrations ---------------------------------------------------------------------------

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return cfg

    async def migrate(self) -> None:
        """``alembic upgrade head``. On PostgreSQL an advisory lock serialises replicas."""
        if self.read_only:
            raise StoreReadOnlyError("the store is open read-only: it cannot be migrated")
        cfg = self._alembic_config()

        def upgrade(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        if self._sqlite and self._sync is not None:
            sync_engine = self._sync

            def upgrade_sqlite() -> None:
                with sync_engine.connect() as sync_conn:
                    upgrade(sync_conn)
                    sync_conn.commit()

            try:
                await self._in_db_thread(upgrade_sqlite)
            except exc.DBAPIError as e:
                if _is_transient(e, True):
                    raise StoreUnavailable(
                        f"migration failed: database unavailable: {e.orig}"
                    ) from e
                raise _translate(e) from e
            return
        try:
            async with self._pg.connect() as conn:
                key = advisory_key(_MIGRATION_LOCK)
                await conn.execute(sa.select(sa.func.pg_advisory_lock(key)))
                await conn.commit()
                try:
                    await conn.run_sync(upgrade)
                    await conn.commit()
                finally:
                    await conn.rollback()  # no-op after success; clears a failed transaction
                    await conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    await conn.commit()
        except exc.DBAPIError as e:
            if _is_transient(e, self._sqlite):
                raise StoreUnavailable(f"migration failed: database unavailable: {e.orig}") from e
            raise _translate(e) from e

    async def is_migrated(self) -> bool:
        """True when the database is at the newest revision shipped with this code."""
        heads = set(ScriptDirectory.from_config(self._alembic_config()).get_heads())

        def current(sync_conn: Connection) -> set[str]:
            return set(MigrationContext.configure(sync_conn).get_current_heads())

        async def op(conn: AsyncConnection) -> set[str]:
            return await conn.run_sync(current)

        return await self._tx(op, write=False) == heads

    # -- transactions -------------------------------------------------------------------------

    async def _tx(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool,
        idempotent: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run ``fn`` in one transaction, retrying transient faults a bounded number of times.

        A fault while committing a write is only retried when ``idempotent``; otherwise it is
        reported as an ambiguous ``StoreUnavailable``. ``autocommit`` (PostgreSQL; ignored on
        SQLite): ``fn`` runs a single statement, atomic on its own, without the BEGIN and COMMIT
        round trips; any fault while it runs is one while committing.
        """
        if self._closed:
            raise StoreError("store is closed")
        if write and self.read_only:
            raise StoreReadOnlyError("the store is open read-only")
        delay = 0.05
        for attempt in range(self._retries + 1):
            committing = [False]
            try:
                if self._sync is not None:
                    return await self._in_db_thread(self._thread_tx, fn, write, committing)
                if autocommit:
                    async with self._pg_autocommit.connect() as conn:
                        committing[0] = True
                        return await fn(conn)
                async with self._pg.connect() as conn, conn.begin():
                    result = await fn(conn)
                    committing[0] = True
                return result
            except exc.DBAPIError as e:
                if not _is_transient(e, self._sqlite):
                    raise _translate(e) from e
                err: BaseException = e
            except (ConnectionError, TimeoutError, exc.TimeoutError) as e:
                # exc.TimeoutError: no pooled connection became free in time (overload)
                err = e
            if committing[0] and write and not idempotent:
                raise StoreUnavailable(
                    f"database fault while committing (outcome unknown): {err}", ambiguous=True
                ) from err
            if attempt == self._retries:
                raise StoreUnavailable(f"database unavailable: {err}") from err
            await asyncio.sleep(delay)
            delay = min(delay * 4, 1.0)
        raise AssertionError("unreachable")

    def _thread_tx(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        write: bool,
        committing: list[bool],
    ) -> T:
        """On the SQLite database thread: one whole transaction, without a hop back to the event
        loop per statement. The operation is the same coroutine an ``AsyncConnection`` would run;
        here its ``execute`` calls are answered synchronously (``_SyncConnection``), so it runs
        to the end in one step. SQLite writes begin IMMEDIATE (take the write lock up front)."""
        assert self._sync is not None
        conn = self._thread_conn
        if conn is None or conn.invalidated or conn.closed:
            # One connection for the thread's life (no pool checkout and reset per
            # transaction); a fresh one after a fault invalidated it.
            if conn is not None:
                conn.close()
            conn = self._thread_conn = self._sync.connect()
        if self._sqlite:
            conn.info["begin"] = "BEGIN IMMEDIATE" if write else "BEGIN"
        try:
            with conn.begin():
                result: T = _drive(fn(cast(AsyncConnection, _SyncConnection(conn))))
                committing[0] = True
        except BaseException:
            if conn.in_transaction():  # a failed commit or rollback: start over next time
                conn.invalidate()
            raise
        return result

    def _dispose_sync(self) -> None:
        """On the database thread: close its connection, then the engine."""
        if self._thread_conn is not None:
            with contextlib.suppress(Exception):
                self._thread_conn.close()
            self._thread_conn = None
        if self._sync is not None:
            self._sync.dispose()

    def _held_claim(self, customer: str) -> Claim | None:
        return (_HELD_CLAIMS.get() or {}).get((id(self), customer))

    async def _ensure_customer(self, conn: AsyncConnection, customer: str, now: datetime) -> None:
        await conn.execute(_Q_ENSURE_CUSTOMER, {"b_customer": customer, "b_updated_at": now})

    # -- change requests ----------------------------------------------------------------------

    async def submit_change(
        self,
        customer: str,
        plan_key: str,
        plan_version: int | None,
        requested_at: datetime,
        source: ChangeSource | str,
        source_id: str | None,
        now: datetime,
        events: Sequence[NewEvent] = (),
        *,
        customer_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> SubmitResult:
        """Record a change request and make it the desired state if it is the latest.

        One transaction: idempotent on (source, source_id); a request older (by
        ``requested_at``) than the customer's desired one is stored as superseded; otherwise the
        customer's other open requests are superseded, the customer's desired pointer moves to
        the new request and the customer is due now. ``events`` are enqueued in the same
        transaction (for a repeated request nothing is written).
        """
        src = ChangeSource(source)
        requested = _aware(requested_at, "requested_at")
        now = _aware(now, "now")

        change_id = new_ulid()
        if not self._sqlite:
            return await self._submit_pg(
                {
                    "b_id": change_id,
                    "b_customer": customer,
                    "b_customer_id": customer_id or None,
                    "b_plan_key": plan_key,
                    "b_plan_version": plan_version,
                    "b_requested_at": requested,
                    "b_source": src.value,
                    "b_source_id": source_id,
                    "b_details": dict(details or {}),
                    "b_now": now,
                },
                events,
            )

        async def op(conn: AsyncConnection) -> SubmitResult:
            # the transaction began IMMEDIATE: nothing commits meanwhile
            seen = (
                await conn.execute(
                    _Q_SQLITE_SUBMIT_READ,
                    {"b_source": src.value, "b_source_id": source_id, "b_customer": customer},
                )
            ).one()
            if seen.id is not None:  # stored already: by an earlier call, or by this one's
                # attempt whose commit was reported failed (the id is chosen once per call)
                return SubmitResult(_change(seen), created=seen.id == change_id)
            cust_id, desired_at = seen.known_customer_id, seen.desired_requested_at
            if seen.known_customer is None:
                await self._ensure_customer(conn, customer, now)
            stale = desired_at is not None and requested < desired_at
            record = ChangeRecord(
                id=change_id,
                customer=customer,
                customer_id=customer_id or cust_id,
                plan_key=plan_key,
                plan_version=plan_version,
                requested_at=requested,
                received_at=now,
                source=src,
                source_id=source_id,
                status=ChangeStatus.SUPERSEDED if stale else ChangeStatus.PENDING,
                direction=None,
                timing=None,
                rule=None,
                effective_at=None,
                converges_at=None,
                last_error=None,
                attempts=0,
                next_attempt_at=None,
                updated_at=now,
                details=dict(details or {}),
            )
            superseded: tuple[str, ...] = ()
            await conn.execute(
                _Q_INSERT_CHANGE,
                {
                    "id": change_id,
                    "customer": customer,
                    "customer_id": record.customer_id,
                    "plan_key": plan_key,
                    "plan_version": plan_version,
                    "requested_at": requested,
                    "received_at": now,
                    "source": src.value,
                    "source_id": source_id,
                    "status": record.status.value,
                    "attempts": 0,
                    "updated_at": now,
                    "details": dict(record.details),
                },
            )
            if not stale:
                ids = (
                    await conn.execute(
                        _Q_SUPERSEDE_OPEN,
                        {"b_customer": customer, "b_id": change_id, "b_now": now},
                    )
                ).scalars()
                superseded = tuple(sorted(ids))
                await conn.execute(
                    _Q_MAKE_DESIRED,
                    {
                        "b_customer": customer,
                        "b_id": change_id,
                        "b_customer_id": record.customer_id,
                        "b_now": now,
                    },
                )
            elif customer_id and not cust_id:
                await conn.execute(
                    customers.update()
                    .where(customers.c.customer == customer)
                    .values(customer_id=customer_id, updated_at=now)
                )
            await self._write_events(conn, events, customer, change_id, now)
            return SubmitResult(record, created=True, superseded_ids=superseded)

        return await self._run_submit(customer, op, idempotent=source_id is not None)

    async def _submit_pg(self, params: dict[str, Any], events: Sequence[NewEvent]) -> SubmitResult:
        """PostgreSQL: one call of ``reconciler_submit_change`` (``_pg_submit``), then the events.
        Without events and with a source id (a webhook), in autocommit: one round trip, and
        safe to retry, since a retry finds the first attempt's row by its source id."""

        async def op(conn: AsyncConnection) -> SubmitResult:
            rows = (await conn.execute(_Q_PG_SUBMIT, params)).all()
            request = _change(rows[0])
            if request.id != params["b_id"]:
                return SubmitResult(request, created=False)
            await self._write_events(conn, events, request.customer, request.id, params["b_now"])
            superseded = tuple(sorted(row.id for row in rows[1:]))
            return SubmitResult(request, created=True, superseded_ids=superseded)

        idempotent = params["b_source_id"] is not None
        return await self._run_submit(
            params["b_customer"], op, idempotent=idempotent, autocommit=idempotent and not events
        )

    async def _run_submit(
        self,
        customer: str,
        op: Callable[[AsyncConnection], Awaitable[SubmitResult]],
        *,
        idempotent: bool,
        autocommit: bool = False,
    ) -> SubmitResult:
        claim = self._held_claim(customer)
        if claim is not None:
            return await claim._run(op)
        for attempt in range(3):
            try:
                return await self._tx(op, write=True, idempotent=idempotent, autocommit=autocommit)
            except StoreConflictError:
                # Two replicas inserted the same (source, source_id) or the same new customer at
                # once: the retry sees the winner's row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _get_change(self, conn: AsyncConnection, change_id: str) -> ChangeRecord | None:
        row = (await conn.execute(_Q_CHANGE_BY_ID, {"b_id": change_id})).first()
        return _change(row) if row is not None else None

    async def get_change(self, change_id: str) -> ChangeRecord | None:
        async def op(conn: AsyncConnection) -> ChangeRecord | None:
            return await self._get_change(conn, change_id)

        return await self._tx(op, write=False)

    async def get_customer(self, customer: str) -> CustomerRecord | None:
        async def op(conn: AsyncConnection) -> CustomerRecord | None:
            row = (
                await conn.execute(sa.select(customers).where(customers.c.customer == customer))
            ).first()
            return _customer(row) if row is not None else None

        return await self._tx(op, write=False)

    async def aliases(self, customer_id: str) -> list[CustomerRecord]:
        """Every customer row resolved to this OpenMeter customer id (a portal may address one
        customer by id in one request and by key in another)."""

        async def op(conn: AsyncConnection) -> list[CustomerRecord]:
            rows = await conn.execute(
                sa.select(customers)
                .where(customers.c.customer_id == customer_id)
                .order_by(customers.c.customer)
            )
            return [_customer(r) for r in rows]

        return await self._tx(op, write=False)

    async def desired_for(self, customer: str) -> ChangeRecord | None:
        """The customer's desired request (the latest by requested_at), whatever its status."""

        async def op(conn: AsyncConnection) -> ChangeRecord | None:
            row = (
                await conn.execute(
                    sa.select(change_requests)
                    .join(customers, customers.c.desired_change_id == change_requests.c.id)
                    .where(customers.c.customer == customer)
                )
            ).first()
            return _change(row) if row is not None else None

        return await self._tx(op, write=False)

    async def _claim_rows(
        self, conn: AsyncConnection, customer: str
    ) -> tuple[Row[Any] | None, ChangeRecord | None]:
        row = (await conn.execute(_Q_CUSTOMER, {"b_customer": customer})).first()
        if row is None or row.desired_change_id is None:
            return row, None
        return row, await self._get_change(conn, row.desired_change_id)

    async def desired_summaries(
        self, listed: Iterable[tuple[str | None, str | None]]
    ) -> dict[str, DesiredSummary]:
        """What a sweep checks of the desired requests of a page of listed customers, given as
        (key, OpenMeter id), in one transaction (a query per 500 references) instead of one
        per customer. Desired state is stored under the reference its request used, the
        key as a rule: each customer is looked up by key and, when that finds nothing, by id.
        Keyed by the reference that matched; customers without desired state are absent."""
        pairs = list(listed)

        async def op(conn: AsyncConnection) -> dict[str, DesiredSummary]:
            out: dict[str, DesiredSummary] = {}
            pg = not self._sqlite
            keys = list(dict.fromkeys(k for k, _ in pairs if k))
            await _read_summaries(conn, keys, out, postgresql=pg)
            ids = [i for k, i in pairs if i and (not k or k not in out)]
            await _read_summaries(conn, list(dict.fromkeys(ids)), out, postgresql=pg)
            return out

        return await self._tx(op, write=False)

    async def list_changes(
        self,
        status: ChangeStatus | str | None = None,
        customer: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[ChangeRecord], str | None]:
        """Newest first (by received_at, then id). ``next_cursor`` is None on the last page."""
        c = change_requests.c
        q = sa.select(change_requests)
        if status is not None:
            q = q.where(c.status == ChangeStatus(status).value)
        if customer is not None:
            q = q.where(c.customer == customer)
        return await self._keyset_page(
            "changes",
            q,
            c.received_at,
            c.id,
            cursor,
            limit,
            _change,
            lambda r: (r.received_at, r.id),
        )

    async def _keyset_page(
        self,
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

        async def op(conn: AsyncConnection) -> list[R]:
            return [record(r) for r in (await conn.execute(q)).all()]

        rows = await self._tx(op, write=False)
        if len(rows) > limit:
            last = rows[limit - 1]
            return rows[:limit], _encode_cursor(name, *key_of(last))
        return rows, None

    def _change_values(self, fields: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
        unknown = set(fields) - UPDATABLE_CHANGE_FIELDS
        if unknown:
            raise TypeError(f"update_change: unknown fields {sorted(unknown)}")
        values: dict[str, Any] = {}
        for k, v in fields.items():
            if k == "status":
                v = ChangeStatus(v).value
            elif k == "direction" and v is not None:
                v = Direction(v).value
            elif k == "timing" and v is not None:
                v = Timing(v).value
            elif k == "details":
                v = dict(v or {})
            values[k] = v
        values["updated_at"] = _aware(now, "now") if now is not None else self._clock()
        return values

    async def _update_change_row(
        self,
        conn: AsyncConnection,
        change_id: str,
        values: Mapping[str, Any],
        expected: str | None,
        events: Sequence[NewEvent],
    ) -> ChangeRecord:
        q = change_requests.update().where(change_requests.c.id == change_id)
        if expected is not None:
            q = q.where(change_requests.c.status == expected)
        elif values.get("status", SUPERSEDED) != SUPERSEDED:
            # Superseded is final: a worker still busy with a request that a newer one
            # replaced meanwhile must not bring it back as applied/scheduled/converged.
            q = q.where(change_requests.c.status != SUPERSEDED)
        result = await conn.execute(q.values(**values).returning(*change_requests.c))
        row = result.first()
        if row is None:
            current = await self._get_change(conn, change_id)
            if current is None:
                raise ChangeNotFoundError(f"change {change_id} not found")
            raise StaleChangeError(change_id, expected or "open", current.status.value)
        record = _change(row)
        await self._write_events(conn, events, record.customer, record.id, values["updated_at"])
        return record

    async def update_change(
        self,
        change_id: str,
        *,
        expected_status: ChangeStatus | str | None = None,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
        **fields: Any,
    ) -> ChangeRecord:
        """Update a change request and enqueue ``events`` in the same transaction.

        ``expected_status``: optimistic concurrency; ``StaleChangeError`` when the row is no
        longer in that status. ``ChangeNotFoundError`` for an unknown id.
        """
        values = self._change_values(fields, now)
        expected = ChangeStatus(expected_status).value if expected_status is not None else None

        async def op(conn: AsyncConnection) -> ChangeRecord:
            return await self._update_change_row(conn, change_id, values, expected, events)

        return await self._tx(op, write=True)

    async def refresh_observed_mark(self, change_id: str, old: str | None, new: str) -> bool:
        """The sweep's write when a converged customer's subscription moved but its items did
        not: replace the change's ``observed_mark`` if it is still ``old`` and the change still
        converged (a reconcile that settled it meanwhile wrote its own). True if written."""
        c = change_requests.c
        q = (
            change_requests.update()
            .where(
                c.id == change_id,
                c.status == ChangeStatus.CONVERGED.value,
                c.observed_mark.is_(None) if old is None else c.observed_mark == old,
            )
            .values(observed_mark=new)
        )

        async def op(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(q)).rowcount)

        return await self._tx(op, write=True, idempotent=True)

    async def commit(
        self,
        change_id: str | None,
        *,
        fields: Mapping[str, Any] | None = None,
        events: Sequence[NewEvent] = (),
        audit: Sequence[AuditEntry] = (),
        claim: Claim | None = None,
        customer_id: str | None = None,
        reschedule: datetime | Keep | None = KEEP,
    ) -> ChangeRecord | None:
        """One engine step's writes in one transaction: the change's fields (superseded stays
        final, as in ``update_change``), its events and audit rows, and — through ``claim`` —
        the customer's resolved id and next check. Returns the updated change (None when no
        field was given).

        SQLite: everything commits together. PostgreSQL: the change, events and audit commit
        now; the customer-row writes go through the claim's connection (its row lock is held
        there) and commit when the claim ends, as ``Claim.reschedule`` always did.
        """
        values = self._change_values(fields, None) if fields else None
        rows = _audit_rows(audit)
        claim_ops: list[Callable[[AsyncConnection], Awaitable[None]]] = []
        if claim is not None and customer_id is not None and claim.customer_id != customer_id:
            claim_ops.append(claim._customer_id_op(customer_id))
        if claim is not None and not isinstance(reschedule, Keep):
            claim_ops.append(claim._reschedule_op(reschedule))
        inline = claim is not None and claim._conn is None

        async def op(conn: AsyncConnection) -> ChangeRecord | None:
            record = None
            if values is not None and change_id is not None:
                record = await self._update_change_row(conn, change_id, values, None, events)
            elif events:
                await self._write_events(conn, events, None, change_id, self._clock())
            if rows:
                await conn.execute(audit_log.insert(), rows)
            if inline:
                for claim_op in claim_ops:
                    await claim_op(conn)
            return record

        record = None
        if values is not None or events or rows or (inline and claim_ops):
            record = await self._tx(op, write=True)
        if claim is not None and not inline and claim_ops:

            async def claim_writes(conn: AsyncConnection) -> None:
                for claim_op in claim_ops:
                    await claim_op(conn)

            await claim._run(claim_writes)  # one savepoint for the step's customer-row writes
        return record

    async def count_changes_by_status(self) -> dict[str, int]:
        async def op(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(
                sa.select(change_requests.c.status, sa.func.count()).group_by(
                    change_requests.c.status
                )
            )
            return {str(s): int(n) for s, n in rows.all()}

        counts = {s.value: 0 for s in ChangeStatus}
        counts.update(await self._tx(op, write=False))
        return counts

    # -- scheduling ---------------------------------------------------------------------------

    async def schedule_customer(self, customer: str, at: datetime) -> None:
        """Make the customer due at ``at`` (or keep an earlier due time already set)."""
        at = _aware(at, "at")
        now = self._clock()

        async def op(conn: AsyncConnection) -> None:
            await self._ensure_customer(conn, customer, now)
            nc = customers.c.next_check_at
            await conn.execute(
                customers.update()
                .where(customers.c.customer == customer)
                .values(
                    next_check_at=sa.case(
                        (sa.or_(nc.is_(None), nc > at), at),
                        else_=nc,
                    ),
                    version=customers.c.version + 1,
                    updated_at=now,
                )
            )

        claim = self._held_claim(customer)
        if claim is not None:
            await claim._run(op)
            return
        await self._tx(op, write=True, idempotent=True)

    async def due_customers(self, now: datetime, limit: int = 100) -> list[str]:
        """Customers whose ``next_check_at`` has passed, most overdue first."""
        now = _aware(now, "now")
        c = customers.c
        q = (
            sa.select(c.customer)
            .where(c.next_check_at <= now)
            .order_by(c.next_check_at, c.customer)
            .limit(limit)
        )

        async def op(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(q)).scalars())

        return await self._tx(op, write=False)

    async def claim_due(self, now: datetime, limit: int = 100) -> list[str]:
        """Due customers that no worker holds a claim on right now (candidates for ``claim``).

        PostgreSQL: ``FOR UPDATE SKIP LOCKED`` skips customers claimed by any replica; the rows
        are not kept locked, so ``claim()`` remains the guarantee of exclusivity.
        """
        now = _aware(now, "now")
        c = customers.c
        q = (
            sa.select(c.customer)
            .where(c.next_check_at <= now)
            .order_by(c.next_check_at, c.customer)
            .limit(limit)
        )
        if self._sqlite:
            names = await self.due_customers(now, limit + len(self._sqlite_claims))
            return [n for n in names if n not in self._sqlite_claims][:limit]
        q = q.with_for_update(skip_locked=True)

        async def op(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(q)).scalars())

        return await self._tx(op, write=False)

    async def next_due_at(self) -> datetime | None:
        async def op(conn: AsyncConnection) -> datetime | None:
            value: datetime | None = (
                await conn.execute(sa.select(sa.func.min(customers.c.next_check_at)))
            ).scalar_one_or_none()
            return value

        return await self._tx(op, write=False)

    async def customers_with_desired(self, page_size: int = 500) -> AsyncIterator[str]:
        """Every customer with a desired request, in key order (pages of ``page_size``)."""
        after: str | None = None
        while True:
            q = sa.select(customers.c.customer).where(customers.c.desired_change_id.is_not(None))
            if after is not None:
                q = q.where(customers.c.customer > after)
            q = q.order_by(customers.c.customer).limit(page_size)

            async def op(conn: AsyncConnection, q: Any = q) -> list[str]:
                return list((await conn.execute(q)).scalars())

            page = await self._tx(op, write=False)
            for name in page:
                yield name
            if len(page) < page_size:
                return
            after = page[-1]

    # -- claims -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claim(self, customer: str) -> AsyncIterator[Claim | None]:
        """Exclusive per-customer claim; yields None when another worker holds it.

        PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` on the customer's row, on a dedicated
        connection kept in its transaction for the whole block (a crashed replica's claim ends
        with its connection). SQLite: an in-process flag per customer.
        """
        if self._sqlite:
            if customer in self._sqlite_claims:
                yield None
                return
            self._sqlite_claims.add(customer)
            try:
                now = self._clock()

                async def read(
                    conn: AsyncConnection,
                ) -> tuple[Row[Any] | None, ChangeRecord | None]:
                    return await self._claim_rows(conn, customer)

                async def load(
                    conn: AsyncConnection,
                ) -> tuple[Row[Any] | None, ChangeRecord | None]:
                    await self._ensure_customer(conn, customer, now)
                    return await self._claim_rows(conn, customer)

                # Read first: the row nearly always exists, and a read needs no write lock.
                row, desired = await self._tx(read, write=False)
                if row is None:
                    row, desired = await self._tx(load, write=True, idempotent=True)
                assert row is not None
                claim = Claim(self, _customer(row), row.version, None, desired)
                token = _push_claim(self, claim)
                try:
                    yield claim
                finally:
                    _HELD_CLAIMS.reset(token)
            finally:
                self._sqlite_claims.discard(customer)
            return

        # PostgreSQL. Lock the row at once: it nearly always exists and is free. Otherwise it
        # is missing or held: make sure it exists (a short committed transaction, which also
        # waits out another replica's uncommitted insert of it) and try once more.
        now = self._clock()

        async def ensure(conn: AsyncConnection) -> None:
            await self._ensure_customer(conn, customer, now)

        try:
            conn = await self._pg.connect()
        except (exc.DBAPIError, OSError) as e:
            raise StoreUnavailable(f"database unavailable: {e}") from e
        try:
            for attempt in (1, 2):
                try:
                    await conn.begin()
                    locked = (
                        await conn.execute(_Q_CLAIM_CUSTOMER, {"b_customer": customer})
                    ).first()
                except exc.DBAPIError as e:
                    if _is_transient(e, False):
                        raise StoreUnavailable(f"database unavailable: {e.orig}") from e
                    raise _translate(e) from e
                if locked is not None:
                    break
                await conn.rollback()
                if attempt == 1:
                    await self._tx(ensure, write=True, idempotent=True)
            if locked is None:
                yield None  # another worker holds it
                return
            claim = Claim(self, _customer(locked), locked.version, conn, _desired_change(locked))
            token = _push_claim(self, claim)
            try:
                yield claim
            except BaseException:
                # Writes made through the claim (reschedule, routed submits) were reported as
                # done: keep them, as on SQLite where they commit at once. Best effort.
                try:
                    await conn.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                raise
            finally:
                _HELD_CLAIMS.reset(token)
            try:
                await conn.commit()
            except exc.DBAPIError as e:
                if _is_transient(e, False):
                    raise StoreUnavailable(
                        f"claim connection lost before commit: {e.orig}", ambiguous=True
                    ) from e
                raise _translate(e) from e
        finally:
            await conn.close()

    # -- leadership ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def leader(self, name: str) -> AsyncIterator[Leadership]:
        """Singleton duty. ``handle.held`` tells whether this process is the leader now; call
        ``await handle.check()`` before each round to re-validate or retry acquisition."""
        handle = Leadership(self, name)
        self._leaderships.add(handle)
        if not self._sqlite:
            await handle._try_acquire()
        try:
            yield handle
        finally:
            self._leaderships.discard(handle)
            await handle._release()

    # -- audit --------------------------------------------------------------------------------

    async def append_audit(self, entries: Iterable[AuditEntry]) -> int:
        """Append entries (one transaction). Returns how many were written."""
        rows = _audit_rows(entries)
        if not rows:
            return 0

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(audit_log.insert(), rows)

        await self._tx(op, write=True)
        return len(rows)

    async def list_audit(
        self,
        customer: str | None = None,
        change_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first. ``before_id`` pages further back."""
        q = sa.select(audit_log)
        if customer is not None:
            q = q.where(audit_log.c.customer == customer)
        if change_id is not None:
            q = q.where(audit_log.c.change_id == change_id)
        if before_id is not None:
            q = q.where(audit_log.c.id < before_id)
        q = q.order_by(audit_log.c.id.desc()).limit(limit)

        async def op(conn: AsyncConnection) -> list[AuditEntry]:
            return [_audit(r) for r in (await conn.execute(q)).all()]

        return await self._tx(op, write=False)

    # -- outbox -------------------------------------------------------------------------------

    async def _write_events(
        self,
        conn: AsyncConnection,
        events: Sequence[NewEvent],
        customer: str | None,
        change_id: str | None,
        now: datetime,
    ) -> None:
        if not events:
            return
        await conn.execute(
            outbox_events.insert(),
            [
                {
                    "id": e.id or new_event_id(),
                    "type": e.type,
                    "customer": e.customer if e.customer is not None else customer,
                    "change_id": e.change_id if e.change_id is not None else change_id,
                    "payload": dict(e.payload),
                    "status": EventStatus.PENDING.value,
                    "attempts": 0,
                    # NULL: due at once, whatever clock the deliverer runs on
                    "next_attempt_at": None,
                    "created_at": now,
                }
                for e in events
            ],
        )

    async def enqueue_events(self, events: Sequence[NewEvent], now: datetime) -> None:
        """Enqueue events not tied to a change update (e.g. operational notices)."""
        now = _aware(now, "now")

        async def op(conn: AsyncConnection) -> None:
            await self._write_events(conn, events, None, None, now)

        await self._tx(op, write=True)

    async def get_event(self, event_id: str) -> OutboxEvent | None:
        async def op(conn: AsyncConnection) -> OutboxEvent | None:
            row = (
                await conn.execute(sa.select(outbox_events).where(outbox_events.c.id == event_id))
            ).first()
            return _event(row) if row is not None else None

        return await self._tx(op, write=False)

    async def due_events(self, now: datetime, limit: int = 100) -> list[OutboxEvent]:
        """Pending events whose next attempt is due, oldest due first.

        A new event has no ``next_attempt_at`` (never tried): it is due at once."""
        now = _aware(now, "now")
        c = outbox_events.c
        q = (
            sa.select(outbox_events)
            .where(
                c.status == EventStatus.PENDING.value,
                sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
            )
            .order_by(c.next_attempt_at.asc().nulls_first(), c.created_at, c.id)
            .limit(limit)
        )

        async def op(conn: AsyncConnection) -> list[OutboxEvent]:
            return [_event(r) for r in (await conn.execute(q)).all()]

        return await self._tx(op, write=False)

    async def _event_update(
        self,
        event_id: str,
        allowed_from: Sequence[EventStatus],
        values: Mapping[str, Any],
        action: str,
    ) -> OutboxEvent:
        async def op(conn: AsyncConnection) -> OutboxEvent:
            row = (
                await conn.execute(
                    outbox_events.update()
                    .where(
                        outbox_events.c.id == event_id,
                        outbox_events.c.status.in_([s.value for s in allowed_from]),
                    )
                    .values(**values)
                    .returning(*outbox_events.c)
                )
            ).first()
            if row is not None:
                return _event(row)
            cur = (
                await conn.execute(
                    sa.select(outbox_events.c.status).where(outbox_events.c.id == event_id)
                )
            ).first()
            if cur is None:
                raise EventNotFoundError(f"event {event_id} not found")
            raise InvalidTransitionError(f"cannot {action} event {event_id}: it is {cur.status}")

        return await self._tx(op, write=True)

    async def mark_delivered(self, event_id: str, now: datetime) -> OutboxEvent:
        return await self._event_update(
            event_id,
            (EventStatus.PENDING,),
            {
                "status": EventStatus.DELIVERED.value,
                "delivered_at": _aware(now, "now"),
                "attempts": outbox_events.c.attempts + 1,
                "next_attempt_at": None,
                "last_error": None,
            },
            "mark delivered",
        )

    async def mark_failed(
        self,
        event_id: str,
        error: str,
        next_attempt_at: datetime | None,
        dead: bool = False,
    ) -> OutboxEvent:
        """Count a failed attempt; ``dead`` gives up on the event (status ``dead``)."""
        if not dead and next_attempt_at is None:
            raise ValueError("next_attempt_at is required unless dead")
        return await self._event_update(
            event_id,
            (EventStatus.PENDING,),
            {
                "status": (EventStatus.DEAD if dead else EventStatus.PENDING).value,
                "attempts": outbox_events.c.attempts + 1,
                "last_error": error,
                "next_attempt_at": (
                    None if dead or next_attempt_at is None else _aware(next_attempt_at, "at")
                ),
            },
            "mark failed",
        )

    async def disable_pending(self, reason: str) -> int:
        """The receiver is gone (HTTP 410): every pending event becomes ``disabled``."""

        async def op(conn: AsyncConnection) -> int:
            result = await conn.execute(
                outbox_events.update()
                .where(outbox_events.c.status == EventStatus.PENDING.value)
                .values(status=EventStatus.DISABLED.value, last_error=reason, next_attempt_at=None)
            )
            return int(result.rowcount)

        return await self._tx(op, write=True, idempotent=True)

    async def redeliver(self, event_id: str, now: datetime) -> OutboxEvent:
        """Put a dead or disabled event back in the queue (attempts start again from zero)."""
        return await self._event_update(
            event_id,
            (EventStatus.DEAD, EventStatus.DISABLED, EventStatus.PENDING),
            {
                "status": EventStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": _aware(now, "now"),
            },
            "redeliver",
        )

    async def list_events(
        self,
        status: EventStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[OutboxEvent], str | None]:
        """Newest first (created_at, then id)."""
        c = outbox_events.c
        q = sa.select(outbox_events)
        if status is not None:
            q = q.where(c.status == EventStatus(status).value)
        return await self._keyset_page(
            "events", q, c.created_at, c.id, cursor, limit, _event, lambda r: (r.created_at, r.id)
        )

    async def count_events_by_status(self) -> dict[str, int]:
        async def op(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(
                sa.select(outbox_events.c.status, sa.func.count()).group_by(outbox_events.c.status)
            )
            return {str(s): int(n) for s, n in rows.all()}

        counts = {s.value: 0 for s in EventStatus}
        counts.update(await self._tx(op, write=False))
        return counts


# ---------------------------------------------------------------------------------------------
# SQLite specifics


def _require_sqlite_file(path: str) -> None:
    """A read-only open never creates the database."""
    db = Path(path).resolve()
    if not db.exists():
        raise StoreError(f"no SQLite database at {db}")


def _lock_sqlite_file(path: str, instance_id: str) -> int:
    """Exclusive non-blocking flock on ``<db>.lock``; refuses a second process on the file."""
    db = Path(path).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path = Path(str(db) + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        who = f" (held by {holder})" if holder else ""
        raise StoreLockedError(
            f"SQLite database {db} is already in use by another reconciler process{who}; "
            f"lock file {lock_path}. Run one instance per SQLite file, or use PostgreSQL for "
            "replicas."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    info = f"instance={instance_id} pid={os.getpid()} host={socket.gethostname()}\n"
    os.pwrite(fd, info.encode(), 0)
    return fd


def _configure_sqlite(
    engine: Engine, *, wal: bool, busy_timeout_ms: int, query_only: bool = False
) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit transactions are not atomic for
        # read-then-write), and set the pragmas every connection needs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so what was answered as stored (a
            # webhook's 202, a marker written before a mutation) survives a power loss too;
            # NORMAL would survive only a crash of the process.
            cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        if query_only:  # a reader beside the service: SQLite itself refuses any write
            cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.info.get("begin", "BEGIN"))
