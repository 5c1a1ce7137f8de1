"""httpcore's network streams on asyncio itself, for the OpenMeter client's pool.

httpx's pool (httpcore) reaches the network through a *network backend*; under asyncio it uses
anyio's. anyio gives every ``read`` and ``write`` a cancel scope (``fail_after``) and a
checkpoint, an extra turn of the event loop, so each HTTP request costs several loop turns and
scopes beyond the bytes it moves. A profile of 200 concurrent upgrades on PostgreSQL
(docs/BENCHMARKS.md §6–8, twelfth session) had 12 % of the service's samples in anyio. This
backend implements httpcore's documented ``AsyncNetworkBackend`` interface on an asyncio
protocol instead:

- a read returns what has arrived at once; only when nothing has, it waits on one future, with
  a timer for the timeout (no task, no cancel scope);
- a write hands the bytes to the transport and waits only when the transport asks the writer
  to pause (its high-water mark), with the same timeout rule;
- the errors are httpcore's (``ConnectError``, ``ConnectTimeout``, ``ReadError``,
  ``ReadTimeout``, ``WriteError``, ``WriteTimeout``), which httpx maps to its own, so the
  client's retry rules see what they saw before;
- TLS is asyncio's ``start_tls`` with the context httpx built (verification, ALPN, client
  certificates as configured), and ``get_extra_info`` answers what httpcore asks
  (``ssl_object``, ``socket``, ``client_addr``, ``server_addr``, ``is_readable``).

``sockets.install`` puts it under the client's pool.
"""

# httpcore's network interface takes ``timeout`` arguments; these classes implement it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

#: Stop reading from the socket while this much is buffered and unread (resume below half).
READ_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Bytes received and the state of one connection, for ``AsyncioStream``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost: BaseException | None = None  # why the connection was lost (None: cleanly)
        self.reading_paused = False
        self.writing_paused = False
        self._waiter: asyncio.Future[None] | None = None  # a read or a write waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self.writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until the next event on the connection; ``TimeoutError`` after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = None
        if timeout is not None:
            timer = loop.call_later(max(timeout, 0.0), _expire, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection (plain or TLS) as httpcore's network stream."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        while not p.buffer:
            if p.eof:
                if p.lost is not None:
                    raise httpcore.ReadError(str(p.lost) or type(p.lost).__name__)
                return b""
            try:
                await p.wait(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading the response") from None
        if len(p.buffer) <= max_bytes:
            data = bytes(p.buffer)
            p.buffer.clear()
        else:
            data = bytes(p.buffer[:max_bytes])
            del p.buffer[:max_bytes]
        if p.reading_paused and len(p.buffer) <= READ_HIGH_WATER // 2:
            p.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._protocol
        if p.eof or self._transport.is_closing():
            raise httpcore.WriteError(str(p.lost) if p.lost else "the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as e:
            raise httpcore.WriteError(str(e)) from e
        while p.writing_paused:
            try:
                await p.wait(timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing the request") from None
            if p.lost is not None:
                raise httpcore.WriteError(str(p.lost))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self._transport,
                self._protocol,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as e:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from e
        except (OSError, ssl.SSLError, ConnectionError) as e:
            self._transport.close()
            raise httpcore.ConnectError(str(e)) from e
        if transport is None:  # the connection was closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        assert isinstance(transport, asyncio.Transport)
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        t = self._transport
        if info == "ssl_object":
            return t.get_extra_info("ssl_object")
        if info == "client_addr":
            return t.get_extra_info("sockname")
        if info == "server_addr":
            return t.get_extra_info("peername")
        if info == "socket":
            return t.get_extra_info("socket")
        if info == "is_readable":
            # a server that closed the connection, or bytes nobody asked for: not reusable
            p = self._protocol
            return p.eof or bool(p.buffer) or t.is_closing()
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio's transports (see the module's docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        transport = await _connect(
            loop.create_connection(_Protocol, host, port, local_addr=local), timeout
        )
        _set_options(transport, socket_options)
        return transport

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        transport = await _connect(loop.create_unix_connection(_Protocol, path), timeout)
        _set_options(transport, socket_options)
        return transport

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(connecting: Any, timeout: float | None) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await connecting
    except TimeoutError as e:
        raise httpcore.ConnectTimeout("timed out connecting") from e
    except OSError as e:
        raise httpcore.ConnectError(str(e)) from e
    assert isinstance(transport, asyncio.Transport) and isinstance(protocol, _Protocol)
    return AsyncioStream(transport, protocol)


def _set_options(stream: AsyncioStream, options: Iterable[Any] | None) -> None:
    sock = stream.get_extra_info("socket")
    if sock is not None:
        for option in options or ():
            sock.setsockopt(*option)
