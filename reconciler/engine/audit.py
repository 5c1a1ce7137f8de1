"""Every OpenMeter call into the append-only audit log, with the customer and change it served.

Calls made while working on a change (reads and writes) are all recorded. Reads outside any
change — a sweep looking at thousands of converged customers — are not, unless they failed:
they decide nothing and would drown the log.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from reconciler.engine.clock import Clock
from reconciler.openmeter.client import CallRecord
from reconciler.store import Store
from reconciler.store.types import AuditEntry, AuditKind

_READ = "GET"


class AuditWriter:
    def __init__(self, store: Store, clock: Clock | None = None, *, reads: bool = False) -> None:
        self.store = store
        self.clock = clock
        self.reads = reads

    async def __call__(self, record: CallRecord) -> None:
        ctx = structlog.contextvars.get_contextvars()
        failed = record.error is not None or (record.status or 0) >= 400
        if record.method == _READ and not (self.reads or failed or ctx.get("change")):
            return
        at = await self.clock.now() if self.clock is not None else datetime.now(UTC)
        await self.store.append_audit(
            [
                AuditEntry(
                    at=at,
                    kind=AuditKind.CALL,
                    operation=record.operation,
                    customer=ctx.get("customer"),
                    change_id=ctx.get("change"),
                    method=record.method,
                    path=record.path,
                    request_body=record.request_body,
                    status=record.status,
                    detail=record.detail or record.error,
                    data={"duration_s": round(record.duration_s, 6), "attempt": record.attempt},
                )
            ]
        )


def fan_out(
    observers: Sequence[Callable[[CallRecord], Awaitable[None] | None]],
) -> Callable[[CallRecord], Awaitable[None]]:
    async def call(record: CallRecord) -> None:
        for obs in observers:
            res: Any = obs(record)
            if inspect.isawaitable(res):
                await res

    return call
