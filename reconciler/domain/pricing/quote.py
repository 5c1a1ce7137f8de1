"""Quote of one billing period's charges, line by line, as OpenMeter beta.227 would invoice them.

The engine builds a :class:`QuoteRequest` from a subscription as OpenMeter shows it (every
version of every item, ``ObservedPhase.timelines``) plus one meter query per usage-priced item
version, and gets a :class:`Quote`. To preview a plan change it builds a second request with the
versions the change would produce (e.g. the old item ending at ``t`` and the new one starting at
``t``) and calls :func:`quote_difference`.

How lines are formed (tag ``v1.0.0-beta.227``; ``subscriptionsync`` =
``openmeter/billing/worker/subscriptionsync/service/``):

* One invoice line per item version and service period: the line's unique reference is
  ``subscription/phase/item/v[version]/period[n]`` (``phaseiterator.go``
  ``generateForAlignedItemVersionPeriod``). An edit therefore splits an item into lines, each
  priced on its own: tiered ladders restart at zero and commitments apply per line (also the
  comment in ``sync.go`` ``getPatchesForExistingLineOrHierarchy``).
* Items without a price are not billed (``generateForAlignedItemVersion``: "Let's drop
  non-billable items"); usage-priced lines whose second-truncated service period is empty are
  dropped (``truncateItemsIfNeeded``).
* Flat fees: see :mod:`reconciler.domain.pricing.proration`. An in-advance flat fee is invoiced
  at the start of its billing period (``phaseiterator.go`` ``GetInvoiceAt``); once that invoice is
  immutable its amount cannot change any more (``invoiceupdate.go`` ``updateImmutableInvoice``:
  "flat fee line's per unit amount cannot be changed on immutable invoice"; ``sync.go``: "An in
  advance flat fee cannot be prorated, as that would require void/credit logic"), so a fee already
  invoiced is not credited back when its item version is cut short.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from reconciler.domain.model import ObservedItem, canonical_json
from reconciler.domain.pricing.currency import exact, round_money
from reconciler.domain.pricing.prices import (
    Component,
    ComponentKind,
    FlatPrice,
    PaymentTerm,
    PriceError,
    evaluate_price,
    parse_price,
)
from reconciler.domain.pricing.proration import (
    ProRatingConfig,
    prorated_flat_amount,
    seconds,
    should_prorate,
    truncate_to_second,
)

__all__ = [
    "ItemVersion",
    "LineDelta",
    "Quote",
    "QuoteDifference",
    "QuoteLine",
    "QuoteRequest",
    "build_quote",
    "quote_difference",
    "service_window",
]

ZERO = Decimal(0)
ONE = Decimal(1)
Window = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class ItemVersion:
    """One version of a subscription item, with what the quote needs to price it.

    Build it from an OpenMeter subscription item (:meth:`from_observed`): ``key``, ``name``,
    ``active_from``/``active_to``, the rate card's ``price`` JSON object, ``billing_cadence``,
    ``feature_key`` and ``discounts`` exactly as OpenMeter returns them.

    ``quantity``: the meter's value for ``feature_key`` over this version's service window in the
    quoted period — ask :func:`service_window` for the exact window (second-truncated, clipped to
    the period, the version and the subscription end). Required for usage prices (unit, package,
    tiered, dynamic), ignored for flat prices.

    ``full_service_period``: the unclipped billing-cadence period of *this item's* cadence around
    the quoted period, from the subscription's billing anchor (``periods.period_at(anchor,
    item cadence, t)``). Leave ``None`` when the item's cadence is the subscription's: the
    request's ``full_period`` is used.

    ``invoiced_amount``: for an in-advance flat fee already on an immutable (issued) invoice,
    the amount invoiced. OpenMeter cannot lower it, so the quote keeps that amount and says so.

    ``version``: the index of this version in the item's timeline (informational).
    """

    key: str
    name: str
    active_from: datetime
    active_to: datetime | None
    price: Mapping[str, Any] | None
    billing_cadence: str | None
    feature_key: str | None = None
    quantity: Decimal | None = None
    discounts: Mapping[str, Any] | None = None
    full_service_period: Window | None = None
    invoiced_amount: Decimal | None = None
    version: int | None = None
    item_id: str | None = None  # the subscription item (version) id, for observed versions

    @classmethod
    def from_observed(
        cls,
        item: ObservedItem,
        *,
        quantity: Decimal | None = None,
        version: int | None = None,
        full_service_period: Window | None = None,
        invoiced_amount: Decimal | None = None,
    ) -> ItemVersion:
        discounts = item.discounts if isinstance(item.discounts, Mapping) else None
        return cls(
            key=item.key,
            name=item.name,
            active_from=item.active_from,
            active_to=item.active_to,
            price=item.price,
            billing_cadence=item.billing_cadence,
            feature_key=item.feature_key,
            quantity=quantity,
            discounts=discounts,
            full_service_period=full_service_period,
            invoiced_amount=invoiced_amount,
            version=version,
            item_id=item.id,
        )


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """What to quote.

    ``period``: the billing period ``[from, to)`` as OpenMeter aligns it
    (``alignment.currentAlignedBillingPeriod``; clipped to the phase). ``full_period``: the same
    cadence period *unclipped* (``B(k)..B(k+1)`` from the billing anchor) — the denominator of
    proration; defaults to ``period``. ``subscription_end``: the subscription's ``activeTo`` if it
    is set (cancelled or changed), which disables flat-fee proration for the periods it cuts.
    ``pro_rating``: the subscription's ``proRatingConfig`` (``None`` = disabled).
    """

    currency: str
    period: Window
    items: Sequence[ItemVersion]
    full_period: Window | None = None
    subscription_end: datetime | None = None
    pro_rating: ProRatingConfig | None = None


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """One invoice line: an item version over one service period."""

    key: str
    name: str
    version: int | None
    feature_key: str | None
    period_from: datetime
    period_to: datetime
    price_type: str
    mode: str | None  # tiered mode
    payment_term: str  # "in_advance" only for in-advance flat fees
    quantity: Decimal | None  # metered quantity (None for flat fees)
    billed_quantity: Decimal | None  # after a usage discount
    proration: Decimal | None  # ratio applied to a flat fee, None when not prorated
    breakdown: tuple[Component, ...]  # OpenMeter's detailed lines, per tier
    amount: Decimal
    notes: tuple[str, ...]
    price: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def identity(self) -> tuple[str, datetime, datetime, str]:
        """What makes two quotes' lines "the same line" (item, service period, price)."""
        return (self.key, self.period_from, self.period_to, canonical_json(self.price))


