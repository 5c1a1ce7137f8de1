"""A subscription as OpenMeter shows it once its end is set: the cadences cut at the end.

A scheduled change ends the current subscription at the boundary (``ChangeToPlan`` cancels it
there, then creates the successor: ``workflow/service/subscription.go``). OpenMeter's change
response carries that subscription only as a plain ``Subscription`` (no phases); its phases
and items are those read after our edit, with every cadence cut at the new end, as
``GetPhaseCadence`` / ``SubscriptionItemSpec.GetCadence`` compute them (a phase ends at the
next phase's start or at ``activeTo``, whichever is first; an item at its own end or its
phase's). The engine plans on this view after its own change instead of reading the
subscription again, and reads it for real before anything would be sent
(docs/ENGINE.md, "After our own mutation").

What is not predicted is refused (None): a phase or an item version that starts at or after
the end (OpenMeter keeps it with an empty cadence), and an end before an existing one. The
entitlements keep their ids, which OpenMeter replaces when it re-creates an entitlement whose
cadence changed; nothing that plans on this view uses them (values are read by feature key).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from reconciler.domain.model import ObservedItem, ObservedPhase, ObservedSubscription

__all__ = ["ended_at"]


def _cut(end: datetime, own: datetime | None) -> datetime:
    return end if own is None or own > end else own


def _item(item: ObservedItem, end: datetime) -> ObservedItem | None:
    if item.active_from >= end:
        return None
    ent = item.entitlement
    if ent is not None:
        ent = replace(ent, active_to=_cut(end, ent.active_to))
    return replace(item, active_to=_cut(end, item.active_to), entitlement=ent)


def _phase(phase: ObservedPhase, end: datetime) -> ObservedPhase | None:
    if phase.active_from >= end:
        return None
    items: list[ObservedItem] = []
    for item in phase.items:
        cut = _item(item, end)
        if cut is None:
            return None
        items.append(cut)
    timelines: dict[str, tuple[ObservedItem, ...]] = {}
    for key, versions in phase.timelines.items():
        kept: list[ObservedItem] = []
        for version in versions:
            cut = _item(version, end)
            if cut is None:
                return None
            kept.append(cut)
        timelines[key] = tuple(kept)
    return replace(
        phase, active_to=_cut(end, phase.active_to), items=tuple(items), timelines=timelines
    )


def ended_at(sub: ObservedSubscription, end: datetime) -> ObservedSubscription | None:
    """``sub``'s phases and items as OpenMeter shows them once the subscription ends at
    ``end``; None where that view is not predicted (see the module's docstring)."""
    if end <= sub.active_from or (sub.active_to is not None and sub.active_to < end):
        return None
    phases: list[ObservedPhase] = []
    for phase in sub.phases:
        cut = _phase(phase, end)
        if cut is None:
            return None
        phases.append(cut)
    period = sub.current_period
    if period is not None and period[1] > end:
        period = (period[0], end)
    return replace(sub, active_to=end, phases=tuple(phases), current_period=period)
