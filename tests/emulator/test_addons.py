"""Add-ons (OpenMeter v1.0.0-beta.227): create/publish, link to a plan version, purchase on a
subscription with a quantity, their effect on the items and entitlements, the 403 on edit,
quantity changes, and what ``change`` does with them. Sources are cited in
``reconciler/emulator/addons.py``; every response is validated against the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .conftest import T0, Api

EXTRA = {
    "key": "extra_credits",
    "name": "Extra credits",
    "currency": "USD",
    "instanceType": "multiple",
    "rateCards": [
        {
            "type": "usage_based",
            "key": "api_credits",
            "name": "API credits",
            "featureKey": "api_credits",
            "billingCadence": "P1M",
            "price": None,
            "entitlementTemplate": {"type": "metered", "issueAfterReset": 100000},
        },
        {
            "type": "flat_fee",
            "key": "priority_support",
            "name": "Priority support",
            "billingCadence": "P1M",
            "price": {"type": "flat", "amount": "15", "paymentTerm": "in_advance"},
        },
    ],
}


async def setup_addon(api: Api, plan: str = "starter", max_quantity: int = 5) -> dict[str, Any]:
    """An active add-on linked to a new published version of ``plan``."""
    addon = await api.post("/api/v1/addons", EXTRA, expect=201)
    assert (addon["status"], addon["version"]) == ("draft", 1)
    addon = await api.post(f"/api/v1/addons/{addon['id']}/publish")
    assert addon["status"] == "active"
    draft = await api.post(f"/api/v1/plans/{plan}/next", expect=201)
    link = await api.post(
        f"/api/v1/plans/{draft['id']}/addons",
        {"addonId": addon["id"], "fromPlanPhase": "default", "maxQuantity": max_quantity},
        expect=201,
    )
    assert link["addon"]["id"] == addon["id"] and link["maxQuantity"] == max_quantity
    await api.post(f"/api/v1/plans/{draft['id']}/publish")
    links = await api.get(f"/api/v1/plans/{draft['id']}/addons")
    assert [pa["addon"]["key"] for pa in links["items"]] == ["extra_credits"]
    out: dict[str, Any] = addon
    return out


def _items(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["key"]: i for i in view["phases"][0]["items"]}


async def test_addon_purchase_changes_items_and_forbids_edit(api: Api) -> None:
    addon = await setup_addon(api)
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    assert sub["plan"]["version"] == 2
    await api.ingest("acme", 1000, T0 + timedelta(minutes=1), "u1")
    await api.set_time(T0 + timedelta(hours=1))
    before = _items(await api.get(f"/api/v1/subscriptions/{sub['id']}"))
    ent_before = before["api_credits"]["included"]["entitlement"]
    assert (await api.value("acme"))["usage"] == 1000
    sa = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/addons",
        {"name": "extra", "quantity": 2, "timing": "immediate", "addon": {"id": addon["id"]}},
        expect=201,
    )
    assert sa["quantity"] == 2 and sa["subscriptionId"] == sub["id"]
    assert [(t["quantity"], "activeTo" in t) for t in sa["timeline"]] == [(2, False)]
    after = _items(await api.get(f"/api/v1/subscriptions/{sub['id']}"))
    ent = after["api_credits"]["included"]["entitlement"]
    # the allowance grew by 2 × 100,000; the item was split, so a new entitlement measures
    # from the phase start: the usage of this period is kept
    assert ent["issueAfterReset"] == 750000
    assert ent["id"] != ent_before["id"]
    assert ent["measureUsageFrom"] == ent_before["measureUsageFrom"]
    v = await api.value("acme")
    assert (v["usage"], v["balance"]) == (1000, 749000)
    # a key the subscription lacked is a new item, price × quantity
    assert after["priority_support"]["price"]["amount"] == "30"
    assert sorted(r["rateCard"]["key"] for r in sa["rateCards"]) == [
        "api_credits",
        "priority_support",
    ]
    listed = await api.get(f"/api/v1/subscriptions/{sub['id']}/addons")
    ids = {r["rateCard"]["key"]: r["affectedSubscriptionItemIds"] for r in listed[0]["rateCards"]}
    assert ids["api_credits"] == [after["api_credits"]["id"]]
    # an edit is refused while the subscription has add-ons
    edit = {
        "customizations": [{"op": "remove_item", "phaseKey": "default", "itemKey": "platform_fee"}]
    }
    r = await api.patch(f"/api/v1/subscriptions/{sub['id']}", edit, expect=403)
    assert r["detail"] == "forbidden error: subscription with addons cannot be edited"
    # purchasing the same add-on again is a conflict
    again = {"name": "x", "quantity": 1, "timing": "immediate", "addon": {"id": addon["id"]}}
    r = await api.post(f"/api/v1/subscriptions/{sub['id']}/addons", again, expect=409)
    assert r["detail"] == "conflict error: subscription already has that addon purchased"


async def test_quantity_zero_restores_items_but_history_still_forbids_edit(api: Api) -> None:
    addon = await setup_addon(api)
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    await api.ingest("acme", 500, T0 + timedelta(minutes=1), "u1")
    await api.set_time(T0 + timedelta(hours=1))
    sa = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/addons",
        {"name": "extra", "quantity": 1, "timing": "immediate", "addon": {"id": addon["id"]}},
        expect=201,
    )
    await api.set_time(T0 + timedelta(hours=2))
    upd = await api.call(
        "PATCH",
        f"/api/v1/subscriptions/{sub['id']}/addons/{sa['id']}",
        json={"quantity": 0, "timing": "immediate"},
        expect=200,
    )
    body = upd.json()
    assert body["quantity"] == 0
    assert [t["quantity"] for t in body["timeline"]] == [1, 0]
    assert body["timeline"][0]["activeTo"] == body["timeline"][1]["activeFrom"]
    items = _items(await api.get(f"/api/v1/subscriptions/{sub['id']}"))
    assert "priority_support" not in items
    assert items["api_credits"]["included"]["entitlement"]["issueAfterReset"] == 550000
    v = await api.value("acme")
    assert (v["usage"], v["balance"]) == (500, 549500)
    # ``hasAddons`` looks at the whole history: still not editable
    edit = {
        "customizations": [{"op": "remove_item", "phaseKey": "default", "itemKey": "platform_fee"}]
    }
    r = await api.patch(f"/api/v1/subscriptions/{sub['id']}", edit, expect=403)
    assert r["detail"] == "forbidden error: subscription with addons cannot be edited"


async def test_change_drops_addons_and_resets_usage(api: Api) -> None:
    """``ChangeToPlan`` = cancel + create: the new subscription has no add-ons and its
    entitlements measure usage from its own start."""
    addon = await setup_addon(api)
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    await api.ingest("acme", 700, T0 + timedelta(minutes=1), "u1")
    await api.set_time(T0 + timedelta(hours=1))
    await api.post(
        f"/api/v1/subscriptions/{sub['id']}/addons",
        {"name": "extra", "quantity": 1, "timing": "immediate", "addon": {"id": addon["id"]}},
        expect=201,
    )
    out = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/change",
        {"timing": "immediate", "plan": {"key": "pro"}},
    )
    new_id = out["next"]["id"]
    assert await api.get(f"/api/v1/subscriptions/{new_id}/addons") == []
    assert "priority_support" not in _items(out["next"])
    v = await api.value("acme")
    assert v["usage"] == 0 and v["totalAvailableGrantAmount"] == 5000000
    # the old subscription keeps its add-on record
    assert len(await api.get(f"/api/v1/subscriptions/{sub['id']}/addons")) == 1


async def test_addon_purchase_rules(api: Api) -> None:
    addon = await setup_addon(api, max_quantity=3)
    await api.customer("acme")
    await api.customer("beta")
    on_free = await api.subscribe("beta", "free")
    body = {"name": "extra", "quantity": 1, "timing": "immediate", "addon": {"id": addon["id"]}}
    r = await api.post(f"/api/v1/subscriptions/{on_free['id']}/addons", body, expect=400)
    assert r["detail"] == (
        "validation error: addon extra_credits@1 is not linked to the plan free@1"
    )
    sub = await api.subscribe("acme", "starter")
    r = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/addons", {**body, "quantity": 4}, expect=400
    )
    assert (
        r["detail"] == "validation error: addon extra_credits@1 can be added a maximum of 3 times"
    )
    # publishing an active add-on again is refused; a second draft is a new version
    r = await api.post(f"/api/v1/addons/{addon['id']}/publish", expect=400)
    assert "only add-ons in [draft]" in r["detail"]
    v2 = await api.post("/api/v1/addons", EXTRA, expect=201)
    assert v2["version"] == 2
    listed = await api.get("/api/v1/addons", params={"key": "extra_credits"})
    assert [(a["version"], a["status"]) for a in listed["items"]] == [(1, "active"), (2, "draft")]
    # a published plan version cannot get new add-on links
    pro = await api.get("/api/v1/plans/pro")
    r = await api.post(
        f"/api/v1/plans/{pro['id']}/addons",
        {"addonId": addon["id"], "fromPlanPhase": "default"},
        expect=400,
    )
    assert "plan: invalid status active" in r["detail"]
