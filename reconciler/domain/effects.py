"""What a planned change does to the entitlements, as the recipe guarantees it.

An immediate edit keeps the usage of the current period (balance = new allowance − usage); a
change at the next billing cycle leaves today's values alone and starts the target's allowance
fresh at the boundary. Previews and ``reconciler change`` show these before anything is sent;
the usage proof then checks them against what OpenMeter reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from reconciler.domain.model import EntitlementValue, Observed, Plan, Timing
from reconciler.domain.planner import PlanResult

__all__ = ["EntitlementEffect", "entitlement_effects"]


@dataclass(frozen=True, slots=True)
class EntitlementEffect:
    """One metered feature: its value now, right after the change, and at the boundary where
    the plan record converges (``has_boundary``: only when that is later than now)."""

    before: EntitlementValue | None
    after: EntitlementValue | None
    at_boundary: EntitlementValue | None = None
    has_boundary: bool = False


def _allowances(target: Plan, phase_key: str | None) -> dict[str, Decimal]:
    phase = target.phase(phase_key) if phase_key else None
    phase = phase or target.phases[0]
    out: dict[str, Decimal] = {}
    for card in phase.rate_cards:
        ent = card.entitlement
        if card.feature_key and ent and ent.type == "metered" and ent.issue_after_reset is not None:
            out[card.feature_key] = ent.issue_after_reset
    return out


def _granted(allowance: Decimal | None, usage: Decimal) -> EntitlementValue:
    if allowance is None:
        return EntitlementValue(has_access=False)
    return EntitlementValue(
        has_access=allowance - usage > 0,
        balance=max(Decimal(0), allowance - usage),
        usage=usage,
        total_available_grant_amount=allowance,
    )


def entitlement_effects(
    observed: Observed, result: PlanResult, target: Plan, now: datetime
) -> dict[str, EntitlementEffect]:
    """Per metered feature of the current values and the target's allowances, sorted."""
    cur = observed.current
    phase = cur.phase_at(now) if cur else None
    allowances = _allowances(target, phase.key if phase else None)
    immediate = result.timing is Timing.IMMEDIATE and bool(result.actions)
    later = result.converges_at is not None and result.converges_at > now
    out: dict[str, EntitlementEffect] = {}
    for f in sorted(set(observed.values) | set(allowances)):
        before = observed.values.get(f)
        usage = before.usage if before and before.usage is not None else Decimal(0)
        allowance = allowances.get(f)
        if immediate or cur is None:
            after: EntitlementValue | None = _granted(
                allowance, usage if cur is not None else Decimal(0)
            )
        else:
            after = before
        boundary = _granted(allowance, Decimal(0)) if later and allowance is not None else None
        out[f] = EntitlementEffect(before, after, boundary, later)
    return out
