"""The database: open and close, transactions and their bounded retry, faults, migrations.

One ``Database`` per store. It is the one place that knows which dialect it runs on: on
PostgreSQL an async engine (psycopg 3); on SQLite a sync engine driven from one database thread
(``reconciler.store.sqlite``). The repositories hand it operations, coroutines taking a
connection (``Op``), and ask it the dialect (``sqlite``) where their SQL differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeAlias, TypedDict, TypeVar, Unpack

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from reconciler.store import pgdirect, pgpool, sqlite
from reconciler.store.errors import (
    StoreConflictError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailable,
)
from reconciler.store.urls import is_sqlite, normalize_url, sqlite_path

T = TypeVar("T")

#: What a repository asks the database to run: a coroutine on one connection, in a transaction.
Op: TypeAlias = Callable[[AsyncConnection], Awaitable[T]]
#: PostgreSQL: an operation on the pooled connection's psycopg connection (``Database.pg_tx``).
PgOp: TypeAlias = Callable[[pgdirect.PgConn], Awaitable[T]]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = "reconciler.store.migrate"


class OpenOptions(TypedDict, total=False):
    """``Store.open``'s options (all optional)."""

    #: who holds a SQLite file's lock; default ``<host>-<pid>``
    instance_id: str | None
    #: ``updated_at`` stamps where no ``now`` is passed; default the system's UTC clock
    clock: Callable[[], datetime] | None
    #: PostgreSQL's pool (default 10 + 20): above the worker concurrency, a claim holds one
    pool_size: int
    max_overflow: int
    #: bounded retry of transient faults (default 3)
    retries: int
    #: SQLite's ``busy_timeout`` (default 5000)
    busy_timeout_ms: int
    #: refuse writes; on SQLite take no lock (the file must exist). Default False.
    read_only: bool


class Held(Protocol):
    """Runs an operation on a connection held for a key (a claim's, ``Database.hold``)."""

    def __call__(self, fn: Op[T], /) -> Awaitable[T]: ...


# Connections held for a key by the current task (and the tasks it spawns): a claim holds the
# row lock of its customer, so writes to that customer's row from inside the claim must go
# through the claim's connection instead of waiting on its own lock (a self-deadlock).
_HELD: ContextVar[Mapping[tuple[int, str], Held] | None] = ContextVar(
    "reconciler_store_claims", default=None
)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's ``hash`` is randomised)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _autocommit(pg: pgdirect.PgConn, fn: PgOp[T]) -> T:
    """``fn`` on ``pg`` in autocommit. The connection is idle before and after (the pool
    rolled it back; autocommit leaves no transaction open), so neither switch sends anything.
    A broken connection is left as it is: the pool discards it."""
    await pg.set_autocommit(True)
    try:
        return await fn(pg)
    finally:
        if not (pg.broken or pg.closed):
            await pg.set_autocommit(False)


def is_transient(err: BaseException, sqlite: bool) -> bool:
    """A fault worth retrying: a lost or refused connection, SQLite's busy/locked."""
    if isinstance(err, exc.DBAPIError):
        if err.connection_invalidated:
            return True
        if sqlite:
            msg = str(err.orig).lower()
            return isinstance(err, exc.OperationalError) and ("locked" in msg or "busy" in msg)
        # psycopg.OperationalError: connection refused/lost, server shutting down, ...
        return isinstance(err, exc.OperationalError | exc.InterfaceError)
    return isinstance(err, ConnectionError | TimeoutError | OSError)


def translate(err: exc.DBAPIError) -> StoreError:
    """A non-transient database error as a store error (callers never see SQLAlchemy's)."""
    if isinstance(err, exc.IntegrityError):
        return StoreConflictError(f"constraint violated: {err.orig}")
    return StoreError(f"database error: {err.orig}")


def _direct_pool(engine: AsyncEngine, size: int) -> pgpool.Pool:
    """``pg_tx``'s pool: connections made as the engine makes its own (the URL's parameters,
    the dialect's type adapters), and the checkout timeout of SQLAlchemy's pool (30 s)."""
    args, params = engine.dialect.create_connect_args(engine.url)

    async def connect() -> pgdirect.PgConn:
        return await psycopg.AsyncConnection.connect(*args, **params)

    return pgpool.Pool(connect, max_size=size, timeout=30.0)


def _direct_error(
    pool: pgpool.Pool, pg: pgdirect.PgConn | None, err: psycopg.Error
) -> exc.DBAPIError:
    """A fault of ``pg_tx``'s as SQLAlchemy would have raised it; a lost (or never made)
    connection discards the pool's older ones, as SQLAlchemy's pool does after a disconnect."""
    lost = pg is None or pg.broken or pg.closed
    if lost or isinstance(err, psycopg.OperationalError):
        pool.invalidate()
    wrapped = exc.DBAPIError.instance(None, None, err, psycopg.Error, connection_invalidated=lost)
    assert isinstance(wrapped, exc.DBAPIError)
    return wrapped


