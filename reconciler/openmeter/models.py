"""Pydantic v2 models of the OpenMeter (beta.227) wire shapes the reconciler reads and writes.

Conventions (shapes: ``api/openapi.yaml`` at v1.0.0-beta.227; see
``/work/shared/reference/openmeter-semantics.md`` §3):

* Field names are snake_case, aliases are OpenMeter's camelCase; models accept either
  (``populate_by_name``) and keep unknown fields (``extra="allow"``) so a newer server does not
  break parsing, and a rate card dumped back (``by_alias``) keeps what OpenMeter sent.
* Money (prices) arrive as decimal *strings* and are ``Decimal`` here, dumped back as strings.
  Entitlement quantities (``issueAfterReset``, balances, usage) arrive as JSON *numbers* and are
  ``Decimal`` here too; :data:`JsonNumber` dumps them back as JSON numbers (the spec types them
  ``number``), so a rate card round-trips through ``model_dump(mode="json")`` unchanged.
* Times are timezone-aware (``AwareDatetime``); OpenMeter always sends RFC 3339 with an offset.
* Discriminated unions (prices, rate cards, entitlement templates, entitlements) fall back to a
  generic model for an unknown ``type`` instead of failing.
"""

from __future__ import annotations

import inspect
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
)
from pydantic.alias_generators import to_camel


def _json_number(v: Decimal) -> int | float:
    return int(v) if v == v.to_integral_value() else float(v)


JsonNumber = Annotated[Decimal, PlainSerializer(_json_number, when_used="json")]
"""A Decimal that OpenMeter exchanges as a JSON number."""


