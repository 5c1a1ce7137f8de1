"""What OpenMeter has invoiced, read for the quote and the ``plan_change.applied`` event.

OpenMeter beta.227 cannot change an issued invoice (no credit notes): when an edit shortens an
item version whose in-advance fee is already on one, the difference is owed to the customer
(:func:`reconciler.domain.pricing.credits.credits_due`). This module reads the customer's
invoices (``listInvoices``, ``expand=lines``) and turns the answer into that credit, saying
"no invoices" where OpenMeter lists none (billing not used) and "billing not available" where
the billing API refuses or fails, rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.domain.model import ObservedSubscription
from reconciler.domain.pricing import ItemVersion
from reconciler.domain.pricing.credits import CreditDue, credits_due
from reconciler.domain.pricing.currency import round_money
from reconciler.domain.timefmt import iso_z
from reconciler.logs import get_logger
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.errors import OpenMeterError
from reconciler.openmeter.mapping import to_invoiced_lines

__all__ = ["credit_due_view", "read_invoiced"]

log = get_logger("reconciler.invoices")


async def read_invoiced(
    client: OpenMeterClient, customer_id: str, subscription_ids: Iterable[str]
) -> Invoiced:
    """The customer's invoiced lines of ``subscription_ids``. Never raises for OpenMeter's
    answer: a refusal or a failure after the client's retries is reported in the result."""
    try:
        invoices = await client.list_invoices(customer_id)
    except OpenMeterError as exc:
        log.warning("invoices_unavailable", customer_id=customer_id, error=str(exc))
        return Invoiced(InvoicesState.UNAVAILABLE, detail=str(exc))
    if not invoices:
        return Invoiced(InvoicesState.NONE)
    return Invoiced(InvoicesState.READ, tuple(to_invoiced_lines(invoices, set(subscription_ids))))


def _credit_json(c: CreditDue) -> dict[str, Any]:
    return {
        "item": c.item,
        "amount": format(round_money(c.amount, c.currency), "f"),
        "currency": c.currency,
        "period": {"from": iso_z(c.period[0]), "to": iso_z(c.period[1])},
        "invoiced": format(round_money(c.invoiced, c.currency), "f"),
        "due": format(round_money(c.due, c.currency), "f"),
        "invoice_id": c.invoice_id,
        "line_id": c.line_id,
    }


def credit_due_view(
    sub: ObservedSubscription, versions: Iterable[ItemVersion], invoiced: Invoiced
) -> dict[str, Any]:
    """``{"invoices": "read" | "no invoices" | "billing not available", "credits": [...],
    "total": {currency: amount}}`` for ``sub`` whose item versions are (or would be)
    ``versions``."""
    out: dict[str, Any] = {"invoices": invoiced.state.value, "credits": [], "total": {}}
    if invoiced.detail:
        out["detail"] = invoiced.detail
    if invoiced.state is not InvoicesState.READ:
        return out
    credits = credits_due(sub, list(versions), invoiced.of_subscription(sub.id))
    totals: dict[str, Decimal] = {}
    for c in credits:
        totals[c.currency] = totals.get(c.currency, Decimal(0)) + c.amount
    out["credits"] = [_credit_json(c) for c in credits]
    out["total"] = {cur: format(round_money(v, cur), "f") for cur, v in sorted(totals.items())}
    return out
