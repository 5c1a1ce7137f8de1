"""Quotes: the expected charges of a customer's current billing period, line by line.

The money maths is :mod:`reconciler.domain.pricing` (OpenMeter beta.227's own rules; see
docs/PRICING.md). This module only gathers its inputs from OpenMeter:

* the subscription as OpenMeter shows it — every version of every item
  (``itemTimelines``), the aligned billing period (``alignment.currentAlignedBillingPeriod``),
  the billing anchor and cadence, ``proRatingConfig`` and ``activeTo``;
* for each usage-priced item version, the meter's value over exactly the window OpenMeter would
  bill (``service_window``: clipped to the period and the version, truncated to seconds), via
  ``GET /api/v1/meters/{slug}/query?from&to&filterCustomerId`` (feature → meter slug).

With a target plan, the planner decides what the change would do at ``at`` (the same call the
engine makes), and the change is replayed on the observed item timelines: an immediate edit
ends the replaced versions at ``at`` and starts the target's rate cards there (so lines split and
tier ladders restart); a change scheduled for the next billing cycle leaves this period's items
alone but sets the subscription's ``activeTo`` to the boundary, which OpenMeter beta.227 takes
into account when deciding whether to prorate (``shouldProrate``).

Usage is "to date": the meter is read up to now, nothing is forecast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from reconciler.domain.actions import EditItems, ScheduleChange, Unschedule
from reconciler.domain.invoices import Invoiced, InvoicesState, invoiced_for
from reconciler.domain.model import (
    Desired,
    Observed,
    ObservedSubscription,
    Plan,
)
from reconciler.domain.periods import parse_duration, period_at
from reconciler.domain.planner import PlanResult, State, plan
from reconciler.domain.pricing import (
    ItemVersion,
    PriceError,
    ProRatingConfig,
    Quote,
    QuoteDifference,
    QuoteRequest,
    UnknownCurrencyError,
    build_quote,
    quote_difference,
    service_window,
)
from reconciler.domain.pricing.replay import observed_versions, replay_edit
from reconciler.domain.timefmt import iso_z
from reconciler.engine.invoices import credit_due_view, read_invoiced
from reconciler.engine.preview import change_summary
from reconciler.openmeter.client import OpenMeterClient

if TYPE_CHECKING:
    from reconciler.engine.engine import Engine

__all__ = ["QuoteError", "Quoter", "charges_document", "parse_at", "render_quote"]

Window = tuple[datetime, datetime]
METER_CONCURRENCY = 8


class QuoteError(ValueError):
    """The quote cannot be made (no subscription, ``at`` outside the period, bad price)."""


def parse_at(value: str | None) -> datetime | None:
    """``--at``: an RFC 3339 time with a zone (``2026-03-20T12:00:00Z``) → aware UTC datetime."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--at {value!r} is not an RFC 3339 time; use e.g. 2026-03-20T12:00:00Z"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(
            f"--at {value!r} has no time zone; add Z or an offset, e.g. 2026-03-20T12:00:00Z"
        )
    return parsed.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Item versions of a subscription in a period


