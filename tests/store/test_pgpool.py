"""The store's own psycopg pool (``reconciler.store.pgpool``), behind ``Database.pg_tx``.

On a real PostgreSQL server: connections reused and bounded, a caller left waiting given one
or a clear timeout, a failed transaction rolled back before its connection is reused, lost
connections replaced, nothing leaked by cancellation or by closing the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from reconciler.store import Store, StoreUnavailable
from reconciler.store.errors import StoreError
from reconciler.store.pgpool import Pool, PoolClosed

from .conftest import T0, Clock

pytestmark = pytest.mark.postgres


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
async def opened(pg_database: str) -> AsyncIterator[list[Any]]:
    """Every connection the pool under test opened, in order (closed at teardown)."""
    made: list[Any] = []
    yield made
    for pg in made:
        await pg.close()


def _pool(pg_database: str, made: list[Any], *, max_size: int = 2, timeout: float = 5) -> Pool:
    async def connect() -> Any:
        pg = await psycopg.AsyncConnection.connect(_dsn(pg_database))
        made.append(pg)
        return pg

    return Pool(connect, max_size=max_size, timeout=timeout)


async def _backend_pid(pg: Any) -> int:
    cur = await pg.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    await pg.commit()
    return int(row[0])


async def test_connections_are_reused_and_never_more_than_max_size(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=2)
    pids = []
    for _ in range(3):
        async with pool.connection() as pg:
            pids.append(await _backend_pid(pg))
    assert len(set(pids)) == 1 and pool.size == 1 and pool.idle == 1

    busy = 0
    most = 0

    async def hold() -> int:
        nonlocal busy, most
        async with pool.connection() as pg:
            busy += 1
            most = max(most, busy)
            await pg.execute("SELECT pg_sleep(0.05)")
            await pg.commit()
            busy -= 1
            return await _backend_pid(pg)

    held = await asyncio.gather(*(hold() for _ in range(6)))
    # six callers at once on two connections: the rest waited and were handed one
    assert most == 2 and len(set(held)) == 2 and len(opened) == 2
    assert pool.size == 2 and pool.idle == 2
    await pool.close()


async def test_a_caller_finding_every_connection_busy_times_out_clearly(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=1, timeout=0.1)
    async with pool.connection():
        with pytest.raises(TimeoutError, match="no PostgreSQL connection of the store's 1"):
            async with pool.connection():
                pass
    # the held connection came back and serves the next caller
    async with pool.connection() as pg:
        assert await _backend_pid(pg) > 0
    assert pool.size == 1 and len(opened) == 1
    await pool.close()


async def test_a_transaction_left_open_by_a_failure_is_rolled_back_before_reuse(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=1)
    async with pool.connection() as pg:
        await pg.execute("CREATE TABLE t (n integer)")
        await pg.commit()

    async def fails_in_python() -> None:
        async with pool.connection() as pg:
            await pg.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("the caller failed mid-transaction")

    async def fails_in_the_server() -> None:
        async with pool.connection() as pg:
            await pg.execute("CREATE UNIQUE INDEX ON t (n)")
            await pg.execute("INSERT INTO t VALUES (2), (2)")

    with pytest.raises(RuntimeError):
        await fails_in_python()
    with pytest.raises(psycopg.errors.UniqueViolation):
        await fails_in_the_server()
    async with pool.connection() as pg:
        assert pg.info.transaction_status is TransactionStatus.IDLE
        cur = await pg.execute("SELECT count(*) FROM t")
        assert (await cur.fetchone()) == (0,)
        await pg.commit()
    # the same connection throughout: a rollback, not a reconnect
    assert len(opened) == 1 and pool.size == 1
    await pool.close()


async def test_invalidate_replaces_every_connection_opened_before_it(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=3)

    async def pid_held(gate: asyncio.Event) -> int:
        async with pool.connection() as pg:
            pid = await _backend_pid(pg)
            await gate.wait()
            return pid

    gate = asyncio.Event()
    tasks = [asyncio.create_task(pid_held(gate)) for _ in range(3)]
    await asyncio.sleep(0.3)
    pool.invalidate()  # all three are checked out at that moment
    gate.set()
    before = set(await asyncio.gather(*tasks))
    assert pool.idle == 0 and pool.size == 0  # each discarded as it came back
    async with pool.connection() as pg:
        assert await _backend_pid(pg) not in before
    assert all(pg.closed for pg in opened[:3]) and len(opened) == 4
    await pool.close()


async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=1)
    cm = pool.connection()
    await cm.__aenter__()

    async def wait() -> None:
        async with pool.connection():
            pass

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0.05)
    await cm.__aexit__(None, None, None)  # hands the connection to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.idle == 1 and pool.size == 1
    async with pool.connection() as pg:
        assert await _backend_pid(pg) > 0
    assert len(opened) == 1
    await pool.close()


async def test_closing_the_pool_closes_idle_then_returned_connections_and_refuses_more(
    pg_database: str, opened: list[Any]
) -> None:
    pool = _pool(pg_database, opened, max_size=2)
    cm = pool.connection()
    held = await cm.__aenter__()
    async with pool.connection():
        pass
    waiter_pool = _pool(pg_database, opened, max_size=1)
    async with waiter_pool.connection():
        waiting = asyncio.create_task(waiter_pool.connection().__aenter__())
        await asyncio.sleep(0.05)
        await waiter_pool.close()
        with pytest.raises(PoolClosed):
            await waiting
    await pool.close()
    assert opened[1].closed and not held.closed
    await cm.__aexit__(None, None, None)
    assert held.closed and pool.size == 0
    with pytest.raises(PoolClosed):
        async with pool.connection():
            pass


async def _backends(pg_database: str) -> int:
    name = pg_database.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(
        _dsn(pg_database).rsplit("/", 1)[0] + "/postgres"
    ) as admin:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else -1


async def test_the_stores_hot_transactions_share_its_pool_and_close_with_it(
    pg_database: str, clock: Clock
) -> None:
    store = await Store.open(pg_database, instance_id="t", clock=clock, pool_size=3)
    await store.migrate()
    await store.db.pg.dispose()  # SQLAlchemy's pool: the migration's connections gone
    submits = [
        store.submit_change(f"c{i}", "pro", None, T0, "webhook", f"wh_{i}", T0) for i in range(8)
    ]
    results = await asyncio.gather(*submits)
    assert all(r.created for r in results)
    # eight submits at once on the store's three connections, none through SQLAlchemy's
    assert await _backends(pg_database) == 3
    await store.close()
    assert await _backends(pg_database) == 0
    with pytest.raises(StoreError, match="store is closed"):
        await store.submit_change("c9", "pro", None, T0, "webhook", "wh_9", T0)


async def test_a_server_that_cannot_be_reached_is_unavailable_after_the_retries(
    clock: Clock,
) -> None:
    store = await Store.open(
        "postgresql://postgres@127.0.0.1:1/none", instance_id="t", clock=clock, retries=1
    )
    try:
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            await store.submit_change("c1", "pro", None, T0, "webhook", "wh_1", T0)
    finally:
        await store.close()
