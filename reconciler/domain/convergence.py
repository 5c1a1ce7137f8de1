"""When the plan record may converge without changing what OpenMeter bills.

After an edit-based upgrade the subscription's ``plan`` still names the old plan; the reconciler
converges it by scheduling a ``change`` to the target plan at a billing boundary. That change
ends the current subscription there (``activeTo``), and OpenMeter beta.227 does not prorate a
flat fee whose service period ends at or after the subscription's end
(``openmeter/billing/worker/subscriptionsync/service/sync.go`` ``shouldProrate``: "We do not
prorate due to the subscription ending"). Scheduled at the end of the period in which the edit
started a new flat-fee version, the change turns that version's prorated fee into the full fee:
an upgrade on April 16 from a 150 to a 300 base fee bills 75 + 300 instead of 75 + 150.

:func:`plan_record_convergence` finds the first boundary at which the change does not alter
any flat fee's amount, and when to schedule it so that ``next_billing_cycle`` resolves to that
boundary (OpenMeter resolves ``next_billing_cycle`` to the end of the aligned billing period at
the time of the request, ``openmeter/subscription/timing.go``). Pure: time is an argument.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from reconciler.domain.model import ObservedSubscription
from reconciler.domain.periods import boundaries_after, parse_duration, period_at
from reconciler.domain.pricing.proration import (
    ProRatingConfig,
    prorated_flat_amount,
    should_prorate,
    truncate_to_second,
)
from reconciler.domain.pricing.quote import ItemVersion

__all__ = [
    "OPENMETER_RULE",
    "Convergence",
    "PlanRecordMode",
    "Suppression",
    "plan_record_convergence",
]

OPENMETER_RULE = (
    "OpenMeter beta.227 does not prorate a flat fee whose service period ends at or after the "
    "subscription's activeTo (billing/worker/subscriptionsync/service/sync.go shouldProrate)"
)
# How far to look for a safe boundary: a yearly fee started mid-year on a daily subscription
# needs up to two years of days.
MAX_CANDIDATES = 800
_EPSILON = timedelta(microseconds=1)


class PlanRecordMode(StrEnum):
    """The policy's ``plan_record`` setting."""

    BILLING_SAFE = "billing_safe"  # converge where the change does not alter any flat fee
    NEXT_BOUNDARY = "next_boundary"  # converge at the next boundary, whatever it costs


@dataclass(frozen=True, slots=True)
class Suppression:
    """A flat fee whose amount a change effective at ``boundary`` would alter."""

    item: str
    boundary: datetime
    service_period: tuple[datetime, datetime]
    prorated: Decimal  # the cut service period's fee, prorated as OpenMeter otherwise would
    billed: Decimal  # what it bills with the subscription ending at ``boundary``


@dataclass(frozen=True, slots=True)
class Convergence:
    """Where the plan record converges and why.

    ``at``: the boundary the scheduled change takes effect at. ``schedule_at``: the earliest
    time to send it (``None``: now), so that ``next_billing_cycle`` resolves to ``at``.
    ``deferred``: ``at`` is later than the next boundary. ``suppressed``: what scheduling at
    the next boundary would have done to the bill (empty when nothing).
    """

    at: datetime | None
    schedule_at: datetime | None
    deferred: bool
    reason: str
    suppressed: tuple[Suppression, ...] = ()

    def due(self, now: datetime) -> bool:
        """Whether the change may be scheduled at ``now``."""
        return self.schedule_at is None or self.schedule_at <= now


def _flat_amount(v: ItemVersion) -> Decimal | None:
    price = v.price
    if not price or price.get("type") != "flat":
        return None
    try:
        amount = Decimal(str(price.get("amount")))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() and amount != 0 else None


