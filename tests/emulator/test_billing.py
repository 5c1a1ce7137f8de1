"""OpenMeter's billing in the emulator (beta.227): the lines the subscription sync writes, the
gathering invoice, draft → issued → paid, and what an edit or a scheduled change does to April's
base fee (issue 13's table: 225 / 300 / 375 / 450). Sources are cited in
``reconciler/emulator/billing.py``; every response is checked against the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.plans import billed, fee_plan

from .conftest import Api

APRIL = datetime(2027, 4, 1, tzinfo=UTC)
MAY = datetime(2027, 5, 1, tzinfo=UTC)


def _plan(key: str, fee: str, unit: str = "0.001") -> dict[str, Any]:
    return fee_plan(key, fee, unit, term="in_advance", fee_key="base_fee", fee_name="Base fee")


async def _publish(api: Api, key: str, fee: str) -> None:
    plan = await api.post("/api/v1/plans", _plan(key, fee), expect=201)
    await api.post(f"/api/v1/plans/{plan['id']}/publish")


async def _setup(api: Api, **profile: Any) -> dict[str, Any]:
    await api.set_time(APRIL)
    await api.post("/_emulator/billing", {"enabled": True, **profile})
    await _publish(api, "basic", "150")
    await _publish(api, "advanced", "300")
    await api.customer("acme")
    return await api.subscribe("acme", "basic", timing=APRIL.isoformat())


async def _invoices(api: Api, customer_id: str) -> list[dict[str, Any]]:
    page = await api.get(
        "/api/v1/billing/invoices",
        params=[("customers", customer_id), ("expand", "lines")],
    )
    items: list[dict[str, Any]] = page["items"]
    assert page["totalCount"] == len(items)
    return items


async def _upgrade_in_place(api: Api, sub_id: str) -> None:
    """The reconciler's upgrade: the Advanced base fee replaces Basic's from now on."""
    card = (await api.get("/api/v1/plans/advanced"))["phases"][0]["rateCards"][0]
    await api.patch(
        f"/api/v1/subscriptions/{sub_id}",
        {
            "customizations": [
                {"op": "remove_item", "phaseKey": "default", "itemKey": "base_fee"},
                {"op": "add_item", "phaseKey": "default", "rateCard": card},
            ]
        },
    )


async def test_in_advance_fee_is_invoiced_and_paid_at_once(api: Api) -> None:
    sub = await _setup(api)
    assert await _invoices(api, sub["customerId"]) == []  # the worker has not run yet
    await api.set_time(APRIL + timedelta(seconds=1))
    invs = await _invoices(api, sub["customerId"])
    [inv] = [i for i in invs if i["status"] != "gathering"]
    assert (inv["status"], inv["statusDetails"]["extendedStatus"]) == ("paid", "paid")
    assert inv["statusDetails"]["immutable"] is True
    assert inv["number"] == "OM-SANDBOX-ACME-1"
    assert inv["issuedAt"] == "2027-04-01T00:00:01Z"
    [line] = inv["lines"]
    assert line["price"] == {"type": "flat", "amount": "150", "paymentTerm": "in_advance"}
    assert line["totals"]["total"] == "150"
    assert line["period"] == {"from": "2027-04-01T00:00:00Z", "to": "2027-05-01T00:00:00Z"}
    view = await api.get(f"/api/v1/subscriptions/{sub['id']}")
    [fee] = [i for i in view["phases"][0]["items"] if i["key"] == "base_fee"]
    # beta.227 swaps the two ids of the line's subscription reference
    assert line["subscription"]["subscription"]["id"] == fee["id"]
    assert line["subscription"]["item"]["id"] == sub["id"]

    # The same sync generated the period's in-arrears line and May's in-advance one.
    [gathering] = [i for i in invs if i["status"] == "gathering"]
    assert gathering["statusDetails"]["immutable"] is False
    assert gathering["number"].startswith("GATHER-ACME-USD-")
    names = sorted((line["name"], line["invoiceAt"]) for line in gathering["lines"])
    assert names == [("API credits", "2027-05-01T00:00:00Z"), ("Base fee", "2027-05-01T00:00:00Z")]


async def test_usage_is_invoiced_after_the_period_and_the_collection_interval(api: Api) -> None:
    sub = await _setup(api)
    await api.ingest("acme", 12_000, APRIL + timedelta(days=3), "e1")
    await api.set_time(MAY + timedelta(minutes=30))
    invs = await _invoices(api, sub["customerId"])
    [draft] = [i for i in invs if i["status"] == "draft"]
    assert draft["statusDetails"]["extendedStatus"] == "draft.waiting_for_collection"
    assert draft["collectionAt"] == "2027-05-01T01:00:00Z"  # PT1H after the usage line's period
    await api.ingest("acme", 3_000, APRIL + timedelta(days=29), "e2")  # late event, still counted
    await api.set_time(MAY + timedelta(hours=2))
    invs = await _invoices(api, sub["customerId"])
    [may] = [i for i in invs if i["id"] == draft["id"]]
    assert may["status"] == "paid" and may["issuedAt"] == "2027-05-01T01:00:00Z"
    usage = {line["name"]: line for line in may["lines"]}
    assert usage["API credits"]["quantity"] == "15000"
    assert usage["API credits"]["totals"]["total"] == "15"
    assert usage["Base fee"]["period"]["from"] == "2027-05-01T00:00:00Z"
    assert may["totals"]["total"] == "165"


@pytest.mark.parametrize(
    ("profile", "schedule_change", "april_base_fee"),
    [
        ({"autoAdvance": False}, False, "225"),
        ({}, False, "300"),
        ({"autoAdvance": False}, True, "375"),
        ({}, True, "450"),
    ],
    ids=["edit-draft", "edit-issued", "edit+change-draft", "edit+change-issued"],
)
async def test_what_april_costs_after_an_upgrade_on_april_16(
    api: Api, profile: dict[str, Any], schedule_change: bool, april_base_fee: str
) -> None:
    sub = await _setup(api, **profile)
    await api.set_time(datetime(2027, 4, 16, tzinfo=UTC))
    await _upgrade_in_place(api, sub["id"])
    if schedule_change:
        await api.post(
            f"/api/v1/subscriptions/{sub['id']}/change",
            {"timing": "next_billing_cycle", "plan": {"key": "advanced"}},
        )
    await api.set_time(datetime(2027, 4, 16, 0, 0, 5, tzinfo=UTC))  # the worker has synced
    invs = await _invoices(api, sub["customerId"])
    assert billed(invs, "Base fee", APRIL) == Decimal(april_base_fee)
    first = next(i for i in invs if i["status"] != "gathering")
    issues = first.get("validationIssues", [])
    if profile.get("autoAdvance", True):
        # The issued invoice keeps 150; the sync can only say it would have changed it.
        [issue] = issues
        assert issue["severity"] == "warning" and issue["component"] == "subscription_sync"
        assert "new per unit amount: 75" in issue["message"]
    else:
        assert issues == []
        assert first["statusDetails"]["extendedStatus"] == "draft.manual_approval_needed"


async def test_billing_off_lists_no_invoices_and_unknown_invoice_is_404(api: Api) -> None:
    await api.customer("acme")
    page = await api.get("/api/v1/billing/invoices")
    assert page == {"totalCount": 0, "page": 1, "pageSize": 100, "items": []}
    await api.get("/api/v1/billing/invoices/01G65Z755AFWAKHE12NY0CQ9FH", expect=404)
    bad = await api.client.get("/api/v1/billing/invoices", params={"customers": "nope"})
    assert bad.status_code == 400 and "customers" in bad.json()["detail"]
    assert await api.get("/_emulator/billing") == {"enabled": False}
