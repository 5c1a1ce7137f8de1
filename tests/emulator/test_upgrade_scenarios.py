"""Reference §5.3 scenarios: PATCH keeps usage, change restarts it, scheduled downgrade."""

from __future__ import annotations

from datetime import timedelta

from .conftest import T0, Api

CUSTOM_TIMING_DETAIL = (
    "validation error: invalid timing: validation error: cannot edit running subscription "
    "with custom timing"
)


def included(sub: dict, key: str = "api_credits") -> dict:
    items = [i for i in sub["phases"][0]["items"] if i["key"] == key]
    assert len(items) == 1, items
    return items[0]["included"]["entitlement"]


async def test_patch_add_item_keeps_usage(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    assert sub["status"] == "active" and sub["plan"]["key"] == "free"
    await api.ingest("acme", 3, T0 + timedelta(minutes=5), "e1")
    await api.set_time(T0 + timedelta(days=3))
    before = await api.get(f"/api/v1/subscriptions/{sub['id']}")
    old_ent = included(before)
    assert old_ent["metadata"] == {"tier": "free"}
    assert await api.value("acme") == {
        "hasAccess": True,
        "balance": 49997,
        "usage": 3,
        "overage": 0,
        "totalAvailableGrantAmount": 50000,
    }
    card = await api.plan_card("starter")
    edited = await api.patch(
        f"/api/v1/subscriptions/{sub['id']}",
        {
            "timing": "immediate",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}],
        },
    )
    assert edited["plan"]["key"] == "free" and edited["status"] == "active"
    assert await api.value("acme") == {
        "hasAccess": True,
        "balance": 549997,
        "usage": 3,
        "overage": 0,
        "totalAvailableGrantAmount": 550000,
    }
    after = await api.get(f"/api/v1/subscriptions/{sub['id']}")
    new_ent = included(after)
    assert new_ent["id"] != old_ent["id"]
    assert new_ent["measureUsageFrom"] == old_ent["measureUsageFrom"] == "2026-03-10T08:30:00Z"
    assert new_ent["issueAfterReset"] == 550000
    assert new_ent["metadata"] == {"tier": "starter"}
    assert new_ent["currentUsagePeriod"] == old_ent["currentUsagePeriod"]
    assert new_ent["activeFrom"] == "2026-03-13T08:30:45.123456Z"
    timeline = after["phases"][0]["itemTimelines"]["api_credits"]
    assert [t.get("activeTo") for t in timeline] == [
        "2026-03-13T08:30:45.123456Z",
        None,
    ]
    # the superseded version got a new entitlement row with an end; the original row is gone
    assert timeline[0]["included"]["entitlement"]["id"] not in (old_ent["id"], new_ent["id"])
    await api.get(f"/api/v2/entitlements/{old_ent['id']}", expect=404)
    v2 = await api.get("/api/v2/customers/acme/entitlements")
    assert [e["id"] for e in v2["items"]] == [new_ent["id"]]
    assert v2["items"][0]["metadata"] == {"tier": "starter"}
    assert v2["items"][0]["issue"] == {"amount": 550000}
    v2val = await api.get(f"/api/v2/customers/acme/entitlements/{new_ent['id']}/value")
    assert v2val["usage"] == 3 and v2val["balance"] == 549997
    access = await api.get("/api/v1/customers/acme/access")
    assert access["entitlements"]["api_credits"]["balance"] == 549997


async def test_change_immediate_restarts_usage(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    await api.ingest("acme", 3, T0 + timedelta(minutes=5), "e1")
    await api.set_time(T0 + timedelta(days=2))
    res = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/change",
        {"timing": "immediate", "plan": {"key": "starter"}},
    )
    assert res["current"]["status"] == "inactive"
    assert res["next"]["status"] == "active"
    assert res["next"]["plan"]["key"] == "starter"
    assert res["next"]["billingAnchor"] == sub["billingAnchor"]
    assert res["current"]["annotations"] == {"subscription.superseding.id": res["next"]["id"]}
    assert res["next"]["annotations"] == {"subscription.previous.id": sub["id"]}
    assert await api.value("acme") == {
        "hasAccess": True,
        "balance": 550000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 550000,
    }
    ent = included(res["next"])
    assert ent["measureUsageFrom"] == "2026-03-12T08:30:00Z"
    assert ent["currentUsagePeriod"] == {
        "from": "2026-03-12T08:30:00Z",
        "to": "2026-04-10T08:30:00Z",
    }
    listing = await api.get("/api/v1/customers/acme/subscriptions")
    assert [(s["id"], s["status"]) for s in listing["items"]] == [
        (res["next"]["id"], "active"),
        (sub["id"], "inactive"),
    ]
    assert (listing["page"], listing["pageSize"], listing["totalCount"]) == (0, 0, 2)


