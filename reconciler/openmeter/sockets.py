"""Cheaper upkeep of httpx's connection pool (httpcore), for a client that runs many requests
at once.

**The idle-connection check.** Every time a request enters or leaves httpcore's pool, the pool
asks each pooled connection whether it has expired, and each idle HTTP/1.1 connection answers by
asking its network stream whether its socket is readable (a server that closed the connection).
httpcore's anyio stream looked the socket up through anyio's typed attributes, a fresh dict and
a ``getpeername`` system call per call: 8.5 % of the service's samples in a profile of 200
concurrent upgrades (docs/BENCHMARKS.md, 6–8). The streams ``install`` gives the pool
(``streams.AsyncioBackend``) answer from what the event loop already saw, with no system call.

**The pool walk.** The same bookkeeping (httpcore 1.0's ``_assign_requests_to_connections``)
decides whether to close a surplus idle connection by counting the pool again for every idle
connection, so each request costs a number of ``is_idle`` calls quadratic in the pool's size:
about 1,800 calls per request with 30 connections, 9–11 % of the service's samples holding the
GIL in the same profile (sixth and seventh sessions). ``LinearPool`` does the same bookkeeping
in one pass: the count it compares with the keep-alive limit is the pool's size, as it already
is in httpcore (the counted list holds every connection, idle or not), and the first usable,
or else the first idle, connection for each queued request is found without building lists.
``tests/openmeter/test_sockets.py`` runs both on random pools and compares every outcome.

**Looking at idle sockets less often.** Even one ``poll`` per idle connection, twice per
request, was 8 % of the event loop's samples in the eighth session's profile (the same burst),
when the check was a ``poll`` of the socket.
``LinearPool`` looks at every idle connection's socket at most once per ``sweep_interval``
(1 s) and, between sweeps, only at the one it is about to reuse — so no request is handed a
connection the server closed, as before; an idle connection that expired meanwhile is closed
by the next sweep instead of at once (httpcore's own check is no earlier than the next request
either). With the interval at 0 the outcomes are httpcore's, which the tests compare; between
sweeps they check that as many requests get a connection and none gets an expired one.

``install`` changes the pool of an ``httpx.AsyncClient`` whose transport httpx built itself (so
proxies from the environment and every other default stay as httpx chose them). It relies on
two private attributes (``AsyncClient._transport``, ``AsyncHTTPTransport._pool``) and on
httpcore 1.0's pool internals (``_network_backend``, ``_connections``, ``_requests``, the
limits); when any is missing or of another kind (another httpx or httpcore, a proxy, a test
transport), it changes nothing.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpcore
import httpx

from reconciler.openmeter.streams import AsyncioBackend


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with its bookkeeping in linear time, looking at idle connections' sockets
    at most every ``sweep_interval`` seconds, and at the one about to be reused always (see the
    module's docstring)."""

    #: Seconds between two looks at every idle connection (0: at every call, as httpcore does).
    sweep_interval = 1.0
    #: The clock of the sweeps (monotonic seconds); tests replace it.
    clock = staticmethod(time.monotonic)
    _swept_at = -math.inf

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        pool = self._connections
        now = self.clock()
        sweep = now - self._swept_at >= self.sweep_interval
        if sweep:
            self._swept_at = now
        for connection in list(pool):
            if connection.is_closed():
                pool.remove(connection)
            elif connection.is_idle():
                # expired: a look at its socket, on a sweep (or below, before it is reused)
                if (sweep and connection.has_expired()) or len(
                    pool
                ) > self._max_keepalive_connections:
                    pool.remove(connection)
                    closing.append(connection)
            elif connection.has_expired():
                pool.remove(connection)
                closing.append(connection)
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            # the first usable connection; failing that (the whole pool was looked at) the
            # first idle one, which is closed to make room when the pool is full
            chosen = None
            idle = None
            i = 0
            while i < len(pool):
                connection = pool[i]
                if connection.can_handle_request(origin) and connection.is_available():
                    if not sweep and connection.is_idle() and connection.has_expired():
                        # not looked at by this call's sweep: looked at now, before reuse
                        del pool[i]
                        closing.append(connection)
                        continue
                    chosen = connection
                    break
                if idle is None and connection.is_idle():
                    idle = connection
                i += 1
            if chosen is not None:
                pool_request.assign_to_connection(chosen)
            elif len(pool) < self._max_connections:
                chosen = self.create_connection(origin)
                pool.append(chosen)
                pool_request.assign_to_connection(chosen)
            elif idle is not None:
                pool.remove(idle)
                closing.append(idle)
                chosen = self.create_connection(origin)
                pool.append(chosen)
                pool_request.assign_to_connection(chosen)
        return closing

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        connection = super().create_connection(origin)
        if type(connection) is httpcore.AsyncHTTPConnection:
            connection.__class__ = _Connection
        return connection

    async def _close_connections(self, closing: list[httpcore.AsyncConnectionInterface]) -> None:
        # httpcore's enters a cancel scope at every response's end, with nothing to close at
        # nearly all of them; one is only needed around a close
        if closing:
            await super()._close_connections(closing)


class _Lock:
    """httpcore's ``AsyncLock`` on ``asyncio.Lock``. anyio's lock, which httpcore's uses under
    asyncio, yields the event loop on every acquire even when nobody holds it; this one
    yields only when it must wait. Nothing else differs."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> _Lock:
        await self._lock.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class _Connection(httpcore.AsyncHTTPConnection):
    """httpcore's connection without anyio's locks on every request (``_Lock``).

    httpcore's takes ``_request_lock`` on every request, though all it guards is opening the
    connection: with the connection open, nothing runs under it. This one goes straight to the
    open connection then, and gives an HTTP/1.1 connection, once it exists, a ``_Lock`` for its
    state (taken at a request's start and end; it is free when it is replaced, right after
    the first request's headers arrived and before its body is read)."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        inner = self._connection
        if inner is not None and self.can_handle_request(request.url.origin):
            return await inner.handle_async_request(request)
        response = await super().handle_async_request(request)
        inner = self._connection
        if type(inner) is httpcore.AsyncHTTP11Connection and not isinstance(
            getattr(inner, "_state_lock", None), _Lock
        ):
            inner._state_lock = _Lock()  # type: ignore[assignment]
        return response


_POOL_STATE = ("_connections", "_requests", "_max_connections", "_max_keepalive_connections")


def install(client: httpx.AsyncClient) -> bool:
    """Give the pool of ``client``'s own transport the cheaper idle check and the linear
    bookkeeping; whether it did."""
    transport = getattr(client, "_transport", None)
    if type(transport) is not httpx.AsyncHTTPTransport:
        return False
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool:
        return False
    if not httpcore.__version__.startswith("1.0.") or not all(
        hasattr(pool, name) for name in _POOL_STATE
    ):
        return False
    backend = getattr(pool, "_network_backend", None)
    if type(backend).__module__ != "httpcore._backends.auto":
        return False  # not httpcore's default backend (anyio's streams under asyncio)
    pool._network_backend = AsyncioBackend()
    pool.__class__ = LinearPool
    return True
