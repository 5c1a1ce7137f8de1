"""Wire models (``reconciler.openmeter.models``) → domain types (``reconciler.domain.model``).

The interesting part is identity: a plan's rate card and the subscription item OpenMeter creates
from it must get the same :func:`reconciler.domain.model.item_fingerprint`. A subscription item
does not expose the rate card's entitlement template, only the materialised entitlement
(``included.entitlement``, the v1 ``Entitlement`` shape), so the template is reconstructed from
it, and the rate-card side fills in the defaults OpenMeter applies when it materialises a
template:

* ``usagePeriod`` of a metered template defaults to the rate card's ``billingCadence``
  (beta.227 ``openmeter/productcatalog/http/mapping.go`` ``AsEntitlementTemplate``);
* the entitlement shows its period as ``usagePeriod.intervalISO`` (or, on older shapes, only
  ``interval`` = ``DAY|WEEK|MONTH|YEAR``, or the ISO string itself —
  ``openmeter/entitlement/driver/parser.go`` ``MapRecurrenceToAPI``);
* ``isSoftLimit`` / ``preserveOverageAtReset`` absent mean ``false``; metadata absent means empty;
* a static entitlement's ``config`` is a JSON document in a string, compared canonically.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from reconciler.domain.invoices import InvoicedLine
from reconciler.domain.model import (
    EntitlementTemplate,
    EntitlementValue,
    ObservedEntitlement,
    ObservedItem,
    ObservedPhase,
    ObservedSubscription,
    Plan,
    PlanPhase,
    PlanRef,
    RateCard,
    SubscriptionStatus,
    canonical_json,
)
from reconciler.openmeter.models import (
    BooleanEntitlementTemplate,
    EntitlementBase,
    EntitlementMetered,
    EntitlementStatic,
    EntitlementValueModel,
    InvoiceModel,
    MeteredEntitlementTemplate,
    OtherEntitlementTemplate,
    PlanModel,
    RateCardBase,
    StaticEntitlementTemplate,
    SubscriptionExpanded,
    SubscriptionItem,
    SubscriptionPhaseExpanded,
    WireModel,
)

_INTERVALS = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}
# Which ``null``s OpenMeter writes in a rate card. Its Go API structs (beta.227
# ``api/api.gen.go``) serialise these without ``omitempty``, so a plan answer carries them as
# ``null`` and the spec marks them required-and-nullable; every other optional field is
# ``omitempty`` (never ``null`` on the wire, and *not* nullable in the spec: kin-openapi would
# reject a ``null`` there). ``rate_card_raw`` keeps exactly these and drops other ``null``s.
_CARD_NULLS = frozenset({"price", "billingCadence", "metadata"})  # RateCardFlatFee/UsageBased
_TIER_NULLS = frozenset({"flatPrice", "unitPrice"})  # PriceTier
_CARD_REQUIRED_NULLABLE = ("billingCadence", "price")


def _json(model: WireModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _config_norm(config: str | None) -> str | None:
    if config is None:
        return None
    try:
        return canonical_json(json.loads(config))
    except ValueError:
        return config


def usage_period_iso(interval: str | None, interval_iso: str | None = None) -> str | None:
    """ISO 8601 duration of an entitlement's ``usagePeriod``."""
    if interval_iso:
        return interval_iso
    if interval is None:
        return None
    return _INTERVALS.get(interval.upper(), interval)


def _drop_nulls(value: Any, keep: frozenset[str] = frozenset()) -> Any:
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None or k in keep}
    return value


