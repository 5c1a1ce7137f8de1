"""Wire JSON → domain types, and the identity rule: a subscription item OpenMeter creates from a
plan rate card has the same fingerprint as the rate card."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from reconciler.domain.model import (
    EntitlementTemplate,
    PlanRef,
    SubscriptionStatus,
)
from reconciler.openmeter.mapping import (
    rate_card_raw,
    to_entitlement_value,
    to_observed_item,
    to_observed_subscription,
    to_plan,
    usage_period_iso,
)
from reconciler.openmeter.models import (
    EntitlementValueModel,
    PlanModel,
    SubscriptionChangeResponse,
    SubscriptionExpanded,
    SubscriptionItem,
    UsageBasedRateCard,
)

from .payloads import (
    API_CREDITS_CARD,
    CHANGE_RESPONSE,
    CUS_ID,
    ENTITLEMENT_VALUE,
    FEATURE,
    ITEM_NEW,
    ITEM_OLD,
    NEXT_ID,
    PLAN_FREE_ID,
    PLAN_STARTER,
    SUB_ID,
    SUBSCRIPTION_EXPANDED,
)

T0 = datetime(2026, 1, 10, 8, 30, 45, 123456, tzinfo=UTC)


def test_to_plan() -> None:
    plan = to_plan(PlanModel.model_validate(PLAN_STARTER))
    assert plan.ref == PlanRef("starter", 2, PLAN_STARTER["id"])
    assert (plan.currency, plan.billing_cadence, plan.pro_rating_enabled, plan.status) == (
        "USD",
        "P1M",
        True,
        "active",
    )
    phase = plan.phase("default")
    assert phase is not None and phase.duration is None
    assert [c.key for c in phase.rate_cards] == [
        "base_fee",
        "api_credits",
        "tokens",
        "sso",
        "models",
        "storage",
        "calls",
        "llm_cost",
    ]
    credits = phase.card("api_credits")
    assert credits is not None
    assert (credits.type, credits.feature_key, credits.billing_cadence, credits.price) == (
        "usage_based",
        "api_credits",
        "P1M",
        None,
    )
    assert credits.entitlement == EntitlementTemplate(
        type="metered",
        issue_after_reset=Decimal(550000),
        usage_period="P1M",
        is_soft_limit=False,
        preserve_overage_at_reset=False,
        issue_after_reset_priority=1,
        metadata={"tier": "starter"},
    )
    # the raw card is OpenMeter's JSON, ready for add_item
    assert credits.raw == API_CREDITS_CARD
    base = phase.card("base_fee")
    assert base is not None
    assert base.price == {"type": "flat", "amount": "29", "paymentTerm": "in_advance"}
    assert base.entitlement is None
    tiers = phase.card("tokens")
    assert tiers is not None and tiers.price is not None
    assert tiers.price["tiers"][0]["unitPrice"] == {"type": "unit", "amount": "0.01"}
    models = phase.card("models")
    assert models is not None and models.entitlement is not None
    assert models.entitlement.type == "static"
    assert models.entitlement.config == '{"models":["a","b"]}'
    sso = phase.card("sso")
    assert sso is not None and sso.entitlement == EntitlementTemplate(type="boolean")


def test_rate_card_raw_keeps_unknown_fields_and_exact_decimals() -> None:
    card = {
        **API_CREDITS_CARD,
        "price": {"type": "unit", "amount": "0.0100"},
        "futureField": {"x": 1},
        "metadata": None,
        "taxConfig": None,
        "description": None,
        "entitlementTemplate": {
            "type": "metered",
            "issueAfterReset": 0.5,
            "usagePeriod": "P1D",
            "metadata": None,
        },
    }
    raw = rate_card_raw(UsageBasedRateCard.model_validate(card))
    # null where OpenMeter writes null (required-nullable), omitted where it would omit
    assert "metadata" in raw and raw["metadata"] is None
    assert "taxConfig" not in raw and "description" not in raw
    assert raw["price"] == {"type": "unit", "amount": "0.0100"}
    assert raw["futureField"] == {"x": 1}
    assert raw["entitlementTemplate"] == {
        "type": "metered",
        "issueAfterReset": 0.5,
        "usagePeriod": "P1D",
    }


def test_to_observed_subscription() -> None:
    obs = to_observed_subscription(SubscriptionExpanded.model_validate(SUBSCRIPTION_EXPANDED))
    assert obs.id == SUB_ID and obs.customer_id == CUS_ID
    assert obs.status is SubscriptionStatus.ACTIVE
    assert obs.plan == PlanRef("free", 1, PLAN_FREE_ID)
    assert obs.billing_anchor == T0 and obs.active_from == T0 and obs.active_to is None
    assert obs.current_period == (
        datetime(2026, 3, 10, 8, 30, 45, 123456, tzinfo=UTC),
        datetime(2026, 4, 10, 8, 30, 45, 123456, tzinfo=UTC),
    )
    assert obs.superseding_id == NEXT_ID and obs.previous_id is None
    assert obs.pro_rating_enabled is True
    phase = obs.phase_at(datetime(2026, 3, 21, tzinfo=UTC))
    assert phase is not None and phase.key == "default"
    assert [i.key for i in phase.items] == ["base_fee", "api_credits"]
    timeline = phase.timelines["api_credits"]
    assert [i.id for i in timeline] == [ITEM_OLD["id"], ITEM_NEW["id"]]
    assert timeline[0].active_to == datetime(2026, 3, 20, 12, 0, 30, tzinfo=UTC)
    item = phase.items[1]
    ent = item.entitlement
    assert ent is not None
    assert ent.measure_usage_from == datetime(2026, 1, 10, 8, 30, tzinfo=UTC)
    assert ent.usage_period_anchor == datetime(2026, 1, 10, 8, 30, tzinfo=UTC)
    assert ent.current_usage_period == (
        datetime(2026, 3, 10, 8, 30, tzinfo=UTC),
        datetime(2026, 4, 10, 8, 30, tzinfo=UTC),
    )
    assert ent.template.issue_after_reset == Decimal(550000)
    assert ent.template.usage_period == "P1M"
    assert item.provenance == {"reconciler.plan": "starter"}
    assert timeline[0].provenance == {}
    assert phase.items[0].entitlement is None
    assert phase.items[0].price == {"type": "flat", "amount": "29.00", "paymentTerm": "in_advance"}


def test_change_response_next_maps_as_scheduled_successor() -> None:
    resp = SubscriptionChangeResponse.model_validate(CHANGE_RESPONSE)
    nxt = to_observed_subscription(resp.next)
    assert nxt.status is SubscriptionStatus.SCHEDULED
    assert nxt.previous_id == SUB_ID
    assert nxt.current_period is None  # not started: OpenMeter omits the aligned period
    assert nxt.plan == PlanRef("free", 2, PLAN_FREE_ID)


def test_to_entitlement_value() -> None:
    v = to_entitlement_value(EntitlementValueModel.model_validate(ENTITLEMENT_VALUE))
    assert (v.has_access, v.balance, v.usage, v.overage, v.total_available_grant_amount) == (
        True,
        Decimal(549997),
        Decimal(3),
        Decimal(0),
        Decimal(550000),
    )
    none = to_entitlement_value(EntitlementValueModel.model_validate({"hasAccess": False}))
    assert (none.has_access, none.balance, none.usage) == (False, None, None)


@pytest.mark.parametrize(
    ("interval", "iso", "expected"),
    [
        ("DAY", None, "P1D"),
        ("WEEK", None, "P1W"),
        ("MONTH", None, "P1M"),
        ("YEAR", None, "P1Y"),
        ("P3M", None, "P3M"),
        ("MONTH", "P1M", "P1M"),
        ("PT2H", "PT2H", "PT2H"),
    ],
)
def test_usage_period_iso(interval: str, iso: str | None, expected: str) -> None:
    assert usage_period_iso(interval, iso) == expected


# --- identity: plan rate card ↔ subscription item ------------------------------------------

_ENUM = {"P1D": "DAY", "P1W": "WEEK", "P1M": "MONTH", "P1Y": "YEAR"}


def materialise(card: dict[str, Any], *, legacy_interval_only: bool = False) -> dict[str, Any]:
    """The ``SubscriptionItem`` JSON OpenMeter shows for an item created from ``card``.

    Follows beta.227: the item copies key/featureKey/billingCadence/price/discounts
    (``mapping.go`` ``MapSubscriptionItemToAPI``); the entitlement is built from the template
    with ``usagePeriod`` defaulting to the billing cadence, shown as ``{interval, intervalISO,
    anchor}`` (``parser.go`` ``MapRecurrenceToAPI``); template metadata is copied and the
    reconciler's provenance tags ride along; a static config is re-serialised.
    """
    tpl = card.get("entitlementTemplate")
    included: dict[str, Any] | None = None
    if card.get("featureKey"):
        included = {"feature": {**FEATURE, "key": card["featureKey"]}}
    if tpl is not None:
        ent: dict[str, Any] = {
            "type": tpl["type"],
            "id": "01JQ8Z6V2X3Y4Z5A6B7C8D9EN9",
            "featureKey": card["featureKey"],
            "featureId": FEATURE["id"],
            "subjectKey": "acme",
            "activeFrom": "2026-03-20T12:00:30Z",
            "metadata": {**(tpl.get("metadata") or {}), "reconciler.change": "chg_1"},
            "createdAt": "2026-03-20T12:00:30Z",
            "updatedAt": "2026-03-20T12:00:30Z",
        }
        if tpl["type"] == "metered":
            iso = tpl.get("usagePeriod") or card["billingCadence"]
            period: dict[str, Any] = {
                "interval": _ENUM.get(iso, iso),
                "anchor": "2026-01-10T08:30:00Z",
            }
            if not legacy_interval_only:
                period["intervalISO"] = iso
            ent |= {
                "usagePeriod": period,
                "measureUsageFrom": "2026-01-10T08:30:00Z",
                "lastReset": "2026-01-10T08:30:00Z",
                "currentUsagePeriod": {
                    "from": "2026-03-10T08:30:00Z",
                    "to": "2026-04-10T08:30:00Z",
                },
                "issueAfterReset": tpl.get("issueAfterReset"),
                "isSoftLimit": tpl.get("isSoftLimit", False),
                "isUnlimited": False,
                "preserveOverageAtReset": tpl.get("preserveOverageAtReset", False),
            }
        elif tpl["type"] == "static":
            ent["config"] = tpl["config"].replace(" ", "")
        included = {**(included or {"feature": FEATURE}), "entitlement": ent}
    item: dict[str, Any] = {
        "id": "01JQ8Z6V2X3Y4Z5A6B7C8D9TM9",
        "key": card["key"],
        "name": card["name"],
        "activeFrom": "2026-03-20T12:00:30Z",
        "billingCadence": card.get("billingCadence"),
        "price": copy.deepcopy(card.get("price")),
        "createdAt": "2026-03-20T12:00:30Z",
        "updatedAt": "2026-03-20T12:00:30Z",
    }
    if card.get("featureKey"):
        item["featureKey"] = card["featureKey"]
    if card.get("discounts"):
        item["discounts"] = card["discounts"]
    if included:
        item["included"] = included
    return item


STARTER = to_plan(PlanModel.model_validate(PLAN_STARTER))


@pytest.mark.parametrize("card", STARTER.phases[0].rate_cards, ids=lambda c: c.key)
def test_item_created_from_rate_card_has_the_rate_cards_fingerprint(card: Any) -> None:
    item = to_observed_item(SubscriptionItem.model_validate(materialise(dict(card.raw))))
    assert item.fingerprint() == card.fingerprint()


def test_fingerprint_with_template_usage_period_defaulted_and_legacy_interval() -> None:
    card_json = copy.deepcopy(API_CREDITS_CARD)
    del card_json["entitlementTemplate"]["usagePeriod"]
    card = (
        to_plan(
            PlanModel.model_validate(
                {
                    **PLAN_STARTER,
                    "phases": [{"key": "default", "name": "D", "rateCards": [card_json]}],
                }
            )
        )
        .phases[0]
        .rate_cards[0]
    )
    assert card.entitlement is not None and card.entitlement.usage_period == "P1M"
    item = to_observed_item(
        SubscriptionItem.model_validate(materialise(card_json, legacy_interval_only=True))
    )
    assert item.fingerprint() == card.fingerprint()


def test_observed_fixture_item_matches_starter_card_and_old_version_does_not() -> None:
    card = STARTER.phases[0].card("api_credits")
    base = STARTER.phases[0].card("base_fee")
    assert card is not None and base is not None
    obs = to_observed_subscription(SubscriptionExpanded.model_validate(SUBSCRIPTION_EXPANDED))
    items = {i.key: i for i in obs.phases[0].items}
    assert items["api_credits"].fingerprint() == card.fingerprint()
    assert items["base_fee"].fingerprint() == base.fingerprint()  # "29.00" == "29"
    old = obs.phases[0].timelines["api_credits"][0]
    assert old.fingerprint() != card.fingerprint()  # 50000 vs 550000, other metadata


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("entitlementTemplate", "issueAfterReset"), 1),
        (("entitlementTemplate", "isSoftLimit"), True),
        (("entitlementTemplate", "metadata"), {"tier": "pro"}),
        (("billingCadence",), "P1Y"),
        (("price",), {"type": "unit", "amount": "0.01"}),
    ],
)
def test_fingerprint_sees_content_changes(path: tuple[str, ...], value: Any) -> None:
    card = STARTER.phases[0].card("api_credits")
    assert card is not None
    changed = copy.deepcopy(dict(card.raw))
    target = changed
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    item = to_observed_item(SubscriptionItem.model_validate(materialise(changed)))
    assert item.fingerprint() != card.fingerprint()
