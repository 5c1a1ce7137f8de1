"""Every OpenMeter call into the append-only audit log, with the customer and change it served.

Calls made while working on a change (reads and writes) are all recorded. Reads outside any
change — a sweep looking at thousands of converged customers — are not, unless they failed:
they decide nothing and would drown the log.

Outside a reconcile pass, mutations and failures are written at once. Inside one, the engine
``bind``s the customer: every row of the pass is buffered and the engine writes them with its
own step (``take``), in the transaction that records what the step decided — right after each
mutation, before any further call, so a crash may lose the buffered reads of the pass it
interrupted, never a mutation's row.
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
        self._buffered: dict[str, list[AuditEntry]] = {}  # customer -> rows not yet written
        self._bound: set[str] = set()  # customers in a reconcile pass (the engine writes)

    async def __call__(self, record: CallRecord) -> None:
        ctx = structlog.contextvars.get_contextvars()
        failed = record.error is not None or (record.status or 0) >= 400
        customer = ctx.get("customer")
        in_change = ctx.get("change") is not None
        if record.method == _READ and not (self.reads or failed or in_change):
            return
        at = await self.clock.now() if self.clock is not None else datetime.now(UTC)
        entry = AuditEntry(
            at=at,
            kind=AuditKind.CALL,
            operation=record.operation,
            customer=customer,
            change_id=ctx.get("change"),
            method=record.method,
            path=record.path,
            request_body=record.request_body,
            status=record.status,
            detail=record.detail or record.error,
            data={"duration_s": round(record.duration_s, 6), "attempt": record.attempt},
        )
        if customer is not None and (
            customer in self._bound or (in_change and not failed and record.method == _READ)
        ):
            self._buffered.setdefault(customer, []).append(entry)
            return
        entries = [*self._buffered.pop(customer, []), entry] if customer else [entry]
        await self.store.append_audit(entries)

    def bind(self, customer: str) -> None:
        """Buffer every row of this customer's calls until ``take`` (a reconcile pass)."""
        self._bound.add(customer)

    def take(self, customer: str) -> list[AuditEntry]:
        """The rows buffered for this customer, oldest first, for the caller to write."""
        return self._buffered.pop(customer, [])

    async def flush(self, customer: str) -> None:
        """Write what is still buffered for this customer and end its pass."""
        self._bound.discard(customer)
        entries = self._buffered.pop(customer, [])
        if entries:
            await self.store.append_audit(entries)


def fan_out(
    observers: Sequence[Callable[[CallRecord], Awaitable[None] | None]],
) -> Callable[[CallRecord], Awaitable[None]]:
    async def call(record: CallRecord) -> None:
        for obs in observers:
            res: Any = obs(record)
            if inspect.isawaitable(res):
                await res

    return call
