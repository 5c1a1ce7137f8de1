"""Subscriptions with add-ons: what the planner's edit becomes (pure).

OpenMeter v1.0.0-beta.227 refuses to edit a subscription that has add-ons
(``openmeter/subscription/workflow/service/subscription.go`` ``EditRunning`` → ``hasAddons`` in
``workflow/service/addon.go``: 403 ``subscription with addons cannot be edited``). The check
looks at every quantity the add-ons ever had (``subscription/addon/addon.go`` ``GetInstances``;
there is no delete route), so setting the quantity to 0 before the edit and back after does
not get past it: no sequence of calls edits such a subscription, and the usage-preserving
workaround (an in-place edit) is not available. What remains is ``POST …/change``
(``ChangeToPlan`` = cancel + create), which OpenMeter allows but which starts a new
subscription: its entitlements measure usage from its own start (the period's usage is reset)
and the add-ons stay behind on the old subscription.

The policy's ``addons`` setting chooses (``docs/POLICY.md``):

* ``refuse`` (default): the change is refused with the reason; nothing is sent.
* ``change_resets_usage``: the edit (and the boundary change that would follow it) becomes one
  immediate ``POST …/change`` to the target plan; the decision carries a warning that usage
  restarts and the add-ons are not carried over. No usage proof applies (none is promised).

Changes at the next billing cycle are not affected: a scheduled change is allowed and usage
restarts at the boundary anyway.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Any

from reconciler.domain.actions import DeleteScheduled, EditItems, ScheduleChange, Unschedule
from reconciler.domain.model import META_CHANGE, META_PLAN, META_VERSION, Observed, Plan, Timing


class AddonMode(StrEnum):
    REFUSE = "refuse"
    CHANGE_RESETS_USAGE = "change_resets_usage"


EDIT_FORBIDDEN = "subscription with addons cannot be edited"


def addons_matter(result: Any) -> bool:
    """Whether the planned actions include an in-place edit (then the add-ons must be read)."""
    return any(isinstance(a, EditItems) for a in getattr(result, "actions", ()))


def gate(result: Any, observed: Observed, target: Plan, mode: AddonMode, change_id: str) -> Any:
    """``result`` (a planner ``PlanResult``) as it must be for a subscription with add-ons.

    Unchanged unless the result edits and ``observed.addons`` is non-empty."""
    cur = observed.current
    if cur is None or not observed.addons or not addons_matter(result):
        return result
    names = ", ".join(observed.addons)
    why = (
        f"subscription {cur.id} has add-ons ({names}): OpenMeter refuses to edit a "
        f"subscription with add-ons (403 '{EDIT_FORBIDDEN}'), also after their quantity is set "
        "to 0, so the usage-preserving in-place edit is not possible; a plan change would "
        "reset this period's usage and leave the add-ons behind"
    )
    state_cls = type(result.state)
    if mode is AddonMode.REFUSE:
        return dataclasses.replace(
            result,
            state=state_cls("refused"),
            actions=(),
            effective_at=None,
            converges_at=None,
            refusal=why + " (policy addons: refuse; set addons: change_resets_usage to allow it)",
        )
    keep = tuple(a for a in result.actions if isinstance(a, DeleteScheduled | Unschedule))
    boundary = next((a for a in result.actions if isinstance(a, ScheduleChange)), None)
    now = observed.observed_at
    phase = cur.phase_at(now)
    starting = phase.key if phase is not None and len(target.phases) > 1 else None
    if boundary is not None:
        change = dataclasses.replace(boundary, timing=Timing.IMMEDIATE, starting_phase=starting)
    else:
        meta = {
            META_PLAN: target.key,
            META_VERSION: str(target.version),
            META_CHANGE: change_id,
        }
        change = ScheduleChange(
            cur.id, target.ref, starting_phase=starting, metadata=meta, timing=Timing.IMMEDIATE
        )
    return dataclasses.replace(
        result,
        actions=(*keep, change),
        timing=Timing.IMMEDIATE,
        effective_at=now,
        converges_at=now,
        warnings=(
            *result.warnings,
            why + " — policy addons: change_resets_usage: changing the plan now; usage restarts "
            "from 0 and the add-ons are not carried over",
        ),
    )


__all__ = ["EDIT_FORBIDDEN", "AddonMode", "addons_matter", "gate"]
