"""Actions the planner asks for, and their exact OpenMeter requests.

Each action is one OpenMeter mutation. The engine executes the first action of a plan, then
re-observes and re-plans (level-triggered), so an action never has to be "remembered".
``request()`` renders the HTTP call — the same rendering serves execution and previews.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.domain.model import (
    META_CHANGE,
    META_PLAN,
    META_VERSION,
    PlanRef,
    RateCard,
    Timing,
)


@dataclass(frozen=True, slots=True)
class HttpCall:
    method: str
    path: str
    body: Mapping[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "body": self.body}


def provenance(plan: PlanRef, change_id: str) -> dict[str, str]:
    return {META_PLAN: plan.key, META_VERSION: str(plan.version), META_CHANGE: change_id}


def tagged_rate_card(card: RateCard, tags: Mapping[str, str]) -> dict[str, Any]:
    """The plan's rate card JSON with the reconciler's provenance tags added.

    Tags go into ``entitlementTemplate.metadata`` because that is the only rate-card metadata
    OpenMeter carries onto the subscription (as the entitlement's ``metadata``). Cards without an
    entitlement template are sent unchanged.
    """
    body = copy.deepcopy(dict(card.raw))
    tpl = body.get("entitlementTemplate")
    if isinstance(tpl, dict):
        md = dict(tpl.get("metadata") or {})
        md.update(tags)
        tpl["metadata"] = md
    return body


@dataclass(frozen=True, slots=True)
class EditItems:
    """PATCH the subscription in place: items change now, the phase (and so usage) is kept."""

    subscription_id: str
    phase_key: str
    add: tuple[RateCard, ...]
    remove: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    unschedule_edits: bool = False
    timing: Timing = Timing.IMMEDIATE
    kind: str = "edit_items"

    def request(self) -> HttpCall:
        ops: list[dict[str, Any]] = []
        if self.unschedule_edits:
            ops.append({"op": "unschedule_edit"})
        ops.extend(
            {"op": "remove_item", "phaseKey": self.phase_key, "itemKey": key} for key in self.remove
        )
        ops.extend(
            {
                "op": "add_item",
                "phaseKey": self.phase_key,
                "rateCard": tagged_rate_card(c, self.tags),
            }
            for c in self.add
        )
        return HttpCall(
            "PATCH",
            f"/api/v1/subscriptions/{self.subscription_id}",
            {"timing": self.timing.value, "customizations": ops},
        )

    def describe(self) -> str:
        parts = []
        if self.add:
            parts.append("add " + ", ".join(c.key for c in self.add))
        if self.remove:
            parts.append("remove " + ", ".join(self.remove))
        return f"edit subscription {self.subscription_id} in place ({'; '.join(parts)})"


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """POST change: the subscription ends at the next billing boundary, the target starts there."""

    subscription_id: str
    plan: PlanRef
    starting_phase: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    timing: Timing = Timing.NEXT_BILLING_CYCLE
    kind: str = "schedule_change"

    def request(self) -> HttpCall:
        body: dict[str, Any] = {
            "timing": self.timing.value,
            "plan": {"key": self.plan.key, "version": self.plan.version},
        }
        if self.starting_phase:
            body["startingPhase"] = self.starting_phase
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        return HttpCall("POST", f"/api/v1/subscriptions/{self.subscription_id}/change", body)

    def describe(self) -> str:
        when = "now" if self.timing is Timing.IMMEDIATE else "at the next billing cycle"
        return f"schedule change of {self.subscription_id} to {self.plan} {when}"


@dataclass(frozen=True, slots=True)
class DeleteScheduled:
    """DELETE a scheduled successor (the only state in which OpenMeter allows a delete)."""

    subscription_id: str
    plan: PlanRef | None
    kind: str = "delete_scheduled"

    def request(self) -> HttpCall:
        return HttpCall("DELETE", f"/api/v1/subscriptions/{self.subscription_id}", None)

    def describe(self) -> str:
        return f"delete scheduled subscription {self.subscription_id} ({self.plan or 'custom'})"


@dataclass(frozen=True, slots=True)
class Unschedule:
    """POST unschedule-cancelation: a canceled subscription becomes active (editable) again."""

    subscription_id: str
    kind: str = "unschedule_cancelation"

    def request(self) -> HttpCall:
        return HttpCall(
            "POST", f"/api/v1/subscriptions/{self.subscription_id}/unschedule-cancelation", None
        )

    def describe(self) -> str:
        return f"unschedule the cancelation of {self.subscription_id}"


@dataclass(frozen=True, slots=True)
class CreateSubscription:
    customer_id: str
    plan: PlanRef
    metadata: Mapping[str, str] = field(default_factory=dict)
    kind: str = "create_subscription"

    def request(self) -> HttpCall:
        body: dict[str, Any] = {
            "customerId": self.customer_id,
            "plan": {"key": self.plan.key, "version": self.plan.version},
            "timing": "immediate",
        }
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        return HttpCall("POST", "/api/v1/subscriptions", body)

    def describe(self) -> str:
        return f"create a subscription on {self.plan} now"


Action = EditItems | ScheduleChange | DeleteScheduled | Unschedule | CreateSubscription
