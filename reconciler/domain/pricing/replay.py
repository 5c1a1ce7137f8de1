"""Item versions of a subscription as OpenMeter would hold them, observed or after an edit.

Pure: the planner uses it to judge what a plan-record change would do to billing
(:mod:`reconciler.domain.convergence`), the quote to price a change before it is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from reconciler.domain.actions import EditItems
from reconciler.domain.model import ObservedSubscription, RateCard
from reconciler.domain.pricing.quote import ItemVersion

__all__ = ["card_version", "observed_versions", "replay_edit"]

Window = tuple[datetime, datetime]


def _overlaps(a_from: datetime, a_to: datetime | None, window: Window) -> bool:
    return a_from < window[1] and (a_to is None or a_to > window[0])


def observed_versions(sub: ObservedSubscription, window: Window | None = None) -> list[ItemVersion]:
    """Every version of every item (``itemTimelines``) of the phases overlapping ``window``
    (all phases without one)."""
    out: list[ItemVersion] = []
    for phase in sub.phases:
        if window is not None and not _overlaps(phase.active_from, phase.active_to, window):
            continue
        timelines = phase.timelines or {i.key: (i,) for i in phase.items}
        for versions in timelines.values():
            for idx, item in enumerate(versions):
                out.append(ItemVersion.from_observed(item, version=idx))
    return out


def card_version(card: RateCard, at: datetime, until: datetime | None, idx: int) -> ItemVersion:
    """The item version a rate card added at ``at`` becomes (until the phase ends)."""
    discounts = card.raw.get("discounts")
    return ItemVersion(
        key=card.key,
        name=card.name,
        active_from=at,
        active_to=until,
        price=card.price,
        billing_cadence=card.billing_cadence,
        feature_key=card.feature_key,
        discounts=discounts if isinstance(discounts, Mapping) else None,
        version=idx,
    )


def replay_edit(
    versions: Sequence[ItemVersion],
    edit: EditItems,
    sub: ObservedSubscription,
    at: datetime,
) -> list[ItemVersion]:
    """Item versions after ``edit`` takes effect at ``at`` (PATCH, ``timing: immediate``).

    ``add_item`` on an existing key closes the version active at ``at`` there and starts the new
    one; ``remove_item`` closes it; versions that would start later are dropped (the edit
    unschedules them first).
    """
    phase = next((p for p in sub.phases if p.key == edit.phase_key), None)
    phase_end = phase.active_to if phase is not None else None
    touched = set(edit.remove) | {c.key for c in edit.add}
    out: list[ItemVersion] = []
    counts: dict[str, int] = {}
    for v in versions:
        if v.key in touched or edit.unschedule_edits:
            if v.active_from >= at:
                continue  # a later version: unscheduled by the edit
            if v.key in touched and (v.active_to is None or v.active_to > at):
                v = replace(v, active_to=at)
        out.append(v)
        counts[v.key] = max(counts.get(v.key, 0), (v.version or 0) + 1)
    for card in edit.add:
        out.append(card_version(card, at, phase_end, counts.get(card.key, 0)))
    return out
