"""Domain types shared by the planner, the policy, pricing and the adapters.

Everything here is immutable plain data: the OpenMeter adapter converts wire JSON into these
types (``reconciler.openmeter.mapping``), the planner reads them and returns actions. No I/O and
no clock reads: "now" is always an argument.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

# Metadata keys the reconciler writes into ``entitlementTemplate.metadata`` of the rate cards it
# adds by edit, and into the ``metadata`` of subscriptions it creates or schedules. OpenMeter
# copies entitlement-template metadata to the item's entitlement (``included.entitlement.
# metadata``) but never to the item's own ``metadata`` (beta.227 ``subscriptionspec.go``
# ``ToCreateSubscriptionItemEntityInput`` sets no metadata), so the tags live there.
META_PLAN = "reconciler.plan"
META_VERSION = "reconciler.version"
META_CHANGE = "reconciler.change"
META_PREFIX = "reconciler."


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELED = "canceled"
    SCHEDULED = "scheduled"
    INACTIVE = "inactive"


class Timing(StrEnum):
    IMMEDIATE = "immediate"
    NEXT_BILLING_CYCLE = "next_billing_cycle"
    ILLEGAL = "illegal"


class Direction(StrEnum):
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    LATERAL = "lateral"
    NOOP = "noop"


@dataclass(frozen=True, slots=True)
class PlanRef:
    key: str
    version: int
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.key}@v{self.version}"


def canonical_json(value: Any) -> str:
    """Stable JSON used to compare rate-card content (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class EntitlementTemplate:
    """A rate card's entitlement template (metered, static or boolean)."""

    type: str
    issue_after_reset: Decimal | None = None
    usage_period: str | None = None  # ISO 8601 duration, e.g. "P1M"
    is_soft_limit: bool = False
    preserve_overage_at_reset: bool = False
    issue_after_reset_priority: int | None = None
    config: str | None = None  # static entitlements
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateCard:
    """A plan's rate card; ``raw`` is its exact JSON from the plan (sent back in add_item)."""

    key: str
    type: str  # "flat_fee" | "usage_based"
    name: str
    feature_key: str | None
    billing_cadence: str | None
    price: Mapping[str, Any] | None
    entitlement: EntitlementTemplate | None
    raw: Mapping[str, Any]

    def fingerprint(self) -> str:
        """What must be equal for a subscription item to count as "this rate card"."""
        return item_fingerprint(
            key=self.key,
            feature_key=self.feature_key,
            billing_cadence=self.billing_cadence,
            price=self.price,
            entitlement=self.entitlement,
            discounts=self.raw.get("discounts"),
        )


def _price_norm(price: Mapping[str, Any] | None) -> Any:
    """Normalise decimal strings so "29" and "29.00" compare equal."""

    def norm(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: norm(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, str):
            try:
                d = Decimal(v)
            except ArithmeticError:
                return v
            return format(d.normalize(), "f") if d.is_finite() else v
        return v

    return norm(price) if price is not None else None


def item_fingerprint(
    *,
    key: str,
    feature_key: str | None,
    billing_cadence: str | None,
    price: Mapping[str, Any] | None,
    entitlement: EntitlementTemplate | None,
    discounts: Any = None,
) -> str:
    """Content identity shared by plan rate cards and observed subscription items.

    Built only from fields OpenMeter exposes on both sides (a ``SubscriptionItem`` does not show
    the rate card's ``type`` or template, only the materialised entitlement). The reconciler's own
    provenance tags (``reconciler.*`` metadata) are excluded.
    """
    ent: Any = None
    if entitlement is not None:
        ent = {
            "type": entitlement.type,
            "issueAfterReset": (
                format(entitlement.issue_after_reset.normalize(), "f")
                if entitlement.issue_after_reset is not None
                else None
            ),
            "usagePeriod": entitlement.usage_period,
            "isSoftLimit": entitlement.is_soft_limit,
            "preserveOverageAtReset": entitlement.preserve_overage_at_reset,
            "config": entitlement.config,
            "metadata": {
                k: v for k, v in entitlement.metadata.items() if not k.startswith(META_PREFIX)
            },
        }
    return canonical_json(
        {
            "key": key,
            "featureKey": feature_key,
            "billingCadence": billing_cadence,
            "price": _price_norm(price),
            "entitlement": ent,
            "discounts": _price_norm(discounts) if discounts else None,
        }
    )


@dataclass(frozen=True, slots=True)
class PlanPhase:
    key: str
    name: str
    duration: str | None  # ISO duration; None = open-ended (last phase)
    rate_cards: tuple[RateCard, ...]

    def card(self, key: str) -> RateCard | None:
        return next((c for c in self.rate_cards if c.key == key), None)


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    key: str
    version: int
    name: str
    currency: str
    billing_cadence: str
    pro_rating_enabled: bool
    phases: tuple[PlanPhase, ...]
    status: str = "active"

    @property
    def ref(self) -> PlanRef:
        return PlanRef(self.key, self.version, self.id)

    def phase(self, key: str) -> PlanPhase | None:
        return next((p for p in self.phases if p.key == key), None)


@dataclass(frozen=True, slots=True)
class ObservedEntitlement:
    """The materialised entitlement of a subscription item (``included.entitlement``)."""

    id: str
    feature_key: str
    type: str
    template: EntitlementTemplate
    active_from: datetime
    active_to: datetime | None
    measure_usage_from: datetime | None
    usage_period_anchor: datetime | None
    current_usage_period: tuple[datetime, datetime] | None


@dataclass(frozen=True, slots=True)
class ObservedItem:
    """A subscription item version as OpenMeter shows it."""

    id: str
    key: str
    name: str
    feature_key: str | None
    billing_cadence: str | None
    price: Mapping[str, Any] | None
    discounts: Any
    entitlement: ObservedEntitlement | None
    active_from: datetime
    active_to: datetime | None

    def fingerprint(self) -> str:
        return item_fingerprint(
            key=self.key,
            feature_key=self.feature_key,
            billing_cadence=self.billing_cadence,
            price=self.price,
            entitlement=self.entitlement.template if self.entitlement else None,
            discounts=self.discounts,
        )

    @property
    def provenance(self) -> Mapping[str, str]:
        """The ``reconciler.*`` tags the reconciler put on this item (empty if none)."""
        if self.entitlement is None:
            return {}
        md = self.entitlement.template.metadata
        return {k: v for k, v in md.items() if k.startswith(META_PREFIX)}


@dataclass(frozen=True, slots=True)
class ObservedPhase:
    key: str
    name: str
    active_from: datetime
    active_to: datetime | None
    items: tuple[ObservedItem, ...]  # as OpenMeter's flattened ``items`` list
    timelines: Mapping[str, tuple[ObservedItem, ...]]  # every version per key, oldest first


@dataclass(frozen=True, slots=True)
class ObservedSubscription:
    id: str
    customer_id: str
    status: SubscriptionStatus
    plan: PlanRef | None
    name: str
    currency: str
    billing_cadence: str
    billing_anchor: datetime
    active_from: datetime
    active_to: datetime | None
    pro_rating_enabled: bool
    phases: tuple[ObservedPhase, ...]
    current_period: tuple[datetime, datetime] | None  # alignment.currentAlignedBillingPeriod
    annotations: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    updated_at: datetime | None = None  # moves on every edit, cancelation and change

    @property
    def superseding_id(self) -> str | None:
        v = self.annotations.get("subscription.superseding.id")
        return str(v) if v else None

    @property
    def previous_id(self) -> str | None:
        v = self.annotations.get("subscription.previous.id")
        return str(v) if v else None

    def phase_at(self, at: datetime) -> ObservedPhase | None:
        for p in self.phases:
            if p.active_from <= at and (p.active_to is None or at < p.active_to):
                return p
        return None


@dataclass(frozen=True, slots=True)
class EntitlementValue:
    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything the planner needs to know about one customer, read at ``observed_at``.

    ``current`` is the customer's subscription that is active or canceled (started, not ended);
    ``successor`` the scheduled one that starts when ``current`` ends (or any scheduled one when
    there is no current subscription). ``values`` maps feature key → entitlement value now.
    """

    customer_id: str
    customer_key: str | None
    observed_at: datetime
    current: ObservedSubscription | None
    successor: ObservedSubscription | None
    values: Mapping[str, EntitlementValue] = field(default_factory=dict)
    # add-on keys of ``current`` with a quantity above 0 at any time; None = not read (read
    # only when an edit is planned: OpenMeter refuses to edit such a subscription)
    addons: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Desired:
    """The customer's desired state: the latest change request (by ``requested_at``)."""

    change_id: str
    plan_key: str
    plan_version: int | None
    requested_at: datetime