@dataclass(frozen=True, slots=True)
class Quote:
    currency: str
    period_from: datetime
    period_to: datetime
    lines: tuple[QuoteLine, ...]
    totals_by_currency: Mapping[str, Decimal]
    skipped: tuple[str, ...] = ()  # item versions without a line, with the reason

    @property
    def total(self) -> Decimal:
        return self.totals_by_currency.get(self.currency, round_money(ZERO, self.currency))


@dataclass(frozen=True, slots=True)
class LineDelta:
    key: str
    name: str
    period_from: datetime
    period_to: datetime
    before: QuoteLine | None
    after: QuoteLine | None
    delta: Decimal


@dataclass(frozen=True, slots=True)
class QuoteDifference:
    currency: str
    lines: tuple[LineDelta, ...]  # changed, added and removed lines (unchanged ones omitted)
    by_item: Mapping[str, Decimal]  # item key → after − before
    totals_by_currency: Mapping[str, Decimal]  # after − before

    @property
    def total(self) -> Decimal:
        return self.totals_by_currency.get(self.currency, round_money(ZERO, self.currency))


def _aware(name: str, at: datetime | None) -> None:
    if at is not None and at.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def _full_period(request: QuoteRequest, item: ItemVersion) -> Window:
    return item.full_service_period or request.full_period or request.period


