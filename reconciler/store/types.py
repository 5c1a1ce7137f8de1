"""Records returned by the store (frozen dataclasses) and the status vocabularies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from reconciler.domain.model import Desired, Direction, Timing


class ChangeStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    SCHEDULED = "scheduled"
    CONVERGED = "converged"
    SUPERSEDED = "superseded"
    FAILED = "failed"


#: Statuses of a request that is still being worked on (can be superseded by a newer one).
OPEN_STATUSES: tuple[ChangeStatus, ...] = (
    ChangeStatus.PENDING,
    ChangeStatus.APPLIED,
    ChangeStatus.SCHEDULED,
    ChangeStatus.FAILED,
)


class ChangeSource(StrEnum):
    WEBHOOK = "webhook"
    CLI = "cli"
    ADMIN = "admin"
    SWEEP = "sweep"


class EventStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISABLED = "disabled"


class AuditKind(StrEnum):
    CALL = "call"
    DECISION = "decision"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    id: str
    customer: str
    customer_id: str | None
    plan_key: str
    plan_version: int | None
    requested_at: datetime
    received_at: datetime
    source: ChangeSource
    source_id: str | None
    status: ChangeStatus
    direction: Direction | None
    timing: Timing | None
    rule: str | None
    effective_at: datetime | None
    converges_at: datetime | None
    last_error: str | None
    attempts: int
    next_attempt_at: datetime | None
    updated_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    #: what OpenMeter showed when the change converged (``reconciler.domain.drift``)
    observed_mark: str | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def to_desired(self) -> Desired:
        return Desired(
            change_id=self.id,
            plan_key=self.plan_key,
            plan_version=self.plan_version,
            requested_at=self.requested_at,
        )


class DesiredSummary(NamedTuple):
    """The part of a customer's desired request that a sweep checks against OpenMeter's listing
    (``Store.desired_summaries``): a page of 500 customers is looked up without building 500
    full ``ChangeRecord``\\ s (a tuple: the cheapest immutable record to build); the reconcile
    itself reads the whole record under its claim."""

    id: str
    customer: str
    plan_key: str
    plan_version: int | None
    status: ChangeStatus
    converges_at: datetime | None
    observed_mark: str | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    change: ChangeRecord
    created: bool
    superseded_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer: str
    customer_id: str | None
    desired_change_id: str | None
    next_check_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row. Build it without ``id`` to append; listed rows carry their ``id``."""

    at: datetime
    kind: AuditKind
    operation: str
    customer: str | None = None
    change_id: str | None = None
    method: str | None = None
    path: str | None = None
    request_body: Any = None
    status: int | None = None
    detail: str | None = None
    data: Mapping[str, Any] | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An outbound event to enqueue. ``id`` defaults to a fresh ``evt_…``; ``customer`` and
    ``change_id`` default to the change the event is written with."""

    type: str
    payload: Mapping[str, Any]
    customer: str | None = None
    change_id: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: str
    type: str
    customer: str | None
    change_id: str | None
    payload: Mapping[str, Any]
    status: EventStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
