"""What the engine hands to the CLI and the HTTP service: typed results, never loose dicts.

The write side returns an :class:`Outcome` per pass; the read side returns :class:`Preview`,
:class:`StatusReport` and :class:`QuoteReport`. Each is turned into JSON by
:mod:`reconciler.engine.views` (the one place that knows the wire shape) and into tables for
people by ``reconciler.cli``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.domain.model import EntitlementValue, Observed, ObservedSubscription, Plan
from reconciler.domain.planner import PlanResult
from reconciler.domain.pricing import ItemVersion, Quote, QuoteDifference
from reconciler.domain.pricing.credits import CreditDue
from reconciler.store.types import AuditEntry, ChangeRecord

# A JSON value as stored in a change's details or returned by OpenMeter (summarised).
Json = Any

Window = tuple[datetime, datetime]


class OutcomeState(StrEnum):
    """How a reconcile pass ended. The planner's states, plus what the loop itself decides."""

    CONVERGED = "converged"
    WAITING = "waiting"
    ACTING = "acting"  # still acting after the pass's step limit: it comes back soon
    REFUSED = "refused"
    RESPECTED = "respected"
    BUSY = "busy"  # the customer is claimed elsewhere
    SETTLING = "settling"  # a timed-out mutation may still be running: look again later
    NO_DESIRED_STATE = "no_desired_state"
    NOT_OPEN = "not_open"  # the desired change is final (failed or superseded)
    SUPERSEDED = "superseded"
    FAILED = "failed"
    RETRY = "retry"  # OpenMeter failed; retried after a backoff


@dataclass(frozen=True, slots=True)
class AppliedCall:
    """One mutation a pass sent and OpenMeter applied, with a summary of its response."""

    action: str
    method: str
    path: str
    body: Json
    result: Json


@dataclass
class Outcome:
    """The result of one ``Engine.reconcile`` pass (filled in as the pass goes)."""

    customer: str
    change_id: str | None
    status: str | None
    state: OutcomeState
    applied: list[AppliedCall] = field(default_factory=list)
    error: str | None = None
    usage_not_preserved: list[str] = field(default_factory=list)
    result: PlanResult | None = None


@dataclass
class Hooks:
    """Callbacks the service uses for metrics; all optional."""

    on_action: Callable[[str, str], None] | None = None  # (kind, outcome)
    on_status: Callable[[str], None] | None = None
    on_usage_not_preserved: Callable[[str], None] | None = None  # feature key
    on_drift_healed: Callable[[str], None] | None = None  # action kind
    on_drift_found: Callable[[str], None] | None = None  # what drifted: items | subscription


# -- money owed ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credits:
    """What the customer is owed for in-advance fees already on an issued invoice, or why that
    cannot be known (``state`` other than ``read``)."""

    state: InvoicesState
    credits: tuple[CreditDue, ...] = ()
    totals: Mapping[str, Decimal] = field(default_factory=dict)
    detail: str | None = None


# -- quotes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charges:
    """This period's quote now and, with a change, after it (and the difference)."""

    period: Window
    currency: str
    current: Quote
    with_change: Quote | None
    difference: QuoteDifference | None
    notes: tuple[str, ...]
    versions_after: tuple[ItemVersion, ...] = ()  # the item versions once the change is made


@dataclass(frozen=True, slots=True)
class QuoteReport:
    """``reconciler quote``: the current period's expected charges, optionally with a change."""

    observed: Observed
    subscription: ObservedSubscription
    as_of: datetime
    at: datetime
    target: Plan | None
    result: PlanResult | None
    charges: Charges
    invoiced: Invoiced
    credit_due: Credits

    @property
    def customer(self) -> str:
        return self.observed.customer_key or self.observed.customer_id


# -- previews and status ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preview:
    """A dry run: what the planner would do now, the entitlements before and after, and this
    period's charges with the change (or why they cannot be quoted)."""

    observed: Observed
    result: PlanResult
    target: Plan
    now: datetime
    charges: Charges | None
    charges_error: str | None = None

    @property
    def customer(self) -> str:
        return self.observed.customer_key or self.observed.customer_id


@dataclass(frozen=True, slots=True)
class DesiredStatus:
    """The stored desired state and what the planner would do about it now."""

    change: ChangeRecord
    result: PlanResult | None  # None when the target plan is unknown
    plan_error: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Where a customer stands: OpenMeter's view, the desired state, the recent audit."""

    customer: str
    observed: Observed
    now: datetime
    desired: DesiredStatus | None
    convergence: str  # the planner's state, the change's status, or why neither is known
    audit: tuple[AuditEntry, ...]


# -- a change made now (``reconciler change``) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeReport:
    """A change submitted and reconciled at once: the preview it started from, what the pass
    did, the change as stored afterwards and the entitlement values OpenMeter shows now."""

    preview: Preview
    change: ChangeRecord | None
    outcome: Outcome
    values_now: Mapping[str, EntitlementValue]
