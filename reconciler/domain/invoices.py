"""What OpenMeter has invoiced for a subscription, as the reconciler reads it. Pure.

OpenMeter's billing writes one invoice line per item version and service period
(``billing/worker/subscriptionsync``); a line on an issued invoice (``statusDetails.immutable``)
no longer changes when the subscription does. :class:`Invoiced` is the answer of one read of the
customer's invoices: ``state`` says whether there was anything to read, so a report can say
"no invoices" instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

__all__ = ["Invoiced", "InvoicedLine", "InvoicesState", "invoiced_for"]


class InvoicesState(StrEnum):
    READ = "read"  # invoices were listed (maybe none for this subscription yet)
    NONE = "no invoices"  # OpenMeter lists no invoice for the customer: billing is not used
    UNAVAILABLE = "billing not available"  # the billing API answered 404/403 or failed


@dataclass(frozen=True, slots=True)
class InvoicedLine:
    """One subscription-managed invoice line (``InvoiceLine``)."""

    invoice_id: str
    invoice_number: str
    invoice_status: str  # the short status: gathering, draft, issued, paid, ...
    immutable: bool
    line_id: str
    item_id: str | None
    subscription_id: str | None
    name: str
    period: tuple[datetime, datetime]
    currency: str
    amount: Decimal  # totals.total (for a flat fee: the prorated amount)
    price_type: str | None
    payment_term: str | None


@dataclass(frozen=True, slots=True)
class Invoiced:
    state: InvoicesState
    lines: tuple[InvoicedLine, ...] = ()
    detail: str | None = None

    def of_subscription(self, subscription_id: str) -> tuple[InvoicedLine, ...]:
        return tuple(ln for ln in self.lines if ln.subscription_id == subscription_id)


def invoiced_for(
    line_item_id: str | None,
    line_name: str,
    line_start: datetime,
    item_id: str | None,
    name: str,
    active_from: datetime,
    active_to: datetime | None,
) -> bool:
    """Whether an invoice line was written for an item version (``item_id``, ``name``, active
    ``[active_from, active_to)``).

    By id when they agree; otherwise by what survives an edit: OpenMeter re-creates an item
    version whose cadence changed (``subscription/service/sync.go``), so the version an edit
    ended has a new id while its invoice line keeps the old one. The billing sync itself
    matches by ``<sub>/<phase>/<key>/v[n]/period[m]``, which the API does not show; the line's
    name (the rate card's) and its service period's start identify the version instead: the
    period starts where the version started or, for a later period, inside it.
    """
    if line_item_id is not None and line_item_id == item_id:
        return True
    starts_inside = active_from.replace(microsecond=0) <= line_start and (
        active_to is None or line_start < active_to
    )
    return line_name == name and starts_inside
