"""Plan documents and invoice sums shared by the emulator and engine tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any


def fee_plan(
    key: str,
    fee: str,
    unit: str,
    *,
    term: str = "in_arrears",
    allowance: int | None = None,
    fee_key: str = "platform_fee",
    fee_name: str = "Platform fee",
) -> dict[str, Any]:
    """A monthly PlanCreate: a flat fee paid ``term`` and API credits at ``unit`` each (with a
    metered ``allowance`` when given)."""
    credits: dict[str, Any] = {
        "type": "usage_based",
        "key": "api_credits",
        "name": "API credits",
        "featureKey": "api_credits",
        "billingCadence": "P1M",
        "price": {"type": "unit", "amount": unit},
    }
    if allowance is not None:
        credits["entitlementTemplate"] = {
            "type": "metered",
            "issueAfterReset": allowance,
            "usagePeriod": "P1M",
        }
    fee_card = {
        "type": "flat_fee",
        "key": fee_key,
        "name": fee_name,
        "billingCadence": "P1M",
        "price": {"type": "flat", "amount": fee, "paymentTerm": term},
    }
    return {
        "key": key,
        "name": key.title(),
        "currency": "USD",
        "billingCadence": "P1M",
        "proRatingConfig": {"enabled": True, "mode": "prorate_prices"},
        "phases": [
            {
                "key": "default",
                "name": "Default",
                "duration": None,
                "rateCards": [fee_card, credits],
            }
        ],
    }


def billed(invoices: list[dict[str, Any]], item: str, month: datetime) -> Decimal:
    """What OpenMeter bills for the line named ``item`` whose service starts in ``month``: every
    line outside the gathering invoice (an issued line stays as issued)."""
    total = Decimal(0)
    for inv in invoices:
        if inv["status"] == "gathering":
            continue
        for line in inv.get("lines", []):
            start = datetime.fromisoformat(line["period"]["from"])
            if line["name"] == item and (start.year, start.month) == (month.year, month.month):
                total += Decimal(line["totals"]["total"])
    return total
