"""What a pass records about its decisions, and the mutations it sends.

* :func:`record_decision`: the planner's decision as an audit row, and — the first time the
  change acts — its direction, timing, rule and the entitlement values before it.
* :func:`drift_found`: a converged change whose OpenMeter state moved, audited with the items
  found against the mark stored at convergence.
* :func:`credit_due`: what the customer is owed for in-advance fees already invoiced (issue 13),
  recorded when an upgrade is applied.
* :func:`execute`: one planned action as its OpenMeter call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.domain.actions import (
    Action,
    CreateSubscription,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
    Unschedule,
)
from reconciler.domain.drift import ObservedMark, items_summary, mark_of
from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.domain.model import Observed, Plan, SubscriptionStatus
from reconciler.domain.planner import PlanResult
from reconciler.domain.pricing.credits import credit_possible
from reconciler.domain.pricing.replay import observed_versions
from reconciler.engine.invoices import read_invoiced
from reconciler.engine.passes import Pass
from reconciler.engine.views import credits_json, credits_of, value_view
from reconciler.logs import get_logger
from reconciler.openmeter.client import OpenMeterClient
from reconciler.store.types import ChangeRecord

log = get_logger("reconciler.engine")


def record_decision(
    p: Pass, change: ChangeRecord, result: PlanResult, observed: Observed, now: datetime
) -> ChangeRecord:
    p.note(
        change,
        "plan",
        now,
        data={
            "state": result.state.value,
            "direction": result.direction.value,
            "timing": result.timing.value if result.timing else None,
            "rule": result.rule,
            "reason": result.reason,
            "from_plan": str(result.from_plan) if result.from_plan else None,
            "actions": [a.request().as_dict() for a in result.actions],
            "warnings": list(result.warnings),
            "refusal": result.refusal,
        },
    )
    if change.direction is not None or not result.actions:
        return change
    details = dict(change.details)
    details["entitlements_before"] = {k: value_view(v) for k, v in sorted(observed.values.items())}
    if result.warnings:
        details["warnings"] = list(result.warnings)
    return p.stage(
        change,
        direction=result.direction,
        timing=result.timing,
        rule=result.rule,
        effective_at=result.effective_at,
        converges_at=result.converges_at,
        details=details,
    )


def drift_kind(observed: Observed, target: Plan) -> str:
    """``items`` when the customer is still on the target plan (its items moved), else
    ``subscription``."""
    cur = observed.current
    on_plan = (
        cur is not None
        and cur.plan is not None
        and (cur.plan.key, cur.plan.version) == (target.key, target.version)
        and cur.status is SubscriptionStatus.ACTIVE
        and observed.successor is None
    )
    return "items" if on_plan else "subscription"


def drift_found(
    p: Pass,
    change: ChangeRecord,
    observed: Observed,
    target: Plan,
    result: PlanResult,
    now: datetime,
) -> None:
    """Audit what a converged change found drifted (the current items against the mark stored
    at convergence)."""
    cur = observed.current
    kind = drift_kind(observed, target)
    stored = ObservedMark.decode(change.observed_mark)
    p.note(
        change,
        "drift_found",
        now,
        detail=f"{kind} drifted from {target.ref} after convergence: {result.reason}",
        data={
            "kind": kind,
            "found": items_summary(cur, now),
            "expected_plan": str(target.ref),
            "mark_at_convergence": stored.encode() if stored else None,
            "mark_now": mark_of(cur).encode(),
            "actions": [a.request().as_dict() for a in result.actions],
        },
    )
    log.warning("drift_found", kind=kind, found=items_summary(cur, now))


def reads_invoices(observed: Observed) -> bool:
    """Whether ``credit_due`` reads the invoices for ``observed`` (a call to OpenMeter)."""
    sub = observed.current
    return sub is not None and credit_possible(sub, observed_versions(sub))


async def credit_due(client: OpenMeterClient, observed: Observed) -> dict[str, Any] | None:
    """The ``credit_due`` document of the current subscription (invoices read only when an
    in-advance fee version ended before the subscription: otherwise nothing can be owed)."""
    sub = observed.current
    if sub is None:
        return None
    versions = observed_versions(sub)
    if not credit_possible(sub, versions):
        return credits_json(credits_of(sub, versions, Invoiced(InvoicesState.NOT_NEEDED)))
    invoiced = await read_invoiced(client, observed.customer_id, [sub.id])
    return credits_json(credits_of(sub, versions, invoiced))


async def execute(client: OpenMeterClient, action: Action) -> Any:
    """Send ``action``; returns OpenMeter's parsed response (``{"status": 204}`` for a delete)."""
    call = action.request()
    body = dict(call.body or {})
    if isinstance(action, EditItems):
        return await client.edit_subscription(
            action.subscription_id, body["customizations"], body["timing"]
        )
    if isinstance(action, ScheduleChange):
        return await client.change_subscription(action.subscription_id, body)
    if isinstance(action, DeleteScheduled):
        await client.delete_subscription(action.subscription_id)
        return {"status": 204}
    if isinstance(action, Unschedule):
        return await client.unschedule_cancelation(action.subscription_id)
    if isinstance(action, CreateSubscription):
        return await client.create_subscription(body)
    raise TypeError(action)  # pragma: no cover - exhaustive union