class Database:
    """Transactions over SQLite or PostgreSQL. Create with ``await Database.open(url, ...)``."""

    def __init__(
        self,
        engine: AsyncEngine | sqlite.SqliteThread,
        url: URL,
        *,
        instance_id: str,
        clock: Callable[[], datetime],
        retries: int,
        lock_fd: int | None = None,
        read_only: bool = False,
        pool_size: int = 10,
    ) -> None:
        self._async = engine if isinstance(engine, AsyncEngine) else None
        self._autocommit: AsyncEngine | None = None  # PostgreSQL, made on first use
        #: PostgreSQL: the hot transactions' own psycopg connections (``pg_tx``)
        self._direct = _direct_pool(engine, pool_size) if isinstance(engine, AsyncEngine) else None
        self._thread = engine if isinstance(engine, sqlite.SqliteThread) else None
        #: The dialect, the one question the repositories ask where their SQL differs.
        self.sqlite = self._thread is not None
        self.url = url
        self.instance_id = instance_id
        self.clock = clock
        self.read_only = read_only
        self._retries = retries
        self._lock_fd = lock_fd
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str | URL, **options: Unpack[OpenOptions]) -> Database:
        """Open (not migrate) the database. SQLite files are locked against a second process.

        ``read_only``: no writes (``StoreReadOnlyError``), and on SQLite no lock either, so the
        CLI's read-only commands run beside ``reconciler run`` on the same file (WAL lets
        readers in while the service writes; they read the last committed state). The file
        must exist.
        """
        u = normalize_url(url)
        instance = options.get("instance_id") or f"{socket.gethostname()}-{os.getpid()}"
        clock = options.get("clock") or _utcnow
        retries = options.get("retries", 3)
        read_only = options.get("read_only", False)
        if not is_sqlite(u):
            # No pre-ping: it costs a round trip per transaction. A dead pooled connection
            # fails its first statement, which is retried (nothing was committed), and
            # SQLAlchemy then recycles every connection older than the failure.
            pool_size = options.get("pool_size", 10)
            engine = create_async_engine(
                u, pool_size=pool_size, max_overflow=options.get("max_overflow", 20)
            )
            return cls(
                engine,
                u,
                instance_id=instance,
                clock=clock,
                retries=retries,
                read_only=read_only,
                pool_size=pool_size,
            )
        path = sqlite_path(u)
        read_only = read_only and path is not None  # an in-memory database is always writable
        lock_fd = None
        if read_only:
            assert path is not None
            sqlite.require_file(path)
        elif path is not None:
            lock_fd = sqlite.lock_file(path, instance)
        thread = sqlite.SqliteThread(
            sqlite.open_engine(
                u,
                path,
                busy_timeout_ms=options.get("busy_timeout_ms", 5000),
                read_only=read_only,
            )
        )
        return cls(
            thread,
            u,
            instance_id=instance,
            clock=clock,
            retries=retries,
            lock_fd=lock_fd,
            read_only=read_only,
        )

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` at ``close``, before the engine goes (e.g. release leaderships:
        disposing of the engine would leave their checked-out connections open)."""
        self._on_close.append(callback)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for callback in self._on_close:
            await callback()
        if self._direct is not None:
            await self._direct.close()
        if self._async is not None:
            await self._async.dispose()
        if self._thread is not None:
            await self._thread.close()
        if self._lock_fd is not None:
            sqlite.unlock_file(self._lock_fd)
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dialect(self) -> str:
        return "sqlite" if self.sqlite else "postgresql"

    @property
    def pg(self) -> AsyncEngine:
        """PostgreSQL's engine (dedicated connections: claims, leadership, migrations)."""
        assert self._async is not None, "PostgreSQL only"
        return self._async

    @property
    def sync_engine(self) -> Engine | None:
        """SQLite's engine, to be used on the database thread only (``in_db_thread``)."""
        return self._thread.engine if self._thread is not None else None

    @property
    def _pg_autocommit(self) -> AsyncEngine:
        """The same pool, its connections in autocommit while checked out."""
        if self._autocommit is None:
            self._autocommit = self.pg.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit

    async def in_db_thread(self, fn: Callable[..., T], *args: object) -> T:
        """SQLite: run ``fn`` on the database thread."""
        if self._closed or self._thread is None:
            raise StoreError("store is closed")
        return await self._thread.call(fn, *args)

    async def ping(self) -> bool:
        """True when the database answers a trivial query (for readiness probes)."""
        try:
            if self._thread is not None:
                await self.in_db_thread(sqlite.select_one, self._thread.engine)
                return True
            async with self.pg.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except (exc.DBAPIError, OSError):
            return False

    # -- transactions -------------------------------------------------------------------------

    async def tx(
        self,
        fn: Op[T],
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

        async def attempt(committing: list[bool]) -> T:
            if self._thread is not None:
                return await self.in_db_thread(self._thread.transaction, fn, write, committing)
            if autocommit:
                async with self._pg_autocommit.connect() as conn:
                    committing[0] = True
                    return await fn(conn)
            async with self.pg.connect() as conn, conn.begin():
                result = await fn(conn)
                committing[0] = True
            return result

        return await self._retrying(attempt, write=write, idempotent=idempotent)

    async def pg_tx(
        self, fn: PgOp[T], *, write: bool, idempotent: bool = False, autocommit: bool = False
    ) -> T:
        """PostgreSQL: ``tx`` with ``fn`` given a psycopg connection of the store's own pool
        (``pgpool``; ``pgdirect``'s statements, without SQLAlchemy's per-statement and
        per-checkout cost). The same transaction, retry and fault rules as ``tx``,
        ``autocommit`` included: the connection is switched to it for ``fn`` and back before
        it returns to the pool."""
        assert self._direct is not None, "PostgreSQL only"
        pool = self._direct

        async def attempt(committing: list[bool]) -> T:
            try:
                async with pool.connection() as pg:
                    try:
                        if autocommit:
                            committing[0] = True
                            return await _autocommit(pg, fn)
                        result = await fn(pg)
                        committing[0] = True
                        await pg.commit()
                    except psycopg.Error as e:
                        raise _direct_error(pool, pg, e) from e
                    # any other exception: the pool's return rolls the transaction back
            except pgpool.PoolClosed as e:
                raise StoreError("store is closed") from e
            except psycopg.Error as e:  # opening a connection
                raise _direct_error(pool, None, e) from e
            return result

        return await self._retrying(attempt, write=write, idempotent=idempotent)

    async def _retrying(
        self, attempt: Callable[[list[bool]], Awaitable[T]], *, write: bool, idempotent: bool
    ) -> T:
        """``attempt`` (one transaction; it sets ``committing[0]`` once its commit is under way)
        again after a transient fault, a bounded number of times (``tx``'s rules)."""
        if self._closed:
            raise StoreError("store is closed")
        if write and self.read_only:
            raise StoreReadOnlyError("the store is open read-only")
        delay = 0.05
        for n in range(self._retries + 1):
            committing = [False]
            try:
                return await attempt(committing)
            except exc.DBAPIError as e:
                if not is_transient(e, self.sqlite):
                    raise translate(e) from e
                err: BaseException = e
            except (ConnectionError, TimeoutError, exc.TimeoutError) as e:
                # exc.TimeoutError: no pooled connection became free in time (overload)
                err = e
            if committing[0] and write and not idempotent:
                raise StoreUnavailable(
                    f"database fault while committing (outcome unknown): {err}", ambiguous=True
                ) from err
            if n == self._retries:
                raise StoreUnavailable(f"database unavailable: {err}") from err
            await asyncio.sleep(delay)
            delay = min(delay * 4, 1.0)
        raise AssertionError("unreachable")

    def fault(self, err: exc.DBAPIError, what: str, *, ambiguous: bool = False) -> StoreError:
        """A database error outside ``tx`` as a store error: a transient one as
        ``StoreUnavailable("<what>: …")``, any other as ``tx`` reports it."""
        if is_transient(err, self.sqlite):
            return StoreUnavailable(f"{what}: {err.orig}", ambiguous=ambiguous)
        return translate(err)

    @contextlib.contextmanager
    def hold(self, key: str, run: Held) -> Iterator[None]:
        """Inside the block (this task and the tasks it spawns), ``held(key)`` is ``run``."""
        held = dict(_HELD.get() or {})
        held[(id(self), key)] = run
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)

    def held(self, key: str) -> Held | None:
        """How to run a write for ``key`` inside a ``hold`` of it (None: outside any)."""
        return (_HELD.get() or {}).get((id(self), key))

    # -- migrations ---------------------------------------------------------------------------

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return cfg

    async def migrate(self) -> None:
        """``alembic upgrade head``. On PostgreSQL an advisory lock serialises replicas."""
        if self.read_only:
            raise StoreReadOnlyError("the store is open read-only: it cannot be migrated")
        cfg = self.alembic_config()

        def upgrade(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        try:
            if self._thread is not None:
                await self.in_db_thread(sqlite.run_committed, self._thread.engine, upgrade)
                return
            async with self.pg.connect() as conn:
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
            raise self.fault(e, "migration failed: database unavailable") from e

    async def is_migrated(self) -> bool:
        """True when the database is at the newest revision shipped with this code."""
        heads = set(ScriptDirectory.from_config(self.alembic_config()).get_heads())

        def current(sync_conn: Connection) -> set[str]:
            return set(MigrationContext.configure(sync_conn).get_current_heads())

        async def op(conn: AsyncConnection) -> set[str]:
            return await conn.run_sync(current)

        return await self.tx(op, write=False) == heads