def _suppression(
    v: ItemVersion,
    amount: Decimal,
    sub: ObservedSubscription,
    config: ProRatingConfig,
    boundary: datetime,
) -> Suppression | None:
    """What ending the subscription at ``boundary`` does to ``v``'s last service period."""
    if v.billing_cadence is None:  # one-time fee: billed in full for its own window anyway
        return None
    if v.active_from >= boundary or (v.active_to is not None and v.active_to < boundary):
        return None  # not in the subscription at the boundary, or ended before it
    full = period_at(sub.billing_anchor, parse_duration(v.billing_cadence), boundary - _EPSILON)
    service = (max(v.active_from, full.start), boundary)
    end = truncate_to_second(boundary)
    # What the cut period costs if OpenMeter prorates it, and what it bills once the
    # subscription ends at the boundary.
    without, _ = prorated_flat_amount(
        amount,
        sub.currency,
        service=service,
        full_service=(full.start, full.end),
        prorate=should_prorate(config, price_type="flat", service_end=end, subscription_end=None),
    )
    with_change, _ = prorated_flat_amount(
        amount,
        sub.currency,
        service=service,
        full_service=(full.start, full.end),
        prorate=should_prorate(
            config, price_type="flat", service_end=end, subscription_end=boundary
        ),
    )
    if without == with_change:
        return None
    return Suppression(v.key, boundary, service, without, with_change)


def _candidates(sub: ObservedSubscription, first: datetime) -> Iterator[datetime]:
    """``first``, then every later time a change could take effect at: the billing boundaries
    and phase starts after it, up to the subscription's end, at most ``MAX_CANDIDATES``.

    Lazy: the caller stops at the first safe one, nearly always the first or the second, so an
    open-ended subscription does not pay for the 800 it could look at.
    """
    cadence = parse_duration(sub.billing_cadence)
    phase_starts = iter(sorted(p.active_from for p in sub.phases if p.active_from > first))
    phase = next(phase_starts, None)
    bounds = boundaries_after(sub.billing_anchor, cadence, first)
    bound = next(bounds)  # always the first billing boundary after the last candidate
    cur = first
    yield cur
    for _ in range(MAX_CANDIDATES - 1):
        if phase is not None and phase < bound:
            cur = phase
        else:
            cur, bound = bound, next(bounds)
        while phase is not None and phase <= cur:  # each time once, boundary or phase start
            phase = next(phase_starts, None)
        if sub.active_to is not None and cur > sub.active_to:
            return
        yield cur


def _at(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def plan_record_convergence(
    sub: ObservedSubscription,
    versions: Sequence[ItemVersion],
    *,
    first: datetime,
    mode: PlanRecordMode,
) -> Convergence:
    """Where to converge the plan record of ``sub``, whose item versions (after any edit the
    plan makes) are ``versions``; ``first`` is the next boundary, where a change scheduled now
    takes effect.

    ``next_boundary`` always converges at ``first``. ``billing_safe`` converges at the first
    candidate boundary where ending the subscription alters no flat fee's amount: proration off,
    no flat fee, or every flat-fee version covering its whole service period there (an edit
    made exactly on a boundary) converge at ``first`` as well.
    """
    if mode is PlanRecordMode.NEXT_BOUNDARY:
        return Convergence(first, None, False, "plan_record next_boundary: at the next boundary")
    if not sub.pro_rating_enabled:
        return Convergence(
            first, None, False, "at the next boundary: the subscription does not prorate"
        )
    flats = [(v, a) for v in versions if (a := _flat_amount(v)) is not None]
    if not flats:
        return Convergence(first, None, False, "at the next boundary: no flat fee is affected")
    config = ProRatingConfig(enabled=True)
    first_hits: tuple[Suppression, ...] = ()
    previous = first
    looked = 0
    for i, boundary in enumerate(_candidates(sub, first)):
        looked = i + 1
        hits = tuple(
            s for v, a in flats if (s := _suppression(v, a, sub, config, boundary)) is not None
        )
        if i == 0:
            first_hits = hits
        if hits:
            previous = boundary
            continue
        if i == 0:
            return Convergence(
                first,
                None,
                False,
                "at the next boundary: ending the subscription there bills every flat fee "
                "as it is billed now",
            )
        items = ", ".join(dict.fromkeys(s.item for s in first_hits))
        return Convergence(
            boundary,
            previous,
            True,
            f"deferred: scheduling at {_at(first)} would stop OpenMeter prorating {items}; "
            f"the change is scheduled at {_at(previous)} to converge at "
            f"{_at(boundary)}",
            first_hits,
        )
    items = ", ".join(dict.fromkeys(s.item for s in first_hits))
    return Convergence(
        first,
        None,
        False,
        f"at the next boundary: no boundary within {looked} periods keeps "
        f"OpenMeter prorating {items}",
        first_hits,
    )
