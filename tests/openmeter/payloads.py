"""Realistic OpenMeter beta.227 JSON, following the examples of
``../shared/reference/openmeter-semantics.md`` §3 (field lists from ``api/openapi.yaml``)."""

from __future__ import annotations

import copy
from typing import Any

SUB_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9E0F"
NEXT_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9E1G"
CUS_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9CST"
PLAN_FREE_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9PF1"
PLAN_STARTER_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9PS2"
ENT_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9EN2"
FEATURE_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9FEA"
ITEM_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9TM1"
ITEM_OLD_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9TM0"
BASE_ITEM_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9TMB"
PHASE_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9PH1"
METER_ID = "01JQ8Z6V2X3Y4Z5A6B7C8D9MTR"

SUBSCRIPTION: dict[str, Any] = {
    "id": SUB_ID,
    "name": "Free",
    "description": None,
    "metadata": None,
    "createdAt": "2026-01-10T08:30:45.201Z",
    "updatedAt": "2026-03-20T12:00:30.410Z",
    "activeFrom": "2026-01-10T08:30:45.123456Z",
    "activeTo": None,
    "annotations": {"subscription.superseding.id": NEXT_ID},
    "alignment": {"billablesMustAlign": True},
    "status": "active",
    "customerId": CUS_ID,
    "plan": {"id": PLAN_FREE_ID, "key": "free", "version": 1},
    "currency": "USD",
    "billingCadence": "P1M",
    "proRatingConfig": {"enabled": True, "mode": "prorate_prices"},
    "billingAnchor": "2026-01-10T08:30:45.123456Z",
}

API_CREDITS_CARD: dict[str, Any] = {
    "type": "usage_based",
    "key": "api_credits",
    "name": "API Credits",
    "featureKey": "api_credits",
    "billingCadence": "P1M",
    "price": None,
    "entitlementTemplate": {
        "type": "metered",
        "issueAfterReset": 550000,
        "issueAfterResetPriority": 1,
        "isSoftLimit": False,
        "preserveOverageAtReset": False,
        "usagePeriod": "P1M",
        "metadata": {"tier": "starter"},
    },
}

BASE_FEE_CARD: dict[str, Any] = {
    "type": "flat_fee",
    "key": "base_fee",
    "name": "Base fee",
    "featureKey": None,
    "billingCadence": "P1M",
    "price": {"type": "flat", "amount": "29", "paymentTerm": "in_advance"},
    "discounts": {"percentage": {"percentage": 10}},
    "taxConfig": None,
    "entitlementTemplate": None,
}

TIERED_CARD: dict[str, Any] = {
    "type": "usage_based",
    "key": "tokens",
    "name": "Tokens",
    "featureKey": "tokens",
    "billingCadence": "P1M",
    "price": {
        "type": "tiered",
        "mode": "graduated",
        "minimumAmount": "0",
        "maximumAmount": None,
        "tiers": [
            {
                "upToAmount": "1000",
                "flatPrice": None,
                "unitPrice": {"type": "unit", "amount": "0.01"},
            },
            {
                "upToAmount": None,
                "flatPrice": {"type": "flat", "amount": "5"},
                "unitPrice": {"type": "unit", "amount": "0.005"},
            },
        ],
    },
    "entitlementTemplate": None,
}

SSO_CARD: dict[str, Any] = {
    "type": "flat_fee",
    "key": "sso",
    "name": "SSO",
    "featureKey": "sso",
    "billingCadence": None,
    "price": None,
    "entitlementTemplate": {"type": "boolean"},
}

MODELS_CARD: dict[str, Any] = {
    "type": "flat_fee",
    "key": "models",
    "name": "Models",
    "featureKey": "models",
    "billingCadence": None,
    "price": None,
    "entitlementTemplate": {"type": "static", "config": '{"models": ["a", "b"]}'},
}

PACKAGE_CARD: dict[str, Any] = {
    "type": "usage_based",
    "key": "storage",
    "name": "Storage",
    "featureKey": "storage",
    "billingCadence": "P1M",
    "price": {"type": "package", "amount": "10", "quantityPerPackage": "100"},
}

UNIT_CARD: dict[str, Any] = {
    "type": "usage_based",
    "key": "calls",
    "name": "Calls",
    "featureKey": "calls",
    "billingCadence": "P1M",
    "price": {
        "type": "unit",
        "amount": "0.10",
        "minimumAmount": "5",
        "maximumAmount": "500",
    },
}

