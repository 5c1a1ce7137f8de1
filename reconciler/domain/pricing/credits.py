"""Money the customer is owed after an edit: in-advance fees already on an issued invoice.

OpenMeter beta.227 cannot change an issued (immutable) invoice: when an edit ends a flat fee's
item version before the end of the service period it was invoiced for in advance, the sync
records a warning and keeps the invoiced amount ("An in advance flat fee cannot be prorated, as
that would require void/credit logic", ``billing/worker/subscriptionsync/service/sync.go``;
``billing/service/invoiceupdate.go`` ``updateImmutableInvoice``). It has no credit notes, so
the difference between what was invoiced and what the shortened version costs is owed to the
customer, and the portal has to credit it. :func:`credits_due` computes it. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Protocol

from reconciler.domain.invoices import invoiced_for
from reconciler.domain.model import ObservedSubscription
from reconciler.domain.periods import parse_duration, period_at
from reconciler.domain.pricing.proration import (
    ProRatingConfig,
    prorated_flat_amount,
    should_prorate,
    truncate_to_second,
)
from reconciler.domain.pricing.quote import ItemVersion

__all__ = ["CreditDue", "InvoicedLineLike", "credits_due"]


class InvoicedLineLike(Protocol):
    """What :func:`credits_due` reads of an invoice line (``reconciler.domain.invoices``)."""

    @property
    def invoice_id(self) -> str: ...
    @property
    def immutable(self) -> bool: ...
    @property
    def line_id(self) -> str: ...
    @property
    def item_id(self) -> str | None: ...
    @property
    def name(self) -> str: ...
    @property
    def period(self) -> tuple[datetime, datetime]: ...
    @property
    def currency(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class CreditDue:
    """``amount`` of ``currency`` to credit for ``item`` over ``period`` (invoice ``invoice_id``,
    line ``line_id``): ``invoiced`` was billed, ``due`` is what the version now costs."""

    item: str
    amount: Decimal
    currency: str
    period: tuple[datetime, datetime]
    invoiced: Decimal
    due: Decimal
    invoice_id: str
    line_id: str


def _flat_in_advance(item: ItemVersion) -> Decimal | None:
    price = item.price
    if not price or price.get("type") != "flat":
        return None
    if (price.get("paymentTerm") or "in_advance") != "in_advance":
        return None
    try:
        return Decimal(str(price.get("amount")))
    except (InvalidOperation, ValueError):
        return None


def credits_due(
    sub: ObservedSubscription,
    versions: Iterable[ItemVersion],
    lines: Sequence[InvoicedLineLike],
) -> list[CreditDue]:
    """Credits owed on ``sub``'s issued in-advance flat-fee lines whose item version (in
    ``versions``: as observed, or as an edit would leave them) ends before the line's service
    period does."""
    issued = [line for line in lines if line.immutable]
    config = ProRatingConfig(enabled=sub.pro_rating_enabled)
    out: list[CreditDue] = []
    for item in versions:
        amount = _flat_in_advance(item)
        if amount is None or item.active_to is None or item.billing_cadence is None:
            continue
        for line in issued:
            start, end = line.period
            if not invoiced_for(
                line.item_id, line.name, start, item.item_id, item.name, item.active_from, None
            ):
                continue
            if not start < item.active_to < end:
                continue
            full = period_at(sub.billing_anchor, parse_duration(item.billing_cadence), start)
            service = (max(item.active_from, start), item.active_to)
            prorate = should_prorate(
                config,
                price_type="flat",
                service_end=truncate_to_second(service[1]),
                subscription_end=sub.active_to,
            )
            due, _ = prorated_flat_amount(
                amount,
                line.currency,
                service=service,
                full_service=(full.start, full.end),
                prorate=prorate,
            )
            if line.amount > due:
                out.append(
                    CreditDue(
                        item=item.key,
                        amount=line.amount - due,
                        currency=line.currency,
                        period=(item.active_to, end),
                        invoiced=line.amount,
                        due=due,
                        invoice_id=line.invoice_id,
                        line_id=line.line_id,
                    )
                )
    return out