def rate_card_raw(card: RateCardBase) -> dict[str, Any]:
    """The rate card's JSON as OpenMeter writes it, ready to send back in ``add_item``.

    Dumped by alias with only the fields that were present (unknown ones included), ``null``
    kept where OpenMeter writes ``null`` and dropped where OpenMeter would omit the field.
    """
    dumped = card.model_dump(mode="json", by_alias=True, exclude_unset=True)
    raw: dict[str, Any] = {}
    for k, v in dumped.items():
        if v is None:
            if k in _CARD_NULLS:
                raw[k] = None
        elif k == "price" and isinstance(v, dict):
            price = _drop_nulls({pk: pv for pk, pv in v.items() if pk != "tiers"})
            if "tiers" in v:
                price["tiers"] = [
                    {
                        **_drop_nulls(t, _TIER_NULLS),
                        **{tk: t.get(tk) for tk in _TIER_NULLS},
                    }
                    for t in v["tiers"]
                ]
            raw[k] = price
        else:
            raw[k] = _drop_nulls(v)
    for k in _CARD_REQUIRED_NULLABLE:
        raw.setdefault(k, None)
    return raw


_TemplateSource = (
    MeteredEntitlementTemplate
    | StaticEntitlementTemplate
    | BooleanEntitlementTemplate
    | OtherEntitlementTemplate
    | EntitlementBase
)


def _template(src: _TemplateSource, usage_period: str | None) -> EntitlementTemplate:
    """The domain template of a rate card's entitlement template or of an entitlement
    materialised from one (the two name the template's fields alike); ``usage_period`` is the
    metered one's, already resolved by the caller."""
    metadata = dict(src.metadata or {})
    if isinstance(src, MeteredEntitlementTemplate | EntitlementMetered):
        return EntitlementTemplate(
            type="metered",
            issue_after_reset=src.issue_after_reset,
            usage_period=usage_period,
            is_soft_limit=bool(src.is_soft_limit),
            preserve_overage_at_reset=bool(src.preserve_overage_at_reset),
            issue_after_reset_priority=src.issue_after_reset_priority,
            metadata=metadata,
        )
    if isinstance(src, StaticEntitlementTemplate | EntitlementStatic):
        return EntitlementTemplate(
            type="static", config=_config_norm(src.config), metadata=metadata
        )
    return EntitlementTemplate(type=src.type, metadata=metadata)


def to_entitlement_template(card: RateCardBase) -> EntitlementTemplate | None:
    tpl = card.entitlement_template
    if tpl is None:
        return None
    usage_period = tpl.usage_period if isinstance(tpl, MeteredEntitlementTemplate) else None
    return _template(tpl, usage_period or card.billing_cadence)


def to_rate_card(card: RateCardBase) -> RateCard:
    raw = rate_card_raw(card)
    return RateCard(
        key=card.key,
        type=card.type,
        name=card.name,
        feature_key=card.feature_key,
        billing_cadence=card.billing_cadence,
        price=raw.get("price"),
        entitlement=to_entitlement_template(card),
        raw=raw,
    )


def to_plan(plan: PlanModel) -> Plan:
    return Plan(
        id=plan.id,
        key=plan.key,
        version=plan.version,
        name=plan.name,
        currency=plan.currency,
        billing_cadence=plan.billing_cadence,
        pro_rating_enabled=plan.pro_rating_config.enabled if plan.pro_rating_config else True,
        phases=tuple(
            PlanPhase(
                key=ph.key,
                name=ph.name,
                duration=ph.duration,
                rate_cards=tuple(to_rate_card(c) for c in ph.rate_cards),
            )
            for ph in plan.phases
        ),
        status=plan.status or "active",
    )


def entitlement_template_of(ent: EntitlementBase) -> EntitlementTemplate:
    """The entitlement template an observed entitlement was materialised from."""
    up = ent.usage_period
    return _template(ent, usage_period_iso(up.interval, up.interval_iso) if up else None)


def to_observed_item(item: SubscriptionItem) -> ObservedItem:
    entitlement: ObservedEntitlement | None = None
    ent = item.included.entitlement if item.included else None
    if ent is not None:
        measure_from = ent.measure_usage_from if isinstance(ent, EntitlementMetered) else None
        cur = ent.current_usage_period
        entitlement = ObservedEntitlement(
            id=ent.id,
            feature_key=ent.feature_key,
            type=ent.type,
            template=entitlement_template_of(ent),
            active_from=ent.active_from or item.active_from,
            active_to=ent.active_to,
            measure_usage_from=measure_from,
            usage_period_anchor=ent.usage_period.anchor if ent.usage_period else None,
            current_usage_period=(cur.from_, cur.to) if cur else None,
        )
    return ObservedItem(
        id=item.id,
        key=item.key,
        name=item.name,
        feature_key=item.feature_key,
        billing_cadence=item.billing_cadence,
        price=_json(item.price),
        discounts=item.discounts,
        entitlement=entitlement,
        active_from=item.active_from,
        active_to=item.active_to,
    )


