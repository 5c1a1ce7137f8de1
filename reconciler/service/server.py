"""``reconciler run``: one process serving HTTP (uvicorn) and running the reconcile loop.

Shutdown (SIGTERM or SIGINT): the worker stops taking work at once, uvicorn stops accepting
connections and finishes the requests in flight, then the app's lifespan drains the worker (the
change in flight finishes or is released within ``drain_seconds``), releases the sweep
leadership and closes the store and the OpenMeter client. A second signal forces the exit.

Exit codes: 0 after a clean shutdown; 2 when the service cannot start because of its
configuration (an unusable webhook secret, an SQLite database already used by another process);
1 for any other start-up failure. A bad policy file is raised as ``PolicyError`` for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Generator

import uvicorn

from reconciler.domain.policy import PolicyError
from reconciler.logs import get_logger
from reconciler.service.app import Service, create_app
from reconciler.service.webhooks import WebhookConfigError
from reconciler.service.worker import EventsConfigError
from reconciler.settings import Settings
from reconciler.store import StoreConfigError, StoreLockedError

log = get_logger("reconciler.service.server")

EXIT_START_FAILED = 1
EXIT_CONFIG = 2


def settle_gc() -> None:
    """Take what start-up built out of the cyclic garbage collector's sight.

    Modules, settings, the catalog, compiled statements, pydantic validators: some 130,000
    objects that live as long as the process. Python's full (generation 2) collections walk all
    of them, and a sweep's pages of parsed customers trigger such collections every few pages:
    each took about 70 ms here, a fifth of a no-op sweep's time (docs/BENCHMARKS.md). Frozen
    objects are skipped by the collector (reference counting still frees them); the garbage
    start-up left is collected first so that none of it is frozen."""
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    """uvicorn re-raises captured signals after ``serve()`` returns (which would kill the process
    before it has drained); signals are handled by :func:`_serve` instead. Once started (the
    app's lifespan has opened the runtime and started the worker), :func:`settle_gc`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            settle_gc()


def serve(settings: Settings) -> None:
    """Run until SIGTERM. Raises ``SystemExit`` with a non-zero code when start-up fails."""
    try:
        app = create_app(settings)
    except WebhookConfigError as exc:
        log.error("start_failed", error=str(exc))
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None
    svc: Service = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,  # keep the structlog configuration of the root logger
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        server_header=False,
    )
    server = _Server(config)
    try:
        asyncio.run(_serve(server, svc))
    except SystemExit:  # uvicorn exits with 3 when the lifespan start-up failed
        if svc.startup_error is None:
            raise
    err = svc.startup_error
    if err is None:
        if not server.started:
            raise SystemExit(EXIT_START_FAILED)
        return
    if isinstance(err, PolicyError):
        raise err
    if isinstance(err, (StoreLockedError, StoreConfigError, EventsConfigError)):
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(EXIT_CONFIG)
    sys.stderr.write(f"error: the service failed to start: {type(err).__name__}: {err}\n")
    raise SystemExit(EXIT_START_FAILED)


async def _serve(server: uvicorn.Server, svc: Service) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if server.should_exit:
            log.warning("shutdown_forced", signal=sig.name)
            server.force_exit = True
            return
        log.info("shutdown_requested", signal=sig.name)
        svc.begin_shutdown()  # stop taking work now, before HTTP has drained
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