def _raw_window(request: QuoteRequest, item: ItemVersion) -> Window | None:
    """Untruncated service window of ``item`` in the quoted period, ``None`` if outside it."""
    p_from, p_to = request.period
    f_from, f_to = _full_period(request, item)
    start = max(item.active_from, p_from, f_from)
    ends = [p_to, f_to]
    if item.active_to is not None:
        ends.append(item.active_to)
    if request.subscription_end is not None:
        ends.append(request.subscription_end)
    end = min(ends)
    if start < end:
        return start, end
    # A zero-length version (added and removed at the same instant) still yields a line in
    # OpenMeter (``generateForAlignedItemVersionPeriod`` special-cases it).
    if item.active_to == item.active_from and p_from <= item.active_from < p_to:
        return item.active_from, item.active_from
    return None


def service_window(request: QuoteRequest, item: ItemVersion) -> Window | None:
    """The service period OpenMeter bills ``item`` for in the quoted period, truncated to seconds.

    Query the meter over exactly this window for :attr:`ItemVersion.quantity`. ``None`` when the
    version does not overlap the period.
    """
    raw = _raw_window(request, item)
    if raw is None:
        return None
    return truncate_to_second(raw[0]), truncate_to_second(raw[1])


def _line_for(request: QuoteRequest, item: ItemVersion, skipped: list[str]) -> QuoteLine | None:
    label = f"{item.key}" + (f" v{item.version}" if item.version is not None else "")
    if item.price is None:
        skipped.append(f"{label}: no price (OpenMeter does not bill unpriced items)")
        return None
    price = parse_price(item.price)
    one_time = item.billing_cadence is None
    if one_time:
        if not (request.period[0] <= item.active_from < request.period[1]):
            return None
        window: Window | None = (
            truncate_to_second(item.active_from),
            truncate_to_second(item.active_to or item.active_from),
        )
    else:
        window = service_window(request, item)
    if window is None:
        return None
    start, end = window
    notes: list[str] = []
    if not isinstance(price, FlatPrice):
        if end <= start:
            skipped.append(f"{label}: empty service period (usage lines need at least 1 s)")
            return None
        if item.quantity is None:
            raise PriceError(f"item {label}: a {price.type} price needs the metered quantity")
        res = evaluate_price(price, item.quantity, request.currency, discounts=item.discounts)
        notes.append("usage is priced per item version: the tier ladder starts at zero here")
        return QuoteLine(
            key=item.key,
            name=item.name,
            version=item.version,
            feature_key=item.feature_key,
            period_from=start,
            period_to=end,
            price_type=res.price_type,
            mode=res.mode,
            payment_term=PaymentTerm.IN_ARREARS.value,
            quantity=res.metered_quantity,
            billed_quantity=res.quantity,
            proration=None,
            breakdown=res.components,
            amount=res.amount,
            notes=(*notes, *res.notes),
            price=item.price,
        )

    # Flat fee.
    ratio: Decimal | None = None
    if one_time:
        per_unit = round_money(price.amount, request.currency)
        notes.append("one-time fee (no billing cadence): billed in full, never prorated")
    else:
        full = _full_period(request, item)
        prorate = should_prorate(
            request.pro_rating,
            price_type=price.type,
            service_end=end,
            subscription_end=request.subscription_end,
        )
        per_unit, ratio = prorated_flat_amount(
            price.amount, request.currency, service=window, full_service=full, prorate=prorate
        )
        if ratio is not None:
            if ratio != 1:
                notes.append(
                    f"prorated: {seconds(start, end)} s of {seconds(*full)} s"
                    f" = {ratio.normalize()} of {price.amount}"
                )
        elif request.pro_rating is None or not request.pro_rating.enabled:
            notes.append("not prorated: pro-rating is disabled on the subscription")
        elif request.subscription_end is not None and request.subscription_end <= end:
            notes.append(
                "not prorated: the subscription ends within this period "
                "(OpenMeter beta.227 does not prorate due to the subscription ending)"
            )
        elif end <= start:
            notes.append("not prorated: empty service period (OpenMeter bills the full fee)")
    effective = FlatPrice(per_unit, price.payment_term)
    res = evaluate_price(effective, None, request.currency, discounts=item.discounts)
    breakdown = res.components
    amount = res.amount
    if price.payment_term is PaymentTerm.IN_ADVANCE:
        notes.append("in advance: invoiced at the start of the billing period")
        if item.invoiced_amount is not None:
            if item.invoiced_amount != amount:
                notes.append(
                    f"in-advance fee already invoiced ({item.invoiced_amount}); not credited back "
                    f"(would be {amount} for this service period)"
                )
            else:
                notes.append("in-advance fee already invoiced; not credited back")
            amount = round_money(item.invoiced_amount, request.currency)
            invoiced = Component(
                ComponentKind.FLAT, "flat fee (invoiced)", "flat-price", None, ONE, amount, amount
            )
            breakdown = (invoiced,) if amount else ()
    elif item.invoiced_amount is not None:
        raise PriceError(f"item {label}: invoiced_amount only applies to in-advance flat fees")
    if not breakdown:
        skipped.append(f"{label}: zero amount (OpenMeter creates no line for a zero flat fee)")
        return None
    return QuoteLine(
        key=item.key,
        name=item.name,
        version=item.version,
        feature_key=item.feature_key,
        period_from=start,
        period_to=end,
        price_type=price.type,
        mode=None,
        payment_term=price.payment_term.value,
        quantity=None,
        billed_quantity=None,
        proration=ratio,
        breakdown=breakdown,
        amount=amount,
        notes=(*notes, *res.notes),
        price=item.price,
    )