async def test_scheduled_downgrade_lifecycle(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    sid = sub["id"]
    await api.ingest("acme", 10, T0 + timedelta(minutes=1), "e1")
    res = await api.post(
        f"/api/v1/subscriptions/{sid}/change",
        {"timing": "next_billing_cycle", "plan": {"key": "free"}},
    )
    boundary = "2026-04-10T08:30:45.123456Z"
    assert res["current"]["status"] == "canceled"
    assert res["current"]["activeTo"] == boundary
    nxt = res["next"]
    assert nxt["status"] == "scheduled" and nxt["activeFrom"] == boundary
    assert "currentAlignedBillingPeriod" not in nxt["alignment"]
    # the current subscription is frozen
    card = await api.plan_card("pro")
    denied = await api.patch(
        f"/api/v1/subscriptions/{sid}",
        {"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}]},
        expect=403,
    )
    assert denied["detail"] == "forbidden error: transition update in state canceled not allowed"
    assert denied["title"] == "Forbidden" and denied["instance"].startswith("urn:request:")
    conflict = await api.post(f"/api/v1/subscriptions/{sid}/unschedule-cancelation", expect=409)
    assert conflict["extensions"]["validationErrors"][0]["code"] == (
        "only_single_subscription_allowed_per_customer_at_a_time"
    )
    # deleting the active one is not allowed, the scheduled one is
    d = await api.delete(f"/api/v1/subscriptions/{sid}", expect=403)
    assert d["detail"] == "forbidden error: transition delete in state canceled not allowed"
    await api.delete(f"/api/v1/subscriptions/{nxt['id']}")
    await api.get(f"/api/v1/subscriptions/{nxt['id']}", expect=404)
    back = await api.post(f"/api/v1/subscriptions/{sid}/unschedule-cancelation")
    assert back["status"] == "active" and "activeTo" not in back
    assert "annotations" not in back  # superseding id cleared by the delete hook
    # schedule again and let the clock pass the boundary
    res2 = await api.post(
        f"/api/v1/subscriptions/{sid}/change",
        {"timing": "next_billing_cycle", "plan": {"key": "free"}},
    )
    await api.ingest("acme", 7, T0 + timedelta(days=31, minutes=1), "e2")
    await api.post("/_emulator/clock", {"advance": "P1M"})
    await api.post("/_emulator/clock", {"advanceSeconds": 120})
    cur = await api.get(f"/api/v1/subscriptions/{sid}")
    new = await api.get(f"/api/v1/subscriptions/{res2['next']['id']}")
    assert (cur["status"], new["status"]) == ("inactive", "active")
    assert await api.value("acme") == {
        "hasAccess": True,
        "balance": 49993,
        "usage": 7,
        "overage": 0,
        "totalAvailableGrantAmount": 50000,
    }
    cust = await api.get("/api/v1/customers/acme")
    assert cust["currentSubscriptionId"] == new["id"]
    assert [s["id"] for s in cust["subscriptions"]] == [new["id"]]


async def test_patch_custom_timing_and_managed_override(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    card = await api.plan_card("starter")
    err = await api.patch(
        f"/api/v1/subscriptions/{sub['id']}",
        {
            "timing": "2026-05-01T00:00:00Z",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}],
        },
        expect=400,
    )
    assert err["detail"] == CUSTOM_TIMING_DETAIL
    assert err["title"] == "Bad Request" and err["status"] == 400
    r = await api.call(
        "PUT",
        "/api/v2/customers/acme/entitlements/api_credits/override",
        json={
            "type": "metered",
            "featureKey": "api_credits",
            "issueAfterReset": 1,
            "usagePeriod": {"interval": "MONTH"},
        },
        expect=403,
    )
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "forbidden error: entitlement is managed by subscription"
    for method, suffix, body in [
        (
            "POST",
            "/grants",
            {
                "amount": 10,
                "effectiveAt": "2026-03-10T09:00:00Z",
                "expiration": {"duration": "MONTH", "count": 1},
            },
        ),
        ("POST", "/reset", {}),
        ("DELETE", "", None),
    ]:
        r = await api.call(
            method, f"/api/v2/customers/acme/entitlements/api_credits{suffix}", json=body
        )
        assert r.status_code == 403, (suffix, r.text)
        assert r.json()["detail"] == "forbidden error: entitlement is managed by subscription"


async def test_single_subscription_per_customer(api: Api) -> None:
    await api.customer("acme")
    await api.subscribe("acme", "free")
    r = await api.post(
        "/api/v1/subscriptions", {"customerKey": "acme", "plan": {"key": "pro"}}, expect=409
    )
    assert r["extensions"]["validationErrors"][0]["code"] == (
        "only_single_subscription_allowed_per_customer_at_a_time"
    )
    # One entry per side of the overlap, each naming it by a JSON path (uniqueness.go).
    fields = [e["field"] for e in r["extensions"]["validationErrors"]]
    assert len(fields) == 2
    assert fields[0].startswith("$.plans[?(@.key=='pro' && @.version=='1' && @.id=='")
    assert fields[1].startswith("$.plans[?(@.key=='free' && @.version=='1' && @.id=='")
    assert "@.activeFrom=='2026-03-10 08:30:45.123456 +0000 UTC'" in fields[1]
    r = await api.post(
        "/api/v1/subscriptions", {"customerKey": "nobody", "plan": {"key": "pro"}}, expect=404
    )
    assert r["detail"] == (
        "not found error: customer with id or key nobody not found in default namespace"
    )
    r = await api.post(
        "/api/v1/subscriptions",
        {"customerKey": "acme", "plan": {"key": "pro"}, "timing": "2026-03-10T08:20:00Z"},
        expect=400,
    )
    assert r["detail"] == "validation error: cannot create subscription in the past"
