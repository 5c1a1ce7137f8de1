"""The client's network streams on asyncio itself (``reconciler/openmeter/streams.py``) and its
pool's cheaper locks (``sockets._Connection``), over real loopback sockets: keep-alive, large
bodies both ways, every timeout and error as httpx reports it, a connection the server closed
or reset, TLS with verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from reconciler.openmeter import sockets
from reconciler.openmeter.streams import READ_HIGH_WATER, AsyncioBackend

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _response(body: bytes, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and body (content-length bodies only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def server(serve: Serve, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        srv.close()
        await srv.wait_closed()


def _client(timeout: float = 5.0, **kw: Any) -> httpx.AsyncClient:
    client = httpx.AsyncClient(timeout=timeout, **kw)
    assert sockets.install(client) is True
    assert isinstance(client._transport._pool._network_backend, AsyncioBackend)  # type: ignore[attr-defined]
    return client


async def test_keep_alive_many_requests_on_one_connection_with_cheaper_locks() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                _, body = await _read_request(reader)
                writer.write(_response(b"echo:" + body))
                await writer.drain()

    async with server(serve) as url, _client() as client:
        for i in range(50):
            r = await client.post(f"{url}/x", content=f"n{i}".encode())
            assert (r.status_code, r.text) == (200, f"echo:n{i}")
        pool = client._transport._pool  # type: ignore[attr-defined]
        [conn] = pool._connections
        assert type(conn) is sockets._Connection
        assert isinstance(conn._connection._state_lock, sockets._Lock)
        stream = conn._connection._network_stream
        assert stream.get_extra_info("is_readable") is False  # idle and open
        assert stream.get_extra_info("server_addr")[1] == int(url.rsplit(":", 1)[1])
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
    assert connections == 1


async def test_concurrent_requests_each_get_their_answer() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                _, body = await _read_request(reader)
                await asyncio.sleep(0.01)
                writer.write(_response(body))
                await writer.drain()

    async with server(serve) as url, _client(limits=httpx.Limits(max_connections=4)) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/x", content=str(i).encode()) for i in range(40))
        )
        assert [r.text for r in answers] == [str(i) for i in range(40)]
        assert len(client._transport._pool._connections) == 4  # type: ignore[attr-defined]


async def test_large_bodies_both_ways_arrive_whole() -> None:
    """Reading pauses above the high-water mark and resumes; writing waits for the socket."""
    big = bytes(range(256)) * (4 * READ_HIGH_WATER // 256 + 7)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await _read_request(reader)
        assert body == big
        writer.write(_response(body))
        await writer.drain()
        writer.close()

    async with (
        server(serve) as url,
        _client() as client,
        client.stream("POST", f"{url}/x", content=big) as r,
    ):
        await asyncio.sleep(0.2)  # the answer arrives while nobody reads it
        protocol = r.extensions["network_stream"]._protocol
        assert protocol.reading_paused is True
        assert READ_HIGH_WATER < len(protocol.buffer) < len(big)
        got = b"".join([chunk async for chunk in r.aiter_raw()])
        assert protocol.reading_paused is False
    assert got == big


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(10)

    async with server(serve) as url, _client(timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{url}/x")


async def test_a_server_that_never_reads_is_a_write_timeout() -> None:
    accepted = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.sleep(10)  # reads nothing: the client's socket buffer fills

    async with server(serve) as url, _client(timeout=0.3) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(f"{url}/x", content=b"x" * (64 * 1024 * 1024))
    assert accepted.is_set()


async def test_refused_and_unresolvable_are_connect_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/x")
        with pytest.raises(httpx.ConnectError):
            await client.get("http://no-such-host.invalid/x")


async def test_a_connect_that_hangs_is_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*_a: Any, **_k: Any) -> Any:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "create_connection", never)
    with pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp("127.0.0.1", 9, timeout=0.1)


async def test_a_body_cut_short_or_a_reset_is_an_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_response(b"x" * 100)[:-90])  # promises 100 bytes, sends 10
        await writer.drain()
        writer.close()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST instead of FIN

    async with server(short) as url, _client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{url}/x")
    async with server(reset) as url, _client() as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(f"{url}/x")


async def test_the_server_closing_an_idle_connection_is_seen_without_a_read() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_response(b"ok"))
        await writer.drain()
        writer.close()  # keep-alive implied, then closed

    async with server(serve) as url, _client() as client:
        assert (await client.get(f"{url}/x")).text == "ok"
        [conn] = client._transport._pool._connections  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)
        # the event loop saw the FIN: the pool will not hand this connection out again
        assert conn._connection._network_stream.get_extra_info("is_readable") is True
        assert (await client.get(f"{url}/x")).text == "ok"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls_verified_against_the_given_authority(tmp_path: Path) -> None:
    key, cert = _certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                _, body = await _read_request(reader)
                writer.write(_response(b"tls:" + body))
                await writer.drain()

    trusted = ssl.create_default_context(cafile=str(cert))
    async with server(serve, server_ctx) as url:
        async with _client(verify=trusted) as client:
            for i in range(3):
                r = await client.post(f"{url}/x", content=str(i).encode())
                assert r.text == f"tls:{i}"
            [conn] = client._transport._pool._connections  # type: ignore[attr-defined]
            ssl_object = conn._connection._network_stream.get_extra_info("ssl_object")
            assert ssl_object is not None and ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        async with _client() as untrusted:  # the system's authorities do not know it
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.get(f"{url}/x")
