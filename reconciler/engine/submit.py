"""Submitting a change request: the one way a desired state enters the store.

The portal's webhooks, the admin API, ``reconciler change``, the demo and adoption (desired
state re-derived from OpenMeter's tags) all call :func:`submit`, so every path gets the same
idempotency rule: a repeated ``(source, source_id)`` returns the stored change when it is the
same request and is a conflict when it is a different one. A new request that becomes the
desired state wakes the worker for its customer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from reconciler.domain.timefmt import iso_z
from reconciler.engine.clock import Clock
from reconciler.logs import get_logger
from reconciler.store import Store
from reconciler.store.types import ChangeRecord, ChangeSource, ChangeStatus, SubmitResult

__all__ = ["ChangeRequest", "IdempotencyConflict", "submit"]

log = get_logger("reconciler.submit")


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """Move ``customer`` to ``plan`` (``plan_version`` None: the latest published one), as of
    ``requested_at`` (None: now). The latest request of a customer wins."""

    customer: str
    plan: str
    plan_version: int | None = None
    requested_at: datetime | None = None

    def matches(self, change: ChangeRecord) -> bool:
        """Is ``change`` what this request stored (the version and time as requested)?"""
        return (
            change.customer == self.customer
            and change.plan_key == self.plan
            and (self.plan_version is None or change.plan_version == self.plan_version)
            and (self.requested_at is None or change.requested_at == self.requested_at)
        )


class IdempotencyConflict(Exception):
    """``source_id`` was already used for a different request."""

    def __init__(self, source: ChangeSource, source_id: str | None, change: ChangeRecord) -> None:
        label = "webhook-id" if source is ChangeSource.WEBHOOK else "Idempotency-Key"
        super().__init__(
            f"{label} {source_id!r} was already used for a different request (change {change.id})"
        )
        self.change = change


async def submit(
    store: Store,
    clock: Clock,
    request: ChangeRequest,
    source: ChangeSource,
    source_id: str | None,
    *,
    customer_id: str | None = None,
    wake: Callable[[str], None] | None = None,
) -> SubmitResult:
    """Store ``request`` (one transaction, idempotent on ``(source, source_id)``); raises
    :class:`IdempotencyConflict` for a reused id; calls ``wake(customer)`` when a new request
    became the customer's desired state."""
    now = await clock.now()
    result = await store.submit_change(
        request.customer,
        request.plan,
        request.plan_version,
        request.requested_at or now,
        source,
        source_id,
        now,
        customer_id=customer_id,
    )
    change = result.change
    if not result.created:
        if not request.matches(change):
            raise IdempotencyConflict(source, source_id, change)
        return result
    # the ids as fields, not bound: this is the block's only line
    log.info(
        "change_request_stored",
        customer=change.customer,
        change=change.id,
        source=source.value,
        plan=change.plan_key,
        plan_version=change.plan_version,
        requested_at=iso_z(change.requested_at),
        status=change.status.value,
        superseded=list(result.superseded_ids),
    )
    if wake is not None and change.status is not ChangeStatus.SUPERSEDED:
        wake(change.customer)
    return result
