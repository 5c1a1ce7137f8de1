"""Cancel, restore, migrate, custom-plan subscriptions, deleted customers."""

from __future__ import annotations

from datetime import timedelta

from .conftest import T0, Api


async def test_cancel_timings_and_restore(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    sid = sub["id"]
    r = await api.post(
        f"/api/v1/subscriptions/{sid}/cancel", {"timing": "2026-03-20T00:00:00Z"}, expect=400
    )
    assert r["detail"] == (
        "validation error: cannot cancel aligned subscription with custom misaligned timing"
    )
    c = await api.post(
        f"/api/v1/subscriptions/{sid}/cancel", {"timing": "2026-05-10T08:30:45.123456Z"}
    )
    assert (c["status"], c["activeTo"]) == ("canceled", "2026-05-10T08:30:45.123456Z")
    again = await api.post(f"/api/v1/subscriptions/{sid}/cancel", {}, expect=403)
    assert again["detail"] == "forbidden error: transition cancel in state canceled not allowed"
    await api.post(f"/api/v1/subscriptions/{sid}/unschedule-cancelation")
    # change next cycle, then the deprecated restore deletes the successor and continues
    ch = await api.post(
        f"/api/v1/subscriptions/{sid}/change",
        {"timing": "next_billing_cycle", "plan": {"key": "free"}},
    )
    restored = await api.post(f"/api/v1/subscriptions/{sid}/restore")
    assert restored["status"] == "active"
    await api.get(f"/api/v1/subscriptions/{ch['next']['id']}", expect=404)
    # immediate cancel ends it now
    done = await api.post(f"/api/v1/subscriptions/{sid}/cancel", {})
    assert done["status"] == "inactive" and done["activeTo"] == "2026-03-10T08:30:45.123456Z"
    assert await api.value("acme") == {"hasAccess": False}


async def test_migrate_to_new_plan_version(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    v1 = await api.get("/api/v1/plans/free")
    body = {k: v1[k] for k in ("key", "name", "currency", "billingCadence", "phases")}
    body["phases"][0]["rateCards"][0]["entitlementTemplate"]["issueAfterReset"] = 75000
    v2 = await api.post("/api/v1/plans", body, expect=201)
    r = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/migrate", {"targetVersion": 2}, expect=400
    )
    assert r["detail"] == "validation error: plan free@2 is not active or archived"
    await api.post(f"/api/v1/plans/{v2['id']}/publish")
    await api.set_time(T0 + timedelta(days=1))
    m = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/migrate", {"targetVersion": 2, "timing": "immediate"}
    )
    assert m["next"]["plan"] == {"id": v2["id"], "key": "free", "version": 2}
    assert m["current"]["status"] == "inactive"
    assert (await api.value("acme"))["totalAvailableGrantAmount"] == 75000


async def test_custom_plan_subscription(api: Api) -> None:
    await api.customer("acme")
    starter = await api.get("/api/v1/plans/starter")
    custom = {
        "name": "Negotiated",
        "currency": "USD",
        "billingCadence": "P1M",
        "phases": starter["phases"],
    }
    sub = await api.post(
        "/api/v1/subscriptions", {"customerKey": "acme", "customPlan": custom}, expect=201
    )
    assert "plan" not in sub and sub["name"] == "Negotiated"
    assert (await api.value("acme"))["totalAvailableGrantAmount"] == 550000


async def test_deleted_customer_is_precondition_failed(api: Api) -> None:
    await api.customer("acme")
    await api.customer("gone")
    await api.delete("/api/v1/customers/gone")
    r = await api.get("/api/v1/customers/gone/entitlements/api_credits/value", expect=412)
    assert r["detail"].startswith("precondition failed error: customer is deleted")
    r = await api.post(
        "/api/v1/subscriptions", {"customerKey": "gone", "plan": {"key": "free"}}, expect=412
    )
    assert r["title"] == "Precondition Failed"
    cust = await api.get("/api/v1/customers/gone")
    assert "deletedAt" in cust
