"""The client's pool (``reconciler/openmeter/sockets.py``): over real sockets, a pooled connection
the server has closed is found and replaced; on random pools, ``LinearPool``'s bookkeeping
against httpcore's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import httpx
from httpcore._async.connection_pool import AsyncPoolRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.openmeter import sockets
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.streams import AsyncioBackend

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]"


@contextlib.asynccontextmanager
async def serving(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[OpenMeterClient]:
    """A client of a loopback server answering with ``serve``; the server is closed after."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with OpenMeterClient(f"http://127.0.0.1:{port}", read_retries=0) as client:
            yield client
    finally:
        server.close()
        await server.wait_closed()


async def test_the_client_uses_it_and_replaces_a_connection_the_server_closed() -> None:
    """The server answers each request and then closes the connection without saying so
    (keep-alive implied): the client's next request must not go to the dead connection."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()

    async with serving(serve) as client:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool, httpcore.AsyncConnectionPool)
        assert isinstance(pool._network_backend, AsyncioBackend)
        for _ in range(3):
            r = await client._http.get("/api/v1/anything")
            assert r.status_code == 200 and r.json() == []
            await asyncio.sleep(0.05)  # the server's close arrives
    assert connections == 3


def test_install_leaves_other_transports_alone() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert sockets.install(client) is False
    own = httpx.AsyncClient()
    assert sockets.install(own) is True
    assert sockets.install(own) is False  # once


# -- the pool's bookkeeping: LinearPool against httpcore's own, on random pools ----------------


class FakeConnection(httpcore.AsyncConnectionInterface):
    """What the pool's bookkeeping asks of a connection, as fixed answers."""

    def __init__(self, name: str, flags: tuple[bool, bool, bool, bool, bool]) -> None:
        self.name = name
        self.closed, self.expired, self.idle, self.available, self.same_origin = flags

    def is_closed(self) -> bool:
        return self.closed

    def has_expired(self) -> bool:
        return self.expired

    def is_idle(self) -> bool:
        return self.idle

    def is_available(self) -> bool:
        return self.available

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self.same_origin


class Signal:
    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True


def _run_bookkeeping(
    cls: type[httpcore.AsyncConnectionPool],
    flags: list[tuple[bool, bool, bool, bool, bool]],
    queued: list[bool],
    max_connections: int,
    max_keepalive: int,
    *,
    sweep: bool = True,
) -> tuple[list[str], list[str], list[str | None]]:
    pool = cls(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    if isinstance(pool, sockets.LinearPool):
        # a sweep at every call, as httpcore; or none due (one was just made)
        pool.sweep_interval = 0.0 if sweep else 3600.0
        pool._swept_at = pool.clock()
    made = iter(range(1000))
    pool.create_connection = lambda origin: FakeConnection(  # type: ignore[method-assign]
        f"new{next(made)}", (False, False, False, False, True)
    )
    pool._connections = [FakeConnection(f"c{i}", f) for i, f in enumerate(flags)]
    requests = []
    for is_queued in queued:
        pr = AsyncPoolRequest(httpcore.Request("GET", "http://openmeter:8888/api/v1/x"))
        pr._connection_acquired = Signal()  # type: ignore[assignment]  # no event loop here
        if not is_queued:
            pr.assign_to_connection(FakeConnection("busy", (False,) * 5))
        requests.append(pr)
    pool._requests = requests
    closing = pool._assign_requests_to_connections()
    return (
        [c.name for c in pool._connections],  # type: ignore[attr-defined]
        [c.name for c in closing],  # type: ignore[attr-defined]
        [getattr(r.connection, "name", None) for r in requests],
    )


#: Random pools: each connection's five answers, which requests are queued, the limits.
random_pools = given(
    flags=st.lists(st.tuples(*[st.booleans()] * 5), max_size=12),
    queued=st.lists(st.booleans(), max_size=5),
    max_connections=st.integers(1, 14),
    spare=st.integers(-3, 3),
)


@settings(max_examples=400, deadline=None)
@random_pools
def test_linear_pool_keeps_httpcores_bookkeeping(
    flags: list[tuple[bool, bool, bool, bool, bool]],
    queued: list[bool],
    max_connections: int,
    spare: int,
) -> None:
    max_keepalive = max(0, max_connections + spare)
    ours = _run_bookkeeping(sockets.LinearPool, flags, queued, max_connections, max_keepalive)
    theirs = _run_bookkeeping(
        httpcore.AsyncConnectionPool, flags, queued, max_connections, max_keepalive
    )
    assert ours == theirs


@settings(max_examples=400, deadline=None)
@random_pools
def test_between_sweeps_no_expired_connection_is_reused(
    flags: list[tuple[bool, bool, bool, bool, bool]],
    queued: list[bool],
    max_connections: int,
    spare: int,
) -> None:
    """Between sweeps only the connection about to be reused has its socket looked at: as many
    requests get a connection as with httpcore, none an expired or closed one, and what is kept
    beyond httpcore's pool is idle connections not looked at yet."""
    max_keepalive = max(0, max_connections + spare)
    kept, closing, got = _run_bookkeeping(
        sockets.LinearPool, flags, queued, max_connections, max_keepalive, sweep=False
    )
    kept_h, _, got_h = _run_bookkeeping(
        httpcore.AsyncConnectionPool, flags, queued, max_connections, max_keepalive
    )
    by_name = {f"c{i}": f for i, f in enumerate(flags)}
    assert sum(g is not None for g in got) == sum(g is not None for g in got_h)
    for name in got:
        if name in by_name:
            closed, expired, _, available, same_origin = by_name[name]
            assert not closed and not expired and available and same_origin
    assert not set(kept) & set(closing)
    assert not any(by_name[n][0] for n in kept if n in by_name)  # closed ones are dropped
    for name in set(kept) - set(kept_h):
        if name in by_name:
            _, expired, idle, _, _ = by_name[name]
            assert expired and idle


def test_idle_connections_are_looked_at_once_a_sweep_is_due() -> None:
    now = [100.0]
    pool = sockets.LinearPool(max_connections=4, max_keepalive_connections=4)
    pool.clock = lambda: now[0]
    pool._swept_at = now[0]
    looked: list[str] = []

    class Watched(FakeConnection):
        def has_expired(self) -> bool:
            looked.append(self.name)
            return self.expired

    # idle and expired, but of another origin: never about to be reused
    stale = Watched("stale", (False, True, True, True, False))
    pool._connections = [stale]
    pool._requests = []
    assert pool._assign_requests_to_connections() == [] and looked == []
    now[0] += pool.sweep_interval - 0.01
    assert pool._assign_requests_to_connections() == [] and looked == []
    now[0] += 0.02
    assert pool._assign_requests_to_connections() == [stale] and looked == ["stale"]
    assert pool._connections == []


async def test_the_client_pool_is_linear_and_still_reuses_connections() -> None:
    """Over real sockets: 20 requests, 5 at a time, on the linear pool reuse its 5 connections."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.01)
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with serving(serve) as client:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert type(pool) is sockets.LinearPool
        for _ in range(4):
            got = await asyncio.gather(*(client._http.get("/api/v1/anything") for _ in range(5)))
            assert [r.json() for r in got] == [[]] * 5
        assert len(pool.connections) == 5
    assert connections == 5
