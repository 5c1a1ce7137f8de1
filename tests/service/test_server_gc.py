"""``reconciler run`` freezes what start-up built once it has started (``settle_gc``)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import uvicorn

from reconciler.service import server as srv


def test_settle_gc_collects_start_up_garbage_then_freezes_the_rest() -> None:
    class Node:
        peer: Any = None

    garbage = Node()
    garbage.peer = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    kept = Node()
    del garbage
    before = gc.get_freeze_count()
    try:
        srv.settle_gc()
        assert gone() is None  # collected, not frozen
        assert gc.get_freeze_count() > before
        # a live object left the collector's generations for the permanent one
        assert gc.is_tracked(kept) and all(o is not kept for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


async def test_the_server_settles_the_gc_after_the_lifespan_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                events.append("lifespan started")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                events.append("lifespan stopped")
                await send({"type": "lifespan.shutdown.complete"})
                return

    monkeypatch.setattr(srv, "settle_gc", lambda: events.append("gc settled"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None)
    config.load()
    server = srv._Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    assert server.started
    await server.shutdown()
    assert events == ["lifespan started", "gc settled", "lifespan stopped"]
