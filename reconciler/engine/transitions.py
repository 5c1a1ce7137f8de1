"""The events a change's status transitions emit (``plan_change.*``), with stable ids.

An event is written in the same store transaction as the transition it reports (the outbox),
with an id derived from the change and its transition count, so a pass that commits twice or a
change healed back through a status never emits a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from reconciler.domain.model import Timing
from reconciler.domain.planner import PlanResult, State
from reconciler.domain.timefmt import iso_offset
from reconciler.store.types import ChangeRecord, ChangeStatus, NewEvent

FAILED = "plan_change.failed"

RETRY_BASE = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=30)
AFTER_BOUNDARY = timedelta(seconds=2)


def backoff(attempts: int) -> timedelta:
    """How long a change waits before its next attempt, after ``attempts`` failed ones."""
    return min(RETRY_MAX, RETRY_BASE * (1 << min(16, max(0, attempts - 1))))


def status_after(
    result: PlanResult, change: ChangeRecord, now: datetime
) -> tuple[ChangeStatus, datetime | None]:
    """The change's status once a pass planned ``result`` (neither refused nor a cancelation
    respected), and when it is looked at next (None: only when something changes)."""
    if result.state is State.CONVERGED:
        return ChangeStatus.CONVERGED, None
    if result.state is State.WAITING:
        immediate = (result.timing or change.timing) is Timing.IMMEDIATE
        # A deferred plan-record change is looked at again when it may be scheduled.
        when = result.next_check_at or result.converges_at or now
        status = ChangeStatus.APPLIED if immediate else ChangeStatus.SCHEDULED
        return status, max(when, now) + AFTER_BOUNDARY
    # still acting after max_steps: come back soon
    return ChangeStatus.PENDING, now + backoff(change.attempts + 1)


def next_transition(details: dict[str, Any]) -> int:
    """Count the change's status transitions (kept in its details): event ids stay unique when
    a converged change is healed and passes through a status again."""
    n = int(details.get("transitions", 0)) + 1
    details["transitions"] = n
    return n


def event_id(change_id: str, n: int, kind: str) -> str:
    """Stable event id: written once, in the transaction of the transition it reports."""
    return f"evt_{change_id}_{n}_{kind.rsplit('.', 1)[-1]}"


def status_event(
    change: ChangeRecord,
    status: ChangeStatus,
    result: PlanResult,
    n: int,
    details: Mapping[str, Any],
) -> NewEvent:
    """``plan_change.<status>``: the target, direction, timing, when it takes effect and
    converges (and why), and for ``applied`` the entitlements before and after and the credit
    due."""
    kind = f"plan_change.{status.value}"
    payload: dict[str, Any] = {
        "change_id": change.id,
        "customer": change.customer,
        "customer_id": change.customer_id,
        "plan": {"key": change.plan_key, "version": change.plan_version},
        "direction": (change.direction or result.direction).value,
        "timing": (change.timing or result.timing or Timing.IMMEDIATE).value,
        "effective_at": iso_offset(change.effective_at or result.effective_at),
        "converges_at": iso_offset(result.converges_at),
    }
    if details.get("convergence") is not None:
        payload["convergence"] = details["convergence"]
    if status is ChangeStatus.APPLIED:
        payload["credit_due"] = details.get("credit_due")
        payload["entitlements"] = {
            "before": details.get("entitlements_before"),
            "after": details.get("entitlements_after"),
        }
    return NewEvent(type=kind, payload=payload, id=event_id(change.id, n, kind))


def failure_events(change: ChangeRecord, error: str, event: str, n: int) -> list[NewEvent]:
    """``event`` (e.g. ``plan_change.usage_not_preserved``) and ``plan_change.failed``."""
    payload = {
        "change_id": change.id,
        "customer": change.customer,
        "plan": {"key": change.plan_key, "version": change.plan_version},
        "error": error,
    }
    kinds = dict.fromkeys([event, FAILED])
    return [NewEvent(type=k, payload=payload, id=event_id(change.id, n, k)) for k in kinds]
