"""Control API: clock, reset, catalog, request log, faults, bulk load."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from reconciler.emulator.app import ConnectionDropped

from .conftest import T0, Api


async def test_clock_controls(api: Api) -> None:
    assert await api.get("/_emulator/clock") == {
        "now": "2026-03-10T08:30:45.123456Z",
        "frozen": True,
    }
    out = await api.post("/_emulator/clock", {"advance": "P1M"})
    assert out["now"] == "2026-04-10T08:30:45.123456Z"
    out = await api.post("/_emulator/clock", {"advance": "PT90S"})
    assert out["now"] == "2026-04-10T08:32:15.123456Z"
    out = await api.post("/_emulator/clock", {"advanceSeconds": 45})
    assert out["now"] == "2026-04-10T08:33:00.123456Z"
    real = await api.post("/_emulator/clock/real")
    assert real["frozen"] is False
    bad = await api.post("/_emulator/clock", {"advance": "one month"}, expect=400)
    assert bad["detail"].startswith("invalid clock body")


async def test_request_log_and_reset(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    card = await api.plan_card("starter")
    await api.patch(
        f"/api/v1/subscriptions/{sub['id']}",
        {"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}]},
    )
    log = (
        await api.get(
            "/_emulator/requests", params={"method": "patch", "pathPrefix": "/api/v1/subscriptions"}
        )
    )["requests"]
    assert len(log) == 1
    entry = log[0]
    assert entry["path"] == f"/api/v1/subscriptions/{sub['id']}"
    assert entry["status"] == 200 and entry["applied"] is True
    assert entry["body"]["customizations"][0]["op"] == "add_item"
    assert entry["emulatorTime"] == "2026-03-10T08:30:45.123456Z"
    all_rows = (await api.get("/_emulator/requests"))["requests"]
    assert [r["seq"] for r in all_rows] == sorted(r["seq"] for r in all_rows)
    assert any(r["method"] == "GET" and r["applied"] is False for r in all_rows)
    await api.delete("/_emulator/requests")
    assert (await api.get("/_emulator/requests"))["requests"] == []
    await api.post("/_emulator/reset", {})
    await api.get("/api/v1/customers/acme", expect=404)
    assert (await api.get("/api/v1/plans/free"))["status"] == "active"  # catalog reloaded
    await api.post("/_emulator/reset", {"reloadCatalog": False})
    await api.get("/api/v1/plans/free", expect=404)
    loaded = await api.post(
        "/_emulator/catalog",
        content=(
            "meters: [{slug: tokens, eventType: prompt, aggregation: COUNT}]\n"
            "features: [{key: tokens, name: Tokens, meterSlug: tokens}]\n"
            "customers: [{name: Solo, key: solo}]\n"
        ),
    )
    assert loaded == {
        "created": {"meters": 1, "features": 1, "plans": 0, "customers": 1, "subscriptions": 0}
    }
    assert (await api.get("/api/v1/customers/solo"))["name"] == "Solo"


async def test_fault_drop_after_apply_really_applies(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    card = await api.plan_card("starter")
    rule = await api.post(
        "/_emulator/faults",
        {"method": "PATCH", "path": "/api/v1/subscriptions/*", "dropAfterApply": True, "count": 1},
        expect=201,
    )
    assert rule["count"] == 1
    with pytest.raises(ConnectionDropped):
        await api.client.patch(
            f"/api/v1/subscriptions/{sub['id']}",
            json={"customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}]},
        )
    # the mutation happened although no response came back
    assert (await api.value("acme"))["totalAvailableGrantAmount"] == 550000
    faults = (await api.get("/_emulator/faults"))["faults"]
    assert faults[0]["count"] == 0
    log = (await api.get("/_emulator/requests", params={"method": "PATCH"}))["requests"]
    assert log[0]["applied"] is True and log[0]["dropped"] is True
    assert log[0]["fault"] == rule["id"]
    # the rule is used up: the next PATCH gets through
    await api.patch(
        f"/api/v1/subscriptions/{sub['id']}", {"customizations": [{"op": "unschedule_edit"}]}
    )


async def test_fault_status_with_and_without_apply(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    await api.post(
        "/_emulator/faults",
        {"method": "POST", "path": "/api/v1/subscriptions/*/change", "status": 502, "count": 1},
        expect=201,
    )
    r = await api.client.post(
        f"/api/v1/subscriptions/{sub['id']}/change",
        json={"timing": "immediate", "plan": {"key": "pro"}},
    )
    assert r.status_code == 502 and r.json()["title"] == "Bad Gateway"
    assert (await api.get(f"/api/v1/subscriptions/{sub['id']}"))["status"] == "active"
    await api.post(
        "/_emulator/faults",
        {
            "method": "POST",
            "path": "/api/v1/subscriptions/*/change",
            "status": 503,
            "applyBeforeStatus": True,
            "count": 1,
        },
        expect=201,
    )
    r = await api.client.post(
        f"/api/v1/subscriptions/{sub['id']}/change",
        json={"timing": "immediate", "plan": {"key": "pro"}},
    )
    assert r.status_code == 503
    assert (await api.get(f"/api/v1/subscriptions/{sub['id']}"))["status"] == "inactive"
    log = (
        await api.get(
            "/_emulator/requests", params={"method": "POST", "pathPrefix": "/api/v1/subscriptions/"}
        )
    )["requests"]
    assert [(r["status"], r["applied"]) for r in log] == [(502, False), (503, True)]
    await api.delete("/_emulator/faults")
    assert (await api.get("/_emulator/faults"))["faults"] == []


async def test_fault_delay(api: Api) -> None:
    await api.post(
        "/_emulator/faults",
        {"path": "/api/v1/plans/*", "status": None, "delaySeconds": 0.3, "count": 1},
        expect=201,
    )
    started = time.perf_counter()
    plan = await api.get("/api/v1/plans/free")
    assert plan["key"] == "free"
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    await api.get("/api/v1/plans/free")
    assert time.perf_counter() - started < 0.3


async def test_bulk_load(api: Api) -> None:
    out = await api.post(
        "/_emulator/bulk",
        {
            "customers": 500,
            "plan": "free",
            "keyPrefix": "bulk-",
            "usage": {"type": "api_call", "data": {"credits": 2}},
        },
    )
    assert out["customers"] == 500
    page = await api.get("/api/v1/customers", params={"pageSize": 1000})
    assert page["totalCount"] == 500
    assert all(c["currentSubscriptionId"] for c in page["items"])
    await api.set_time(T0 + timedelta(minutes=1))
    assert await api.value("bulk-499") == {
        "hasAccess": True,
        "balance": 49998,
        "usage": 2,
        "overage": 0,
        "totalAvailableGrantAmount": 50000,
    }
    subs = await api.get("/api/v1/customers/bulk-7/subscriptions")
    assert [s["plan"]["key"] for s in subs["items"]] == ["free"]