class WireModel(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        alias_generator=to_camel,
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A discriminator is part of the wire shape even when it was left at its default, so
        # ``exclude_unset`` dumps (used to keep rate cards as OpenMeter sent them) keep it.
        # Only models declaring ``type`` get the hook: a post-init hook on every model made
        # pydantic call back into Python for each object and doubled the parse time of a page
        # of 500 customers (30 ms -> 10 ms without it; the sweep parses 200 such pages at 100k).
        super().__init_subclass__(**kwargs)
        if "type" in inspect.get_annotations(cls):
            cls.model_post_init = _keep_type  # type: ignore[method-assign]


def _keep_type(self: BaseModel, context: Any, /) -> None:
    self.__pydantic_fields_set__.add("type")


def _type_tag(known: set[str], field: str = "type") -> Any:
    def disc(v: Any) -> str:
        t = v.get(field) if isinstance(v, dict) else getattr(v, field, None)
        return t if isinstance(t, str) and t in known else "other"

    return Discriminator(disc)


# --------------------------------------------------------------------------------------------
# Common


class Period(WireModel):
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime


class RecurringPeriod(WireModel):
    """``usagePeriod`` of an entitlement: ``interval`` is DAY/WEEK/MONTH/YEAR or an ISO string."""

    interval: str
    interval_iso: str | None = Field(default=None, alias="intervalISO")
    anchor: AwareDatetime


T = TypeVar("T")


class Page(WireModel, Generic[T]):
    """``{totalCount, page, pageSize, items}``; ``page``/``pageSize`` are 0 when unpaged."""

    total_count: int = 0
    page: int = 0
    page_size: int = 0
    items: list[T] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Prices


class FlatPrice(WireModel):
    type: Literal["flat"] = "flat"
    amount: Decimal
    payment_term: str | None = None


class UnitPrice(WireModel):
    type: Literal["unit"] = "unit"
    amount: Decimal
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None


class TierFlatPrice(WireModel):
    type: Literal["flat"] = "flat"
    amount: Decimal


class TierUnitPrice(WireModel):
    type: Literal["unit"] = "unit"
    amount: Decimal


class PriceTier(WireModel):
    up_to_amount: Decimal | None = None
    flat_price: TierFlatPrice | None = None
    unit_price: TierUnitPrice | None = None


class TieredPrice(WireModel):
    type: Literal["tiered"] = "tiered"
    mode: Literal["volume", "graduated"] | str
    tiers: list[PriceTier]
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None


class PackagePrice(WireModel):
    type: Literal["package"] = "package"
    amount: Decimal
    quantity_per_package: Decimal
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None


class DynamicPrice(WireModel):
    type: Literal["dynamic"] = "dynamic"
    multiplier: Decimal | None = None
    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None


class OtherPrice(WireModel):
    type: str


Price = Annotated[
    Annotated[FlatPrice, Tag("flat")]
    | Annotated[UnitPrice, Tag("unit")]
    | Annotated[TieredPrice, Tag("tiered")]
    | Annotated[PackagePrice, Tag("package")]
    | Annotated[DynamicPrice, Tag("dynamic")]
    | Annotated[OtherPrice, Tag("other")],
    _type_tag({"flat", "unit", "tiered", "package", "dynamic"}),
]


# --------------------------------------------------------------------------------------------
# Rate cards and plans


class MeteredEntitlementTemplate(WireModel):
    type: Literal["metered"] = "metered"
    metadata: dict[str, str] | None = None
    is_soft_limit: bool | None = None
    issue_after_reset: JsonNumber | None = None
    issue_after_reset_priority: int | None = None
    preserve_overage_at_reset: bool | None = None
    usage_period: str | None = None


class StaticEntitlementTemplate(WireModel):
    type: Literal["static"] = "static"
    metadata: dict[str, str] | None = None
    config: str


class BooleanEntitlementTemplate(WireModel):
    type: Literal["boolean"] = "boolean"
    metadata: dict[str, str] | None = None


class OtherEntitlementTemplate(WireModel):
    type: str
    metadata: dict[str, str] | None = None


EntitlementTemplateModel = Annotated[
    Annotated[MeteredEntitlementTemplate, Tag("metered")]
    | Annotated[StaticEntitlementTemplate, Tag("static")]
    | Annotated[BooleanEntitlementTemplate, Tag("boolean")]
    | Annotated[OtherEntitlementTemplate, Tag("other")],
    _type_tag({"metered", "static", "boolean"}),
]


class RateCardBase(WireModel):
    type: str
    key: str
    name: str
    description: str | None = None
    metadata: dict[str, str] | None = None
    feature_key: str | None = None
    billing_cadence: str | None = None
    price: Price | None = None
    entitlement_template: EntitlementTemplateModel | None = None
    tax_config: dict[str, Any] | None = None
    discounts: dict[str, Any] | None = None


class FlatFeeRateCard(RateCardBase):
    type: Literal["flat_fee"] = "flat_fee"


class UsageBasedRateCard(RateCardBase):
    type: Literal["usage_based"] = "usage_based"


class OtherRateCard(RateCardBase):
    pass


RateCardModel = Annotated[
    Annotated[FlatFeeRateCard, Tag("flat_fee")]
    | Annotated[UsageBasedRateCard, Tag("usage_based")]
    | Annotated[OtherRateCard, Tag("other")],
    _type_tag({"flat_fee", "usage_based"}),
]


class ProRatingConfig(WireModel):
    enabled: bool = True
    mode: str = "prorate_prices"


class PlanPhaseModel(WireModel):
    key: str
    name: str
    description: str | None = None
    metadata: dict[str, str] | None = None
    duration: str | None = None
    rate_cards: list[RateCardModel] = Field(default_factory=list)


class PlanModel(WireModel):
    id: str
    key: str
    version: int
    name: str
    description: str | None = None
    metadata: dict[str, str] | None = None
    currency: str = "USD"
    billing_cadence: str
    pro_rating_config: ProRatingConfig | None = None
    effective_from: AwareDatetime | None = None
    effective_to: AwareDatetime | None = None
    status: str | None = None
    phases: list[PlanPhaseModel] = Field(default_factory=list)
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None


# --------------------------------------------------------------------------------------------
# Features and meters


class Feature(WireModel):
    id: str
    key: str
    name: str | None = None
    meter_slug: str | None = None
    meter_group_by_filters: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    archived_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None


class Meter(WireModel):
    id: str
    slug: str
    name: str | None = None
    description: str | None = None
    aggregation: str
    event_type: str
    value_property: str | None = None
    group_by: dict[str, str] | None = None
    event_from: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None


class MeterQueryRow(WireModel):
    value: Decimal
    window_start: AwareDatetime
    window_end: AwareDatetime
    subject: str | None = None
    customer_id: str | None = None
    group_by: dict[str, str | None] = Field(default_factory=dict)


class MeterQueryResult(WireModel):
    from_: AwareDatetime | None = Field(default=None, alias="from")
    to: AwareDatetime | None = None
    window_size: str | None = None
    data: list[MeterQueryRow] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Entitlements


class EntitlementBase(WireModel):
    type: str
    id: str
    feature_key: str
    feature_id: str | None = None
    active_from: AwareDatetime | None = None
    active_to: AwareDatetime | None = None
    annotations: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    usage_period: RecurringPeriod | None = None
    current_usage_period: Period | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None


class EntitlementMetered(EntitlementBase):
    """v1 ``EntitlementMetered`` (also ``included.entitlement`` of a subscription item)."""

    type: Literal["metered"] = "metered"
    subject_key: str | None = None
    measure_usage_from: AwareDatetime | None = None
    last_reset: AwareDatetime | None = None
    issue_after_reset: JsonNumber | None = None
    issue_after_reset_priority: int | None = None
    is_soft_limit: bool = False
    is_unlimited: bool | None = None
    preserve_overage_at_reset: bool | None = None


class EntitlementStatic(EntitlementBase):
    type: Literal["static"] = "static"
    subject_key: str | None = None
    config: str


class EntitlementBoolean(EntitlementBase):
    type: Literal["boolean"] = "boolean"
    subject_key: str | None = None


class EntitlementOther(EntitlementBase):
    subject_key: str | None = None


Entitlement = Annotated[
    Annotated[EntitlementMetered, Tag("metered")]
    | Annotated[EntitlementStatic, Tag("static")]
    | Annotated[EntitlementBoolean, Tag("boolean")]
    | Annotated[EntitlementOther, Tag("other")],
    _type_tag({"metered", "static", "boolean"}),
]


class EntitlementIssue(WireModel):
    amount: JsonNumber
    priority: int | None = None


class EntitlementMeteredV2(EntitlementMetered):
    customer_id: str | None = None
    customer_key: str | None = None
    issue: EntitlementIssue | None = None


class EntitlementStaticV2(EntitlementStatic):
    customer_id: str | None = None
    customer_key: str | None = None


class EntitlementBooleanV2(EntitlementBoolean):
    customer_id: str | None = None
    customer_key: str | None = None


class EntitlementOtherV2(EntitlementOther):
    customer_id: str | None = None
    customer_key: str | None = None


EntitlementV2 = Annotated[
    Annotated[EntitlementMeteredV2, Tag("metered")]
    | Annotated[EntitlementStaticV2, Tag("static")]
    | Annotated[EntitlementBooleanV2, Tag("boolean")]
    | Annotated[EntitlementOtherV2, Tag("other")],
    _type_tag({"metered", "static", "boolean"}),
]


class EntitlementValueModel(WireModel):
    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None
    config: str | None = None


# --------------------------------------------------------------------------------------------
# Subscriptions and customers


class PlanReference(WireModel):
    id: str | None = None
    key: str
    version: int


class SubscriptionAlignment(WireModel):
    billables_must_align: bool | None = None
    current_aligned_billing_period: Period | None = None


class Subscription(WireModel):
    id: str
    name: str = ""
    description: str | None = None
    metadata: dict[str, str] | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    active_from: AwareDatetime
    active_to: AwareDatetime | None = None
    annotations: dict[str, Any] | None = None
    alignment: SubscriptionAlignment | None = None
    status: str
    customer_id: str
    plan: PlanReference | None = None
    currency: str = "USD"
    billing_cadence: str
    pro_rating_config: ProRatingConfig | None = None
    billing_anchor: AwareDatetime


class SubscriptionItemIncluded(WireModel):
    feature: Feature | None = None
    entitlement: Entitlement | None = None


class SubscriptionItem(WireModel):
    id: str
    key: str
    name: str
    description: str | None = None
    metadata: dict[str, str] | None = None
    feature_key: str | None = None
    active_from: AwareDatetime
    active_to: AwareDatetime | None = None
    billing_cadence: str | None = None
    price: Price | None = None
    discounts: dict[str, Any] | None = None
    tax_config: dict[str, Any] | None = None
    included: SubscriptionItemIncluded | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None


class SubscriptionPhaseExpanded(WireModel):
    id: str | None = None
    key: str
    name: str = ""
    description: str | None = None
    metadata: dict[str, str] | None = None
    discounts: dict[str, Any] | None = None
    active_from: AwareDatetime
    active_to: AwareDatetime | None = None
    items: list[SubscriptionItem] = Field(default_factory=list)
    item_timelines: dict[str, list[SubscriptionItem]] = Field(default_factory=dict)
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None


class SubscriptionExpanded(Subscription):
    phases: list[SubscriptionPhaseExpanded] = Field(default_factory=list)


class SubscriptionChangeResponse(WireModel):
    current: Subscription
    next: SubscriptionExpanded


class CustomerUsageAttribution(WireModel):
    subject_keys: list[str] = Field(default_factory=list)


class Customer(WireModel):
    id: str
    name: str
    key: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    usage_attribution: CustomerUsageAttribution | None = None
    primary_email: str | None = None
    currency: str | None = None
    current_subscription_id: str | None = None
    subscriptions: list[Subscription] | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None


# --------------------------------------------------------------------------------------------
# Slim listings for sweeps: only what a sweep checks, unknown fields ignored, so a page of 500
# customers parses in a fraction of the time the full models take.


class _Slim(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)


class PlanRefListing(_Slim):
    key: str
    version: int


class SubscriptionListing(_Slim):
    id: str
    status: str
    active_from: AwareDatetime
    active_to: AwareDatetime | None = None
    annotations: dict[str, Any] | None = None
    plan: PlanRefListing | None = None
    updated_at: AwareDatetime | None = None  # the drift token (reconciler.domain.drift)


class CustomerListing(_Slim):
    id: str
    key: str | None = None
    subscriptions: list[SubscriptionListing] | None = None


# --------------------------------------------------------------------------------------------
# Events


class CloudEvent(WireModel):
    """A CloudEvents 1.0 event as OpenMeter ingests it (dedupe key: ``source`` + ``id``)."""

    id: str
    source: str
    type: str
    subject: str
    specversion: str = "1.0"
    time: AwareDatetime | None = None
    data: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# Billing (read side: ``listInvoices`` with ``expand=lines``)


class IdRef(WireModel):
    id: str


class InvoiceTotals(WireModel):
    amount: Decimal = Decimal(0)
    total: Decimal = Decimal(0)


class InvoiceLineSubscriptionRef(WireModel):
    subscription: IdRef
    phase: IdRef
    item: IdRef
    billing_period: Period | None = None


class InvoiceLineModel(WireModel):
    id: str
    name: str
    currency: str
    period: Period
    invoice_at: AwareDatetime
    managed_by: str | None = None
    status: str | None = None
    deleted_at: AwareDatetime | None = None
    price: dict[str, Any] | None = None
    totals: InvoiceTotals | None = None
    subscription: InvoiceLineSubscriptionRef | None = None


class InvoiceStatusDetails(WireModel):
    immutable: bool
    failed: bool = False
    extended_status: str = ""


class InvoiceModel(WireModel):
    id: str
    number: str = ""
    currency: str
    status: str
    status_details: InvoiceStatusDetails
    issued_at: AwareDatetime | None = None
    deleted_at: AwareDatetime | None = None
    lines: list[InvoiceLineModel] = Field(default_factory=list)
