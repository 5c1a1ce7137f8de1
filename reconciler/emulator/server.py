"""Run the emulator under uvicorn: in a background thread (tests, demo) or blocking (CLI)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from reconciler.emulator.app import EmulatorASGI, create_app
from reconciler.emulator.catalog import parse_catalog_text
from reconciler.emulator.clock import Clock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _catalog(catalog: dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if catalog is None or isinstance(catalog, dict):
        return catalog
    if isinstance(catalog, Path):
        return parse_catalog_text(catalog.read_text())
    return parse_catalog_text(catalog)


class EmulatorServer:
    """``with EmulatorServer(catalog=...) as emu: httpx.get(emu.url + "/api/v1/plans")``.

    ``catalog``: a document dict, YAML/JSON text, or a ``Path`` to a file."""

    def __init__(
        self,
        catalog: dict[str, Any] | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        billing: bool = False,
    ) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.app: EmulatorASGI = create_app(catalog=_catalog(catalog), clock=clock, billing=billing)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def clock(self) -> Clock:
        return self.app.emulator.clock

    def start(self) -> EmulatorServer:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="openmeter-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"emulator failed to start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmulatorServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def serve(
    host: str = "127.0.0.1",
    port: int = 8888,
    catalog_path: str | Path | None = None,
    billing: bool = False,
) -> None:
    """Blocking entry point for ``reconciler emulator --catalog FILE --port 8888 [--billing]``."""
    doc = parse_catalog_text(Path(catalog_path).read_text()) if catalog_path else None
    app = create_app(catalog=doc, billing=billing)
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off")