def to_observed_phase(phase: SubscriptionPhaseExpanded) -> ObservedPhase:
    return ObservedPhase(
        key=phase.key,
        name=phase.name,
        active_from=phase.active_from,
        active_to=phase.active_to,
        items=tuple(to_observed_item(i) for i in phase.items),
        timelines={
            k: tuple(to_observed_item(i) for i in versions)
            for k, versions in phase.item_timelines.items()
        },
    )


def to_observed_subscription(sub: SubscriptionExpanded) -> ObservedSubscription:
    period = sub.alignment.current_aligned_billing_period if sub.alignment else None
    return ObservedSubscription(
        id=sub.id,
        customer_id=sub.customer_id,
        status=SubscriptionStatus(sub.status),
        plan=PlanRef(sub.plan.key, sub.plan.version, sub.plan.id) if sub.plan else None,
        name=sub.name,
        currency=sub.currency,
        billing_cadence=sub.billing_cadence,
        billing_anchor=sub.billing_anchor,
        active_from=sub.active_from,
        active_to=sub.active_to,
        pro_rating_enabled=sub.pro_rating_config.enabled if sub.pro_rating_config else True,
        phases=tuple(to_observed_phase(p) for p in sub.phases),
        current_period=(period.from_, period.to) if period else None,
        annotations=dict(sub.annotations or {}),
        metadata=dict(sub.metadata or {}),
        updated_at=sub.updated_at,
    )


def to_entitlement_value(value: EntitlementValueModel) -> EntitlementValue:
    return EntitlementValue(
        has_access=value.has_access,
        balance=value.balance,
        usage=value.usage,
        overage=value.overage,
        total_available_grant_amount=value.total_available_grant_amount,
    )


def to_invoiced_lines(
    invoices: list[InvoiceModel], subscription_ids: set[str]
) -> list[InvoicedLine]:
    """The live subscription-managed lines of ``invoices`` that belong to ``subscription_ids``.

    beta.227 writes the line's ``subscription`` reference with two ids swapped
    (``billing/httpdriver/invoiceline.go`` ``mapSubscriptionReferencesToAPI``: ``item.id`` holds
    the subscription id and ``subscription.id`` the item id); the subscription is recognised by
    its id on either side, so a fixed OpenMeter reads the same.
    """
    out: list[InvoicedLine] = []
    for inv in invoices:
        if inv.deleted_at is not None:
            continue
        for line in inv.lines:
            ref = line.subscription
            if line.deleted_at is not None or ref is None:
                continue
            if ref.item.id in subscription_ids:
                sub_id, item_id = ref.item.id, ref.subscription.id
            elif ref.subscription.id in subscription_ids:
                sub_id, item_id = ref.subscription.id, ref.item.id
            else:
                continue
            price = line.price or {}
            if line.totals is not None:
                amount = line.totals.total
            else:  # a gathering line may come without totals; a flat fee's price is its amount
                amount = (
                    Decimal(str(price.get("amount", "0")))
                    if price.get("type") == "flat"
                    else Decimal(0)
                )
            out.append(
                InvoicedLine(
                    invoice_id=inv.id,
                    invoice_number=inv.number,
                    invoice_status=inv.status,
                    immutable=inv.status_details.immutable,
                    line_id=line.id,
                    item_id=item_id,
                    subscription_id=sub_id,
                    name=line.name,
                    period=(line.period.from_, line.period.to),
                    currency=line.currency,
                    amount=amount,
                    price_type=price.get("type"),
                    payment_term=price.get("paymentTerm"),
                )
            )
    return out
