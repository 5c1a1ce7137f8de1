"""The item versions a quote prices: the period's as observed, and as they would be after a
planned change. Pure; the engine's quoter only adds the meter values.

* :func:`split_by_cadence`: one entry per item version and service period (items billed more
  often than the subscription have several per period; less often, none in a period's quote).
* :func:`with_invoiced`: what OpenMeter already issued stays what the customer pays.
* :func:`after_change`: the planner's actions replayed on the observed versions — an immediate
  edit ends the replaced versions at ``at`` and starts the target's rate cards there; a change
  scheduled for the next billing cycle leaves the items alone but sets the subscription's end
  (``activeTo``) to the boundary, which OpenMeter beta.227's ``shouldProrate`` takes into account.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from reconciler.domain.actions import EditItems, ScheduleChange, Unschedule
from reconciler.domain.invoices import Invoiced, InvoicesState, invoiced_for
from reconciler.domain.model import ObservedSubscription
from reconciler.domain.periods import parse_duration, period_at
from reconciler.domain.planner import PlanResult, State
from reconciler.domain.pricing.quote import ItemVersion
from reconciler.domain.pricing.replay import replay_edit
from reconciler.domain.timefmt import iso_z

__all__ = ["after_change", "needs_usage", "split_by_cadence", "with_invoiced"]

Window = tuple[datetime, datetime]


def needs_usage(item: ItemVersion) -> bool:
    """A usage-based price: its quantity is the meter's value over the service window."""
    return item.price is not None and item.price.get("type") != "flat"


def split_by_cadence(
    sub: ObservedSubscription, period: Window, items: Iterable[ItemVersion], notes: list[str]
) -> list[ItemVersion]:
    """One entry per item version and service period.

    Items billed on the subscription's cadence have one service period in the quoted period.
    A shorter cadence (``P1W`` items on a ``P1M`` subscription) has several, each with its own
    full service period. A longer one (``P1Y`` on ``P1M``) is invoiced per its own period,
    outside a per-period quote, and is left out with a note.
    """
    sub_cadence = parse_duration(sub.billing_cadence)
    out: list[ItemVersion] = []
    for item in items:
        if item.billing_cadence is None or item.billing_cadence == sub.billing_cadence:
            out.append(item)
            continue
        cadence = parse_duration(item.billing_cadence)
        if cadence.approx_seconds() > sub_cadence.approx_seconds():
            notes.append(
                f"{item.key}: billed every {item.billing_cadence}, longer than the "
                f"subscription's {sub.billing_cadence}; not part of this period's quote"
            )
            continue
        start = max(period[0], item.active_from)
        if item.active_to is not None and item.active_to <= start:
            continue
        cur = period_at(sub.billing_anchor, cadence, start)
        while cur.start < period[1] and (item.active_to is None or cur.start < item.active_to):
            out.append(replace(item, full_service_period=(cur.start, cur.end)))
            cur = period_at(sub.billing_anchor, cadence, cur.end)
    return out


def with_invoiced(
    versions: Sequence[ItemVersion], invoiced: Invoiced | None, period: Window
) -> list[ItemVersion]:
    """``versions`` with ``invoiced_amount`` set where OpenMeter already issued the version's
    in-advance fee for a service period starting in ``period`` (an issued invoice cannot change,
    so that is what the customer pays for it)."""
    if invoiced is None or invoiced.state is not InvoicesState.READ:
        return list(versions)
    issued = [
        ln
        for ln in invoiced.lines
        if ln.immutable
        and ln.price_type == "flat"
        and (ln.payment_term or "in_advance") == "in_advance"
        and period[0] <= ln.period[0] < period[1]
    ]
    out: list[ItemVersion] = []
    for v in versions:
        amounts = [
            ln.amount
            for ln in issued
            if invoiced_for(
                ln.item_id, ln.name, ln.period[0], v.item_id, v.name, v.active_from, v.active_to
            )
        ]
        out.append(replace(v, invoiced_amount=sum(amounts, Decimal(0))) if amounts else v)
    return out


def after_change(
    sub: ObservedSubscription,
    period: Window,
    observed_now: Sequence[ItemVersion],
    result: PlanResult,
    at: datetime,
    notes: list[str],
) -> tuple[list[ItemVersion], datetime | None] | None:
    """Item versions and subscription end of the current subscription after ``result``
    (``None``: the change is refused, a note says why)."""
    if result.state is State.REFUSED:
        notes.append(f"the change is refused: {result.refusal or result.reason}")
        return None
    versions = list(observed_now)
    sub_end = sub.active_to
    for action in result.actions:
        if isinstance(action, Unschedule):
            sub_end = None
        elif isinstance(action, EditItems):
            versions = replay_edit(versions, action, sub, at)
        elif isinstance(action, ScheduleChange):
            sub_end = result.converges_at or period[1]
    if result.timing is not None and result.timing.value == "next_billing_cycle":
        notes.append(
            f"the change takes effect at the next billing cycle ({iso_z(result.effective_at)}); "
            "this period's items are unchanged"
        )
    return versions, sub_end
