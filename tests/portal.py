"""A portal stand-in: a Standard Webhooks receiver on a free loopback port (uvicorn thread).

It verifies every delivery with the ``standardwebhooks`` package, deduplicates by
``webhook-id`` like a real receiver should, and answers as scripted: ``ok`` (204), ``fail``
(500), ``gone`` (410) or ``hang`` (no answer for ``hang_seconds``).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = "whsec_" + base64.b64encode(b"portal-test-secret-0123456789abcdef").decode()


@dataclass
class Seen:
    id: str
    timestamp: str
    body: dict[str, Any]
    answered: int


@dataclass
class Receiver:
    secret: str = SECRET
    mode: str = "ok"
    hang_seconds: float = 2.0
    seen: list[Seen] = field(default_factory=list)  # every verified attempt
    processed: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → body, once
    duplicates: list[str] = field(default_factory=list)  # ids received again after success
    invalid: int = 0
    url: str = ""

    async def hook(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = Webhook(self.secret).verify(raw, dict(request.headers))
        except WebhookVerificationError:
            self.invalid += 1
            return Response(status_code=400)
        msg_id = request.headers["webhook-id"]
        mode = self.mode
        answer = {"ok": 204, "fail": 500, "gone": 410, "hang": 204}[mode]
        self.seen.append(Seen(msg_id, request.headers["webhook-timestamp"], body, answer))
        if answer == 204:
            if msg_id in self.processed:
                self.duplicates.append(msg_id)  # deduplicated: acknowledged, not processed
            else:
                self.processed[msg_id] = body
        if mode == "hang":  # processed, but the answer comes late (or never reaches the sender)
            await asyncio.sleep(self.hang_seconds)
            return Response(status_code=204)
        return Response(status_code=answer, content=b"" if answer == 204 else b"scripted")

    def ids(self, answered: int | None = None) -> list[str]:
        return [s.id for s in self.seen if answered is None or s.answered == answered]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A ``Receiver`` served by uvicorn on a free loopback port at ``rec.url``."""
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.hook, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        server.should_exit = True
        thread.join(timeout=10)
