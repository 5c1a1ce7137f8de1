"""SQLite: the database thread that runs each transaction whole, the file lock, the pragmas.

The store's operations are coroutines written against ``AsyncConnection``. On SQLite they run
on one thread owned by the store (``SqliteThread``), where a sync connection answers their
``execute`` calls at once (``SyncConnection``): each runs to its end in one step, and the event
loop awaits one hop per transaction instead of one per statement. One process owns a SQLite
file (``lock_file``). See docs/STORE.md, "SQLite specifics".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import StaticPool

from reconciler.store.errors import StoreError, StoreLockedError

T = TypeVar("T")


class SyncConnection:
    """What the store's operations use of an ``AsyncConnection`` (``execute``, ``run_sync``),
    answered by a sync connection on SQLite's database thread: nothing ever suspends."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self._conn, *args)


def drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never suspends (a store operation on ``SyncConnection``)."""
    coro = cast(Coroutine[Any, Any, T], awaitable)
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise RuntimeError("a store operation awaited something other than the database")


class SqliteThread:
    """The one database thread of a SQLite store and the connection it keeps.

    (PostgreSQL transactions on threads were tried: several threads doing SQLAlchemy's Python
    work took the GIL from the event loop, and 200 concurrent upgrades got slower.)"""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # used from the database thread only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reconciler-sqlite")
        self._conn: Connection | None = None  # the thread's own

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def transaction(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        write: bool,
        committing: list[bool],
    ) -> T:
        """On the database thread: one whole transaction, without a hop back to the event loop
        per statement. The operation is the same coroutine an ``AsyncConnection`` would run;
        here its ``execute`` calls are answered synchronously (``SyncConnection``), so it runs
        to the end in one step. Writes begin IMMEDIATE (take the write lock up front)."""
        conn = self._conn
        if conn is None or conn.invalidated or conn.closed:
            # One connection for the thread's life (no pool checkout and reset per
            # transaction); a fresh one after a fault invalidated it.
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        conn.info["begin"] = "BEGIN IMMEDIATE" if write else "BEGIN"
        try:
            with conn.begin():
                result: T = drive(fn(cast(AsyncConnection, SyncConnection(conn))))
                committing[0] = True
        except BaseException:
            if conn.in_transaction():  # a failed commit or rollback: start over next time
                conn.invalidate()
            raise
        return result

    async def close(self) -> None:
        """Close the connection and the engine, queued after any transaction still running;
        then the thread ends."""
        await self.call(self._dispose)
        self._executor.shutdown(wait=True)

    def _dispose(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self.engine.dispose()


def select_one(engine: Engine) -> None:
    """On the database thread: a trivial query on a fresh connection (readiness)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def run_committed(engine: Engine, fn: Callable[[Connection], None]) -> None:
    """On the database thread: ``fn`` on a fresh connection, then commit (migrations)."""
    with engine.connect() as conn:
        fn(conn)
        conn.commit()


def open_engine(url: URL, path: str | None, *, busy_timeout_ms: int, read_only: bool) -> Engine:
    """The sync engine of the database thread: ``path`` None is an in-memory database (one
    shared connection); ``read_only`` (a file only) sets ``query_only`` and keeps the journal
    mode as the service set it."""
    if path is None:
        engine = create_engine(
            url.set(database=":memory:"),
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        # one database thread: a connection or two is all it ever holds
        engine = create_engine(
            url, pool_size=2, max_overflow=0, connect_args={"check_same_thread": False}
        )
    _configure(
        engine,
        wal=path is not None and not read_only,
        busy_timeout_ms=busy_timeout_ms,
        query_only=read_only,
    )
    return engine


def require_file(path: str) -> None:
    """A read-only open never creates the database."""
    db = Path(path).resolve()
    if not db.exists():
        raise StoreError(f"no SQLite database at {db}")


def lock_file(path: str, instance_id: str) -> int:
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


def unlock_file(fd: int) -> None:
    """Release the lock of ``lock_file`` (the lock file itself stays)."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _configure(engine: Engine, *, wal: bool, busy_timeout_ms: int, query_only: bool) -> None:
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
