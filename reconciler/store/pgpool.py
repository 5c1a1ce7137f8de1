"""PostgreSQL: the store's own pool of psycopg connections, for ``Database.pg_tx``.

Checking a connection out of SQLAlchemy's async pool and back costs about 0.2 ms of CPU per
transaction — the greenlet bridge's hops, the ``AsyncConnection`` around it and its shielded
close, the reset on return — against a statement that takes 0.15 ms on a plain connection
(docs/BENCHMARKS.md, fourteenth session). The hot transactions (the webhook's submit, a step's
commit, an audit append, the alias lookup) are short and send their statements on psycopg's
connection anyway (``pgdirect``), so they take it from here instead. SQLAlchemy's pool keeps
what holds a connection for long or needs its engine: claims, leadership, migrations, the
read side.

The rules are SQLAlchemy's pool's, kept small:

- at most ``max_size`` connections, opened when needed; a caller finding all of them busy
  waits for one up to ``timeout`` seconds, then gets ``TimeoutError`` (transient: ``tx``'s
  retry). The most recently returned connection is handed out first.
- a connection goes back idle: a transaction left open (a fault in the caller) is rolled back;
  one that cannot be, or is broken or closed, is discarded.
- a lost connection (``invalidate``, on any ``OperationalError``) discards every connection
  opened before it at its next checkout or return — a server restart kills them all — as
  SQLAlchemy's pool does after a disconnect.
- no pre-ping: a dead idle connection fails its first statement, which ``tx``'s rules retry.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.pq import TransactionStatus

#: psycopg's connection: one of this pool's, or the one under a pooled SQLAlchemy connection.
PgConn: TypeAlias = "psycopg.AsyncConnection[Any]"


def _idle(pg: PgConn) -> bool:
    """Out of any transaction."""
    return pg.info.transaction_status is TransactionStatus.IDLE


class PoolClosed(Exception):
    """The pool was closed: no connection is handed out any more."""


class Pool:
    """Connections made by ``connect``, at most ``max_size`` open at once."""

    def __init__(
        self, connect: Callable[[], Awaitable[PgConn]], *, max_size: int, timeout: float
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._connect = connect
        self.max_size = max_size
        self._timeout = timeout
        self._idle: deque[PgConn] = deque()
        #: when each open connection (idle or checked out) was opened, by ``id``
        self._born: dict[int, float] = {}
        #: connections being opened (their slots taken)
        self._opening = 0
        #: connections opened before this instant are discarded (``invalidate``)
        self._invalid_before = float("-inf")
        #: callers waiting for a connection: given one, or ``None`` (a slot came free)
        self._waiters: deque[asyncio.Future[PgConn | None]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        """Open connections, idle or checked out, and those being opened."""
        return len(self._born) + self._opening

    @property
    def idle(self) -> int:
        return len(self._idle)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConn]:
        """A connection, idle and out of any transaction, returned when the block ends."""
        pg = await self._acquire()
        try:
            yield pg
        finally:
            await self._release(pg)

    def invalidate(self) -> None:
        """A connection was lost: discard every one opened until now as it comes by."""
        self._invalid_before = time.monotonic()

    async def close(self) -> None:
        """Close the idle connections now, the checked-out ones as they come back."""
        self._closed = True
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(PoolClosed("the store is closed"))
        while self._idle:
            await self._discard(self._idle.pop())

    # -- internals ----------------------------------------------------------------------------

    def _usable(self, pg: PgConn) -> bool:
        born = self._born.get(id(pg), self._invalid_before)
        return not (pg.closed or pg.broken) and born > self._invalid_before

    async def _acquire(self) -> PgConn:
        while True:
            if self._closed:
                raise PoolClosed("the store is closed")
            while self._idle:
                pg = self._idle.pop()
                if self._usable(pg):
                    return pg
                await self._discard(pg)
            if self.size < self.max_size:
                return await self._open()
            got = await self._wait()
            if got is not None:
                return got
            # a slot came free: open one (unless another caller took it meanwhile)

    async def _open(self) -> PgConn:
        self._opening += 1
        try:
            pg = await self._connect()
        except BaseException:
            self._wake_one(None)  # the slot is free again
            raise
        finally:
            self._opening -= 1
        self._born[id(pg)] = time.monotonic()
        return pg

    async def _wait(self) -> PgConn | None:
        fut: asyncio.Future[PgConn | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self._timeout):
                return await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # handed a connection just as the wait ended: pass it on, not lose it
                got = fut.result()
                if got is not None:
                    await self._release(got)
                else:
                    self._wake_one(None)
            else:
                fut.cancel()
            if isinstance(e, TimeoutError):
                raise TimeoutError(
                    f"no PostgreSQL connection of the store's {self.max_size} became free "
                    f"within {self._timeout:g} s"
                ) from None
            raise

    def _wake_one(self, value: PgConn | None) -> bool:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(value)
                return True
        return False

    async def _release(self, pg: PgConn) -> None:
        if self._closed or not self._usable(pg):
            await self._discard(pg)
            return
        if not _idle(pg):
            # the caller failed inside its transaction: roll it back, as SQLAlchemy's reset
            try:
                await pg.rollback()
            except BaseException as e:
                await self._discard(pg)
                if not isinstance(e, Exception):
                    raise  # cancelled: the connection is gone, the cancellation goes on
                return
            if not _idle(pg):
                await self._discard(pg)
                return
        if not self._wake_one(pg):
            self._idle.append(pg)

    async def _discard(self, pg: PgConn) -> None:
        self._born.pop(id(pg), None)
        try:
            await pg.close()
        except (psycopg.Error, OSError):
            pass  # already gone
        finally:
            self._wake_one(None)