def build_quote(request: QuoteRequest) -> Quote:
    """Price every item version of ``request`` over the quoted period.

    Lines are ordered by item key, then service-period start. Raises
    :class:`~reconciler.domain.pricing.currency.UnknownCurrencyError` for an unknown currency and
    :class:`~reconciler.domain.pricing.prices.PriceError` for an invalid price or a usage price
    without a quantity.
    """
    round_money(ZERO, request.currency)  # validates the currency
    p_from, p_to = request.period
    for name, at in (("period start", p_from), ("period end", p_to)):
        _aware(name, at)
    _aware("subscription_end", request.subscription_end)
    if not p_from < p_to:
        raise ValueError("the quoted period must have start < end")
    skipped: list[str] = []
    lines = []
    for item in request.items:
        _aware(f"{item.key}.active_from", item.active_from)
        _aware(f"{item.key}.active_to", item.active_to)
        line = _line_for(request, item, skipped)
        if line is not None:
            lines.append(line)
    lines.sort(key=lambda ln: (ln.key, ln.period_from, ln.period_to))
    with exact():
        total = sum((ln.amount for ln in lines), round_money(ZERO, request.currency))
    return Quote(
        currency=request.currency,
        period_from=p_from,
        period_to=p_to,
        lines=tuple(lines),
        totals_by_currency={request.currency: total},
        skipped=tuple(skipped),
    )


def quote_difference(before: Quote, after: Quote) -> QuoteDifference:
    """Per-line, per-item and total deltas ``after − before``.

    Lines are matched by item key, service period and price; a line present on one side only is
    reported as added (``before`` ``None``) or removed (``after`` ``None``). Unchanged lines are
    omitted.
    """
    if before.currency != after.currency:
        raise ValueError(f"cannot compare quotes in {before.currency} and {after.currency}")
    cur = before.currency
    zero = round_money(ZERO, cur)
    pending: dict[tuple[str, datetime, datetime, str], list[QuoteLine]] = defaultdict(list)
    for ln in before.lines:
        pending[ln.identity].append(ln)
    deltas: list[LineDelta] = []
    by_item: dict[str, Decimal] = defaultdict(lambda: zero)
    with exact():
        for ln in after.lines:
            matches = pending.get(ln.identity)
            old = matches.pop(0) if matches else None
            d = ln.amount - (old.amount if old else zero)
            if old is None or d != 0 or old.quantity != ln.quantity:
                deltas.append(LineDelta(ln.key, ln.name, ln.period_from, ln.period_to, old, ln, d))
            by_item[ln.key] += d
        for rest in pending.values():
            for old in rest:
                deltas.append(
                    LineDelta(
                        old.key, old.name, old.period_from, old.period_to, old, None, -old.amount
                    )
                )
                by_item[old.key] -= old.amount
        total = after.total - before.total
    deltas.sort(key=lambda d: (d.key, d.period_from, d.period_to))
    return QuoteDifference(
        currency=cur,
        lines=tuple(deltas),
        by_item=dict(by_item),
        totals_by_currency={cur: total},
    )
