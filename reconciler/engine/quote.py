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
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.domain.model import Desired, Observed, ObservedSubscription, Plan
from reconciler.domain.periods import parse_duration, period_at
from reconciler.domain.planner import PlanResult, plan
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
from reconciler.domain.pricing.replay import observed_versions
from reconciler.domain.pricing.scenario import (
    after_change,
    needs_usage,
    split_by_cadence,
    with_invoiced,
)
from reconciler.domain.timefmt import iso_z
from reconciler.engine.collaborators import Collaborators
from reconciler.engine.invoices import read_invoiced
from reconciler.engine.results import Charges, QuoteReport
from reconciler.engine.views import credits_of
from reconciler.openmeter.client import OpenMeterClient

__all__ = ["QuoteError", "Quoter", "parse_at"]

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


async def _with_quantities(request: QuoteRequest, usage: _Usage) -> QuoteRequest:
    async def fill(item: ItemVersion) -> ItemVersion:
        if not needs_usage(item):
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
# The quoter


class Quoter:
    """``Quoter(collaborators).quote(customer, plan_key=..., at=...)`` → :class:`QuoteReport`
    (``reconciler.engine.views.quote_json`` is its JSON)."""

    def __init__(self, c: Collaborators) -> None:
        self.c = c

    async def quote(
        self,
        customer: str,
        *,
        plan_key: str | None = None,
        plan_version: int | None = None,
        at: datetime | None = None,
    ) -> QuoteReport:
        e = self.c
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
        return QuoteReport(
            observed=observed,
            subscription=sub,
            as_of=now,
            at=when,
            target=target,
            result=result,
            charges=charges,
            invoiced=invoiced,
            credit_due=credits_of(sub, charges.versions_after, invoiced),
        )

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
        usage = _Usage(self.c.client, observed.customer_id)
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
                after = after_change(sub, period, observed_now, result, at, notes)
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
        if any(needs_usage(i) for i in observed_versions(sub, period)):
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
            items=tuple(split_by_cadence(sub, period, versions, notes)),
            subscription_end=sub_end,
            pro_rating=pro_rating,
        )
        return build_quote(await _with_quantities(request, usage))
