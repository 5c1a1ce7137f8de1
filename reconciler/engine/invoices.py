"""What OpenMeter has invoiced, read for the quote and the ``plan_change.applied`` event.

OpenMeter beta.227 cannot change an issued invoice (no credit notes): when an edit shortens an
item version whose in-advance fee is already on one, the difference is owed to the customer
(:func:`reconciler.domain.pricing.credits.credits_due`, shown by
:func:`reconciler.engine.views.credits_of`). This module reads the customer's
invoices (``listInvoices``, ``expand=lines``) and turns the answer into that credit, saying
"no invoices" where OpenMeter lists none (billing not used) and "billing not available" where
the billing API refuses or fails, rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.logs import get_logger
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.errors import OpenMeterError
from reconciler.openmeter.mapping import to_invoiced_lines

__all__ = ["read_invoiced"]

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