DYNAMIC_CARD: dict[str, Any] = {
    "type": "usage_based",
    "key": "llm_cost",
    "name": "LLM cost",
    "featureKey": "llm_cost",
    "billingCadence": "P1M",
    "price": {"type": "dynamic", "multiplier": "1.2"},
}

PLAN_STARTER: dict[str, Any] = {
    "id": PLAN_STARTER_ID,
    "key": "starter",
    "version": 2,
    "name": "Starter",
    "description": None,
    "metadata": {},
    "currency": "USD",
    "billingCadence": "P1M",
    "proRatingConfig": {"enabled": True, "mode": "prorate_prices"},
    "alignment": {"billablesMustAlign": True},
    "effectiveFrom": "2026-01-01T00:00:00Z",
    "effectiveTo": None,
    "status": "active",
    "phases": [
        {
            "key": "default",
            "name": "Default",
            "description": None,
            "metadata": None,
            "duration": None,
            "rateCards": [
                BASE_FEE_CARD,
                API_CREDITS_CARD,
                TIERED_CARD,
                SSO_CARD,
                MODELS_CARD,
                PACKAGE_CARD,
                UNIT_CARD,
                DYNAMIC_CARD,
            ],
        }
    ],
    "validationErrors": None,
    "createdAt": "2025-12-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:00:00Z",
}

FEATURE: dict[str, Any] = {
    "id": FEATURE_ID,
    "key": "api_credits",
    "name": "API Credits",
    "meterSlug": "api_calls",
    "createdAt": "2025-12-01T00:00:00Z",
    "updatedAt": "2025-12-01T00:00:00Z",
}


def _item(
    item_id: str, issue: int, active_from: str, active_to: str | None, ent_id: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "key": "api_credits",
        "featureKey": "api_credits",
        "name": "API Credits",
        "description": None,
        "metadata": None,
        "createdAt": active_from,
        "updatedAt": active_from,
        "deletedAt": None,
        "activeFrom": active_from,
        "activeTo": active_to,
        "billingCadence": "P1M",
        "price": None,
        "discounts": None,
        "taxConfig": None,
        "included": {
            "feature": FEATURE,
            "entitlement": {
                "type": "metered",
                "id": ent_id,
                "featureKey": "api_credits",
                "featureId": FEATURE_ID,
                "subjectKey": "acme",
                "activeFrom": active_from,
                "activeTo": active_to,
                "measureUsageFrom": "2026-01-10T08:30:00Z",
                "lastReset": "2026-01-10T08:30:00Z",
                "usagePeriod": {
                    "interval": "MONTH",
                    "intervalISO": "P1M",
                    "anchor": "2026-01-10T08:30:00Z",
                },
                "currentUsagePeriod": {
                    "from": "2026-03-10T08:30:00Z",
                    "to": "2026-04-10T08:30:00Z",
                },
                "issueAfterReset": issue,
                "isSoftLimit": False,
                "isUnlimited": False,
                "preserveOverageAtReset": False,
                "annotations": {"subscription.id": SUB_ID},
                "metadata": {"tier": "starter", "reconciler.plan": "starter"},
                "createdAt": active_from,
                "updatedAt": active_from,
            },
        },
    }


ITEM_NEW = _item(ITEM_ID, 550000, "2026-03-20T12:00:30Z", None, ENT_ID)
ITEM_OLD = _item(
    ITEM_OLD_ID, 50000, "2026-01-10T08:30:45.123456Z", "2026-03-20T12:00:30Z", ENT_ID[:-1] + "1"
)
ITEM_OLD["included"]["entitlement"]["metadata"] = None

BASE_ITEM: dict[str, Any] = {
    "id": BASE_ITEM_ID,
    "key": "base_fee",
    "featureKey": None,
    "name": "Base fee",
    "activeFrom": "2026-01-10T08:30:45.123456Z",
    "activeTo": None,
    "billingCadence": "P1M",
    "price": {"type": "flat", "amount": "29.00", "paymentTerm": "in_advance"},
    "discounts": {"percentage": {"percentage": 10}},
    "taxConfig": None,
    "createdAt": "2026-01-10T08:30:45.201Z",
    "updatedAt": "2026-01-10T08:30:45.201Z",
}

