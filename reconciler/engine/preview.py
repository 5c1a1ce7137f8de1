"""Previews (dry runs) and status reports: what a change would do, and where a customer stands.

The preview is the planner's full action list rendered as OpenMeter requests, plus the
entitlement values before and after as the recipe guarantees them: an immediate edit keeps the
usage of the current period (balance = new allowance − usage), a change at the next billing
cycle leaves today's values alone and starts the target's allowance fresh at the boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from reconciler.domain.model import EntitlementValue, Observed, ObservedSubscription, Plan, Timing
from reconciler.domain.planner import PlanResult, effective_plan, items_match
from reconciler.domain.timefmt import iso_z


def _num(d: Decimal | None) -> int | str | None:
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else str(d)


def value_view(v: EntitlementValue | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "usage": _num(v.usage),
        "balance": _num(v.balance),
        "total_available_grant_amount": _num(v.total_available_grant_amount),
        "has_access": v.has_access,
    }


def _allowances(target: Plan, phase_key: str | None) -> dict[str, Decimal]:
    phase = target.phase(phase_key) if phase_key else None
    phase = phase or target.phases[0]
    out: dict[str, Decimal] = {}
    for card in phase.rate_cards:
        ent = card.entitlement
        if card.feature_key and ent and ent.type == "metered" and ent.issue_after_reset is not None:
            out[card.feature_key] = ent.issue_after_reset
    return out


def entitlement_effects(
    observed: Observed, result: PlanResult, target: Plan, now: datetime
) -> dict[str, dict[str, Any]]:
    cur = observed.current
    phase = cur.phase_at(now) if cur else None
    allowances = _allowances(target, phase.key if phase else None)
    features = sorted(set(observed.values) | set(allowances))
    immediate = result.timing is Timing.IMMEDIATE and bool(result.actions)
    out: dict[str, dict[str, Any]] = {}
    for f in features:
        before = observed.values.get(f)
        usage = before.usage if before and before.usage is not None else Decimal(0)
        allowance = allowances.get(f)
        if immediate or cur is None:
            after: dict[str, Any] | None = (
                {
                    "usage": _num(usage if cur is not None else Decimal(0)),
                    "balance": _num(max(Decimal(0), allowance - usage)),
                    "total_available_grant_amount": _num(allowance),
                    "has_access": allowance - usage > 0,
                }
                if allowance is not None
                else {
                    "usage": None,
                    "balance": None,
                    "total_available_grant_amount": None,
                    "has_access": False,
                }
            )
        else:
            after = value_view(before)
        entry: dict[str, Any] = {"before": value_view(before), "after": after}
        if result.converges_at is not None and result.converges_at > now:
            entry["at_boundary"] = (
                {
                    "usage": 0,
                    "balance": _num(allowance),
                    "total_available_grant_amount": _num(allowance),
                    "has_access": allowance > 0,
                }
                if allowance is not None
                else None
            )
        out[f] = entry
    return out


def change_summary(result: PlanResult, target: Plan) -> dict[str, Any]:
    """What a planned change is, as the preview and the quote both report it: the target, the
    plan it comes from, the planner's state, direction and timing, and when it takes effect and
    converges."""
    return {
        "target": {"key": target.key, "version": target.version},
        "from_plan": str(result.from_plan) if result.from_plan else None,
        "state": result.state.value,
        "direction": result.direction.value,
        "timing": result.timing.value if result.timing else None,
        "effective_at": iso_z(result.effective_at),
        "converges_at": iso_z(result.converges_at),
        "convergence": convergence_view(result),
    }


def preview_document(
    observed: Observed,
    result: PlanResult,
    target: Plan,
    now: datetime,
) -> dict[str, Any]:
    return {
        "customer": observed.customer_key or observed.customer_id,
        "customer_id": observed.customer_id,
        **change_summary(result, target),
        "rule": result.rule,
        "reason": result.reason,
        "refusal": result.refusal,
        "actions": [a.request().as_dict() for a in result.actions],
        "entitlements": entitlement_effects(observed, result, target, now),
        "warnings": list(result.warnings),
    }


def convergence_view(result: PlanResult) -> dict[str, Any] | None:
    """How the plan record converges: when, whether deferred for billing, and why."""
    c = result.convergence
    if c is None:
        return None
    return {
        "converges_at": iso_z(c.at),
        "schedule_at": iso_z(c.schedule_at),
        "deferred": c.deferred,
        "reason": c.reason,
        "suppressed": [
            {
                "item": x.item,
                "boundary": iso_z(x.boundary),
                "service_period": {
                    "from": iso_z(x.service_period[0]),
                    "to": iso_z(x.service_period[1]),
                },
                "prorated": str(x.prorated),
                "billed_if_scheduled": str(x.billed),
            }
            for x in c.suppressed
        ],
    }


def subscription_view(sub: ObservedSubscription | None, now: datetime) -> dict[str, Any] | None:
    if sub is None:
        return None
    phase = sub.phase_at(now)
    eff = effective_plan(sub, phase) if phase else sub.plan
    return {
        "id": sub.id,
        "status": sub.status.value,
        "plan": str(sub.plan) if sub.plan else None,
        "effective_plan": str(eff) if eff else None,
        "active_from": iso_z(sub.active_from),
        "active_to": iso_z(sub.active_to),
        "current_period": (
            {"from": iso_z(sub.current_period[0]), "to": iso_z(sub.current_period[1])}
            if sub.current_period
            else None
        ),
        "phase": phase.key if phase else None,
        "items": [
            {
                "key": i.key,
                "feature_key": i.feature_key,
                "allowance": _num(i.entitlement.template.issue_after_reset)
                if i.entitlement
                else None,
                "entitlement_id": i.entitlement.id if i.entitlement else None,
                "tags": dict(i.provenance),
            }
            for i in (phase.items if phase else ())
        ],
    }


def matches_plan(sub: ObservedSubscription, plan: Plan, now: datetime) -> bool:
    phase = sub.phase_at(now)
    target_phase = plan.phase(phase.key) if phase else None
    return bool(phase and target_phase and items_match(phase, target_phase))


def values_view(values: Mapping[str, EntitlementValue]) -> dict[str, Any]:
    return {k: value_view(v) for k, v in sorted(values.items())}