def _split_by_cadence(
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


# ---------------------------------------------------------------------------------------------
# Meter usage


class _Usage:
    """Meter values per (feature, window) for one customer, cached for one quote."""

    def __init__(self, client: OpenMeterClient, customer_id: str) -> None:
        self.client = client
        self.customer_id = customer_id
        self._slugs: dict[str, str | None] = {}
        self._values: dict[tuple[str, datetime, datetime], Decimal] = {}
        self._sem = asyncio.Semaphore(METER_CONCURRENCY)
        self.notes: list[str] = []
        self.queries = 0

    async def slug(self, feature_key: str) -> str | None:
        if feature_key not in self._slugs:
            feature = await self.client.get_feature(feature_key)
            self._slugs[feature_key] = feature.meter_slug
            if feature.meter_group_by_filters:
                self.notes.append(
                    f"feature {feature_key} filters its meter by {feature.meter_group_by_filters};"
                    " the quote reads the whole meter for the customer"
                )
            if not feature.meter_slug:
                self.notes.append(f"feature {feature_key} has no meter: usage taken as 0")
        return self._slugs[feature_key]

    async def value(self, feature_key: str, window: Window) -> Decimal:
        slug = await self.slug(feature_key)
        if slug is None:
            return Decimal(0)
        key = (slug, *window)
        if key not in self._values:
            async with self._sem:
                result = await self.client.query_meter(
                    slug, window[0], window[1], filter_customer_id=self.customer_id
                )
            self.queries += 1
            self._values[key] = sum((row.value for row in result.data), Decimal(0))
        return self._values[key]


def _needs_usage(item: ItemVersion) -> bool:
    return item.price is not None and item.price.get("type") != "flat"


async def _with_quantities(request: QuoteRequest, usage: _Usage) -> QuoteRequest:
    async def fill(item: ItemVersion) -> ItemVersion:
        if not _needs_usage(item):
            return item
        window = service_window(request, item)
        if window is None or window[1] <= window[0]:
            return item  # no line (build_quote says why)
        if item.feature_key is None:
            raise QuoteError(f"item {item.key}: a usage price without a feature cannot be metered")
        return replace(item, quantity=await usage.value(item.feature_key, window))

    items = await asyncio.gather(*(fill(i) for i in request.items))
    return replace(request, items=tuple(items))


# ---------------------------------------------------------------------------------------------
# Rendering to JSON


def _s(d: Decimal | None) -> str | None:
    return None if d is None else format(d, "f")


def quote_json(q: Quote) -> dict[str, Any]:
    return {
        "total": _s(q.total),
        "totals_by_currency": {c: _s(v) for c, v in q.totals_by_currency.items()},
        "lines": [
            {
                "key": ln.key,
                "name": ln.name,
                "version": ln.version,
                "feature_key": ln.feature_key,
                "period": {"from": iso_z(ln.period_from), "to": iso_z(ln.period_to)},
                "price_type": ln.price_type,
                "mode": ln.mode,
                "payment_term": ln.payment_term,
                "quantity": _s(ln.quantity),
                "billed_quantity": _s(ln.billed_quantity),
                "proration": _s(ln.proration.normalize()) if ln.proration is not None else None,
                "amount": _s(ln.amount),
                "breakdown": [
                    {
                        "name": c.name,
                        "reference": c.reference,
                        "tier": c.tier,
                        "quantity": _s(c.quantity),
                        "unit_amount": _s(c.unit_amount),
                        "amount": _s(c.amount),
                        "discount": _s(c.discount),
                        "total": _s(c.total),
                    }
                    for c in ln.breakdown
                ],
                "notes": list(ln.notes),
            }
            for ln in q.lines
        ],
        "skipped": list(q.skipped),
    }


def difference_json(d: QuoteDifference) -> dict[str, Any]:
    return {
        "total": _s(d.total),
        "by_item": {k: _s(v) for k, v in sorted(d.by_item.items())},
        "lines": [
            {
                "key": ln.key,
                "name": ln.name,
                "period": {"from": iso_z(ln.period_from), "to": iso_z(ln.period_to)},
                "before": _s(ln.before.amount) if ln.before else None,
                "after": _s(ln.after.amount) if ln.after else None,
                "delta": _s(ln.delta),
            }
            for ln in d.lines
        ],
    }


# ---------------------------------------------------------------------------------------------
# The quoter


@dataclass(frozen=True, slots=True)
class Charges:
    period: Window
    currency: str
    current: Quote
    with_change: Quote | None
    difference: QuoteDifference | None
    notes: tuple[str, ...]
    versions_after: tuple[ItemVersion, ...] = ()  # the item versions once the change is made


class Quoter:
    """``Quoter(engine).quote(customer, plan_key=..., at=...)`` → the quote document (JSON)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def quote(
        self,
        customer: str,
        *,
        plan_key: str | None = None,
        plan_version: int | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        e = self.engine
        now = await e.clock.now()
        if at is not None and (at.tzinfo is None or at.utcoffset() is None):
            raise QuoteError("at must be timezone-aware")
        when = at or now
        target = await e.catalog.get(plan_key, plan_version) if plan_key else None
        observed = await e.observer.observe(customer, now, values=target is not None)
        result = None
        if target is not None:
            desired = Desired("quote", target.key, target.version, when)
            result = plan(observed, desired, target, e.policy, when)
        sub = observed.current
        invoiced = (
            await read_invoiced(e.client, observed.customer_id, [sub.id])
            if sub is not None
            else Invoiced(InvoicesState.NONE)
        )
        charges = await self.charges(observed, result, target, when, now=now, invoiced=invoiced)
        assert sub is not None  # charges() raises without one
        doc: dict[str, Any] = {
            "customer": observed.customer_key or observed.customer_id,
            "customer_id": observed.customer_id,
            "subscription_id": sub.id,
            "plan": str(sub.plan) if sub.plan else None,
            "as_of": iso_z(now),
            "at": iso_z(when),
            "change": _change_json(result, target) if target is not None else None,
        }
        doc.update(charges_document(charges))
        doc["invoices"] = invoiced.state.value
        doc["credit_due"] = credit_due_view(sub, charges.versions_after, invoiced)
        return doc

    async def charges(
        self,
        observed: Observed,
        result: PlanResult | None,
        target: Plan | None,
        at: datetime,
        *,
        now: datetime | None = None,
        invoiced: Invoiced | None = None,
    ) -> Charges:
        """Quote the current period, and if ``result`` is given, the period after its actions.

        ``at`` is when the change takes effect (for a preview: now). Raises :class:`QuoteError`.
        """
        sub = observed.current
        if sub is None:
            raise QuoteError(
                f"customer {observed.customer_key or observed.customer_id} has no active "
                "subscription: nothing to quote"
            )
        now = now or observed.observed_at
        period = sub.current_period
        if period is None:
            raise QuoteError(f"subscription {sub.id} has no current billing period")
        if not period[0] <= at < period[1]:
            raise QuoteError(
                f"at {iso_z(at)} is outside the current billing period "
                f"[{iso_z(period[0])}, {iso_z(period[1])})"
            )
        notes: list[str] = []
        if at < now and result is not None:
            notes.append(
                f"the change is quoted as if made at {iso_z(at)}, before now ({iso_z(now)}); "
                "a real change takes effect when it is made"
            )
        full = period_at(sub.billing_anchor, parse_duration(sub.billing_cadence), period[0])
        usage = _Usage(self.engine.client, observed.customer_id)
        pro_rating = ProRatingConfig(enabled=sub.pro_rating_enabled)
        observed_now = with_invoiced(observed_versions(sub, period), invoiced, period)
        versions_after: list[ItemVersion] = list(observed_now)
        try:
            current = await self._quote(
                sub,
                period,
                (full.start, full.end),
                observed_now,
                sub.active_to,
                pro_rating,
                usage,
                notes,
            )
            with_change: Quote | None = None
            difference: QuoteDifference | None = None
            if result is not None:
                after = _after_change(sub, period, observed_now, result, at, notes)
                if after is not None:
                    versions, sub_end = after
                    versions_after = versions
                    with_change = await self._quote(
                        sub,
                        period,
                        (full.start, full.end),
                        versions,
                        sub_end,
                        pro_rating,
                        usage,
                        [],
                    )
                    difference = quote_difference(current, with_change)
        except (PriceError, UnknownCurrencyError) as exc:
            raise QuoteError(f"cannot price subscription {sub.id}: {exc}") from exc
        if any(_needs_usage(i) for i in observed_versions(sub, period)):
            notes.append(f"usage is metered up to now ({iso_z(now)}); future usage is not forecast")
        if (invoiced is None or invoiced.state is not InvoicesState.READ) and any(
            ln.payment_term == "in_advance" and ln.proration is not None
            for q in (current, with_change)
            if q is not None
            for ln in q.lines
        ):
            notes.append(
                "in-advance fees are shown as OpenMeter computes them while the period's invoice "
                "is still a draft; once that invoice is issued an amount already invoiced is not "
                "credited back"
            )
        if with_change is not None and any(
            n.startswith("not prorated: the subscription ends")
            for ln in with_change.lines
            for n in ln.notes
        ):
            notes.append(
                "after the change the subscription ends at the next billing boundary (the plan "
                "record moves there), and OpenMeter beta.227 does not prorate a flat fee whose "
                "service period ends at or after the subscription's end: the new fee is billed "
                "in full (a billing anchor with sub-second precision escapes this)"
            )
        notes.extend(dict.fromkeys(usage.notes))
        return Charges(
            period=period,
            currency=sub.currency,
            current=current,
            with_change=with_change,
            difference=difference,
            notes=tuple(dict.fromkeys(notes)),
            versions_after=tuple(versions_after),
        )

    async def _quote(
        self,
        sub: ObservedSubscription,
        period: Window,
        full: Window,
        versions: Sequence[ItemVersion],
        sub_end: datetime | None,
        pro_rating: ProRatingConfig,
        usage: _Usage,
        notes: list[str],
    ) -> Quote:
        request = QuoteRequest(
            currency=sub.currency,
            period=period,
            full_period=full,
            items=tuple(_split_by_cadence(sub, period, versions, notes)),
            subscription_end=sub_end,
            pro_rating=pro_rating,
        )
        return build_quote(await _with_quantities(request, usage))


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


def _after_change(
    sub: ObservedSubscription,
    period: Window,
    observed_now: Sequence[ItemVersion],
    result: PlanResult,
    at: datetime,
    notes: list[str],
) -> tuple[list[ItemVersion], datetime | None] | None:
    """Item versions and subscription end of the current subscription after ``result``."""
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
            boundary = result.converges_at or period[1]
            sub_end = boundary
    if result.timing is not None and result.timing.value == "next_billing_cycle":
        notes.append(
            f"the change takes effect at the next billing cycle ({iso_z(result.effective_at)}); "
            "this period's items are unchanged"
        )
    return versions, sub_end


def _change_json(result: PlanResult | None, target: Plan) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        **change_summary(result, target),
        "actions": [a.kind for a in result.actions],
        "refusal": result.refusal,
    }


def charges_document(c: Charges) -> dict[str, Any]:
    """``{period, currency, current, with_change, difference, notes}`` with string amounts."""
    return {
        "period": {"from": iso_z(c.period[0]), "to": iso_z(c.period[1])},
        "currency": c.currency,
        "current": quote_json(c.current),
        "with_change": quote_json(c.with_change) if c.with_change is not None else None,
        "difference": difference_json(c.difference) if c.difference is not None else None,
        "notes": list(c.notes),
    }


# ---------------------------------------------------------------------------------------------
# Console rendering


def _short(iso: str | None) -> str:
    """``2026-04-10T08:30:45Z`` → ``2026-04-10 08:30:45`` for tables (JSON keeps RFC 3339)."""
    if not iso:
        return "-"
    return iso.replace("T", " ").removesuffix("Z")[:19]


def _pct(ratio: str | None) -> str:
    return "-" if ratio is None else f"{Decimal(ratio) * 100:.2f} %"


def _lines_table(title: str, q: Mapping[str, Any], currency: str) -> Table:
    t = Table(title=title)
    for col in ("item", "v", "service period", "price", "quantity", "proration", "amount"):
        t.add_column(col, justify="right" if col in ("quantity", "amount") else "left")
    for ln in q["lines"]:
        price = ln["price_type"] + (f" ({ln['mode']})" if ln.get("mode") else "")
        if ln["payment_term"] == "in_advance":
            price += ", in advance"
        t.add_row(
            ln["key"],
            "-" if ln["version"] is None else str(ln["version"]),
            f"{_short(ln['period']['from'])} → {_short(ln['period']['to'])}",
            price,
            ln["quantity"] or "-",
            _pct(ln["proration"]),
            ln["amount"],
        )
    t.add_row("[bold]total[/bold]", "", "", "", "", "", f"[bold]{q['total']} {currency}[/bold]")
    return t


def render_quote(console: Console, doc: Mapping[str, Any]) -> None:
    """Print a quote document (``Quoter.quote``) as rich tables."""
    cur = doc["currency"]
    console.print(
        f"[bold]{doc['customer']}[/bold] on {doc.get('plan') or 'no plan'}: billing period "
        f"{doc['period']['from']} → {doc['period']['to']} ({cur})"
    )
    console.print(_lines_table("Current charges", doc["current"], cur))
    for s in doc["current"].get("skipped", []):
        console.print(f"  [dim]not billed: {s}[/dim]")
    change = doc.get("change")
    if change:
        console.print(
            f"change to {change['target']['key']}@v{change['target']['version']}: "
            f"[cyan]{change['direction']}[/cyan], timing {change['timing']}, "
            f"effective {change['effective_at']}"
        )
    if doc.get("with_change"):
        console.print(_lines_table("With the change", doc["with_change"], cur))
    diff = doc.get("difference")
    if diff:
        t = Table(title="Difference")
        for col in ("item", "service period", "before", "after", "delta"):
            t.add_column(col, justify="left" if col in ("item", "service period") else "right")
        for ln in diff["lines"]:
            t.add_row(
                ln["key"],
                f"{_short(ln['period']['from'])} → {_short(ln['period']['to'])}",
                ln["before"] or "-",
                ln["after"] or "-",
                ln["delta"],
            )
        t.add_row("[bold]total[/bold]", "", "", "", f"[bold]{diff['total']} {cur}[/bold]")
        console.print(t)
    due = doc.get("credit_due")
    if due and due["invoices"] != "read":
        console.print(f"invoices: {due['invoices']}")
    for c in (due or {}).get("credits", []):
        console.print(
            f"[yellow]credit due:[/yellow] {c['amount']} {c['currency']} for {c['item']} "
            f"{_short(c['period']['from'])} → {_short(c['period']['to'])}: invoiced "
            f"{c['invoiced']} on an issued invoice, {c['due']} due after the change"
        )
    for n in doc.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {n}")
