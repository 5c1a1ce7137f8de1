"""The client's cheaper idle-connection check (``reconciler/openmeter/sockets.py``), over real
sockets: a pooled connection the server has closed is still found and replaced."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import httpx

from reconciler.openmeter import sockets
from reconciler.openmeter.client import OpenMeterClient

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]"


def test_is_readable_sees_the_peer_close() -> None:
    a, b = socket.socketpair()
    try:
        assert sockets.is_readable(a) is False  # idle, open
        b.close()
        assert sockets.is_readable(a) is True  # EOF waiting: the pool drops the connection
    finally:
        a.close()
    assert sockets.is_readable(a) is True  # closed (fileno -1)
    assert sockets.is_readable(None) is True


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

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with OpenMeterClient(f"http://127.0.0.1:{port}", read_retries=0) as client:
            pool = client._http._transport._pool  # type: ignore[attr-defined]
            assert isinstance(pool, httpcore.AsyncConnectionPool)
            assert isinstance(pool._network_backend, sockets.CachedSocketBackend)
            for _ in range(3):
                r = await client._http.get("/api/v1/anything")
                assert r.status_code == 200 and r.json() == []
                await asyncio.sleep(0.05)  # the server's close arrives
        assert connections == 3
    finally:
        server.close()
        await server.wait_closed()


def test_install_leaves_other_transports_alone() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert sockets.install(client) is False
    own = httpx.AsyncClient()
    assert sockets.install(own) is True
    assert sockets.install(own) is False  # once