SUBSCRIPTION_EXPANDED: dict[str, Any] = {
    **SUBSCRIPTION,
    "alignment": {
        "billablesMustAlign": True,
        "currentAlignedBillingPeriod": {
            "from": "2026-03-10T08:30:45.123456Z",
            "to": "2026-04-10T08:30:45.123456Z",
        },
    },
    "phases": [
        {
            "id": PHASE_ID,
            "key": "default",
            "name": "Default",
            "description": None,
            "metadata": None,
            "createdAt": "2026-01-10T08:30:45.201Z",
            "updatedAt": "2026-03-20T12:00:30.410Z",
            "discounts": None,
            "activeFrom": "2026-01-10T08:30:45.123456Z",
            "activeTo": None,
            "items": [BASE_ITEM, ITEM_NEW],
            "itemTimelines": {"base_fee": [BASE_ITEM], "api_credits": [ITEM_OLD, ITEM_NEW]},
        }
    ],
}

CHANGE_RESPONSE: dict[str, Any] = {
    "current": {
        **SUBSCRIPTION,
        "activeTo": "2026-04-10T08:30:45.123456Z",
        "status": "canceled",
        "annotations": {"subscription.superseding.id": NEXT_ID},
    },
    "next": {
        **SUBSCRIPTION_EXPANDED,
        "id": NEXT_ID,
        "activeFrom": "2026-04-10T08:30:45.123456Z",
        "status": "scheduled",
        "plan": {"id": PLAN_FREE_ID, "key": "free", "version": 2},
        "annotations": {"subscription.previous.id": SUB_ID},
        "alignment": {"billablesMustAlign": True},
    },
}

CUSTOMER: dict[str, Any] = {
    "id": CUS_ID,
    "name": "ACME Inc.",
    "key": "acme",
    "usageAttribution": {"subjectKeys": ["acme", "acme-eu"]},
    "currency": "USD",
    "currentSubscriptionId": SUB_ID,
    "subscriptions": [SUBSCRIPTION],
    "createdAt": "2026-01-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:00:00Z",
}

ENTITLEMENT_VALUE = {
    "hasAccess": True,
    "balance": 549997,
    "usage": 3,
    "overage": 0,
    "totalAvailableGrantAmount": 550000,
}

ENTITLEMENT_METERED_V2: dict[str, Any] = {
    **{k: v for k, v in ITEM_NEW["included"]["entitlement"].items() if k != "subjectKey"},
    "customerId": CUS_ID,
    "customerKey": "acme",
    "issue": {"amount": 550000, "priority": 1},
}

ENTITLEMENT_BOOLEAN_V2: dict[str, Any] = {
    "type": "boolean",
    "id": "01JQ8Z6V2X3Y4Z5A6B7C8D9EN5",
    "featureKey": "sso",
    "featureId": "01JQ8Z6V2X3Y4Z5A6B7C8D9FE5",
    "customerId": CUS_ID,
    "customerKey": "acme",
    "activeFrom": "2026-01-10T08:30:45Z",
    "createdAt": "2026-01-10T08:30:45Z",
    "updatedAt": "2026-01-10T08:30:45Z",
}

METER: dict[str, Any] = {
    "id": METER_ID,
    "slug": "api_calls",
    "name": "API calls",
    "aggregation": "SUM",
    "eventType": "api_call",
    "valueProperty": "$.credits",
    "groupBy": {},
    "createdAt": "2025-12-01T00:00:00Z",
    "updatedAt": "2025-12-01T00:00:00Z",
}

METER_QUERY: dict[str, Any] = {
    "from": "2026-03-10T08:30:00Z",
    "to": "2026-04-10T08:30:00Z",
    "windowSize": "DAY",
    "data": [
        {
            "value": 3.5,
            "windowStart": "2026-03-20T00:00:00Z",
            "windowEnd": "2026-03-21T00:00:00Z",
            "subject": "acme",
            "customerId": CUS_ID,
            "groupBy": {"model": "gpt-4", "region": None},
        }
    ],
}


def page(items: list[Any], *, page: int = 1, page_size: int = 100, total: int | None = None) -> Any:
    return {
        "totalCount": len(items) if total is None else total,
        "page": page,
        "pageSize": page_size,
        "items": items,
    }


def deep(obj: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(obj)
