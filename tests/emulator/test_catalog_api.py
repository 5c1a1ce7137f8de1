"""Plans (versions, publish, archive, listing), customers pagination, meter queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .conftest import T0, Api


async def test_plan_versions_publish_archive(api: Api) -> None:
    v1 = await api.get("/api/v1/plans/free")
    assert (v1["version"], v1["status"]) == (1, "active")
    assert v1["effectiveFrom"] == "2026-03-10T08:30:45.123456Z"
    body = {
        k: v1[k] for k in ("key", "name", "currency", "billingCadence", "proRatingConfig", "phases")
    }
    body["phases"][0]["rateCards"][0]["entitlementTemplate"]["issueAfterReset"] = 60000
    v2 = await api.post("/api/v1/plans", body, expect=201)
    assert (v2["version"], v2["status"]) == (2, "draft") and "effectiveFrom" not in v2
    dup = await api.post("/api/v1/plans", body, expect=400)
    assert dup["detail"] == "validation error: only a single draft version is allowed for Plan"
    assert (await api.get("/api/v1/plans/free"))["version"] == 1
    assert (await api.get("/api/v1/plans/free?includeLatest=true"))["version"] == 2
    assert (await api.get(f"/api/v1/plans/{v1['id']}"))["id"] == v1["id"]
    # a subscription to a draft version is rejected
    await api.customer("acme")
    r = await api.post(
        "/api/v1/subscriptions",
        {"customerKey": "acme", "plan": {"key": "free", "version": 2}},
        expect=400,
    )
    assert r["detail"] == (
        "validation error: plan free@2 is not active at 2026-03-10T08:30:45.123456Z"
    )
    await api.set_time(T0 + timedelta(hours=1))
    pub = await api.post(f"/api/v1/plans/{v2['id']}/publish")
    assert pub["status"] == "active" and pub["effectiveFrom"] == "2026-03-10T09:30:45.123456Z"
    old = await api.get(f"/api/v1/plans/{v1['id']}")
    assert old["status"] == "archived" and old["effectiveTo"] == pub["effectiveFrom"]
    listing = await api.get("/api/v1/plans", params={"key": "free"})
    assert [(p["version"], p["status"]) for p in listing["items"]] == [
        (1, "archived"),
        (2, "active"),
    ]
    only_v1 = await api.get("/api/v1/plans", params={"keyVersion[free]": "1"})
    assert [p["version"] for p in only_v1["items"]] == [1]
    active = await api.get("/api/v1/plans", params=[("status", "active")])
    assert sorted(p["key"] for p in active["items"]) == ["free", "pro", "starter"]
    paged = await api.get("/api/v1/plans", params={"page": 2, "pageSize": 2, "orderBy": "key"})
    assert (paged["totalCount"], paged["page"], paged["pageSize"]) == (4, 2, 2)
    assert [(p["key"], p["version"]) for p in paged["items"]] == [("pro", 1), ("starter", 1)]
    arch = await api.post(f"/api/v1/plans/{v2['id']}/archive")
    assert arch["status"] == "archived"
    r = await api.get("/api/v1/plans/free", expect=404)
    assert r["detail"] == "not found error: plan not found. [namespace=default key=free]"


async def test_rate_card_validation(api: Api) -> None:
    base = {
        "key": "metered",
        "name": "Metered",
        "currency": "USD",
        "billingCadence": "P1M",
        "phases": [{"key": "default", "name": "Default", "duration": None, "rateCards": []}],
    }

    def with_price(price: dict) -> dict:
        plan = dict(base)
        plan["phases"] = [
            dict(
                base["phases"][0],
                rateCards=[
                    {
                        "type": "usage_based",
                        "key": "api_credits",
                        "name": "API credits",
                        "featureKey": "api_credits",
                        "billingCadence": "P1M",
                        "price": price,
                    }
                ],
            )
        ]
        return plan

    tiered_closed = {
        "type": "tiered",
        "mode": "graduated",
        "tiers": [
            {
                "upToAmount": "1000",
                "flatPrice": None,
                "unitPrice": {"type": "unit", "amount": "0.01"},
            }
        ],
    }
    r = await api.post("/api/v1/plans", with_price(tiered_closed), expect=400)
    assert r["detail"] == (
        "validation error: invalid price: at least one price tier must have no "
        "up-to-amount (open-ended)"
    )
    tiered = {
        "type": "tiered",
        "mode": "volume",
        "tiers": [
            {
                "upToAmount": "1000",
                "flatPrice": None,
                "unitPrice": {"type": "unit", "amount": "0.01"},
            },
            {
                "flatPrice": {"type": "flat", "amount": "5"},
                "unitPrice": {"type": "unit", "amount": "0.005"},
            },
        ],
    }
    ok = await api.post("/api/v1/plans", with_price(tiered), expect=201)
    assert "upToAmount" not in ok["phases"][0]["rateCards"][0]["price"]["tiers"][1]
    await api.delete(f"/api/v1/plans/{ok['id']}")
    for price in (
        {"type": "package", "amount": "1", "quantityPerPackage": "1000"},
        {"type": "unit", "amount": "0.001", "minimumAmount": "5"},
        {"type": "dynamic", "multiplier": "1.2"},
    ):
        created = await api.post("/api/v1/plans", with_price(price), expect=201)
        await api.delete(f"/api/v1/plans/{created['id']}")
    r = await api.post(
        "/api/v1/plans",
        with_price({"type": "package", "amount": "1", "quantityPerPackage": "0"}),
        expect=400,
    )
    assert (
        r["detail"]
        == "validation error: invalid price: quantity per package must be greater than 0"
    )
    short = with_price({"type": "unit", "amount": "1"})
    short["phases"][0]["rateCards"][0]["entitlementTemplate"] = {
        "type": "metered",
        "usagePeriod": "PT30M",
    }
    r = await api.post("/api/v1/plans", short, expect=400)
    assert r["detail"] == (
        "validation error: invalid entitlement template: UsagePeriod must be at least 1 hour"
    )
    static = with_price({"type": "unit", "amount": "1"})
    static["phases"][0]["rateCards"][0]["entitlementTemplate"] = {
        "type": "static",
        "config": '{"models": ["a"]}',
    }
    created = await api.post("/api/v1/plans", static, expect=201)
    assert created["phases"][0]["rateCards"][0]["entitlementTemplate"]["type"] == "static"


async def test_customers_pagination_filters_and_subscription_listing(api: Api) -> None:
    for i in range(5):
        await api.customer(f"c{i}")
    page = await api.get("/api/v1/customers", params={"page": 2, "pageSize": 2})
    assert (page["totalCount"], page["page"], page["pageSize"]) == (5, 2, 2)
    assert [c["key"] for c in page["items"]] == ["c2", "c3"]
    one = await api.get("/api/v1/customers", params={"key": "c4"})
    assert [c["key"] for c in one["items"]] == ["c4"]
    # a request outside the contract (pageSize < 1) is rejected like kin-openapi does
    bad = await api.client.get("/api/v1/customers", params={"pageSize": 0})
    assert bad.status_code == 400
    assert bad.json()["detail"] == (
        'parameter "pageSize" in query has an error: number must be at least 1'
    )
    sub = await api.subscribe("c1", "free")
    listed = await api.get("/api/v1/customers", params={"key": "c1"})
    assert listed["items"][0]["currentSubscriptionId"] == sub["id"]
    assert listed["items"][0]["subscriptions"][0]["plan"]["key"] == "free"
    plain = await api.get("/api/v1/customers/c0")
    assert "currentSubscriptionId" not in plain and plain["usageAttribution"] == {
        "subjectKeys": ["c0"]
    }
    # three subscriptions over time for one customer: ordering and status filter
    await api.set_time(T0 + timedelta(days=1))
    ch = await api.post(
        f"/api/v1/subscriptions/{sub['id']}/change",
        {"timing": "immediate", "plan": {"key": "starter"}},
    )
    ch2 = await api.post(
        f"/api/v1/subscriptions/{ch['next']['id']}/change",
        {"timing": "next_billing_cycle", "plan": {"key": "pro"}},
    )
    all_subs = await api.get("/api/v1/customers/c1/subscriptions")
    assert [s["status"] for s in all_subs["items"]] == ["scheduled", "canceled", "inactive"]
    asc = await api.get(
        "/api/v1/customers/c1/subscriptions", params={"order": "ASC", "page": 1, "pageSize": 2}
    )
    assert [s["id"] for s in asc["items"]] == [sub["id"], ch["next"]["id"]]
    assert (asc["totalCount"], asc["page"], asc["pageSize"]) == (3, 1, 2)
    sched = await api.get(
        "/api/v1/customers/c1/subscriptions",
        params=[("status", "scheduled"), ("status", "canceled")],
    )
    assert [s["id"] for s in sched["items"]] == [ch2["next"]["id"], ch["next"]["id"]]


async def test_meter_query_windows(api: Api) -> None:
    c = await api.customer("acme")
    await api.customer("other")
    base = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    for i, (subject, offset, credits) in enumerate(
        [
            ("acme", timedelta(minutes=0), 1),
            ("acme", timedelta(minutes=59, seconds=59), 2),
            ("acme", timedelta(hours=1), 4),
            ("other", timedelta(minutes=5), 8),
            ("acme", timedelta(days=1, hours=2), 16),
        ]
    ):
        await api.ingest(subject, credits, base + offset, f"q{i}")
    q = await api.get(
        "/api/v1/meters/api_calls/query",
        params={"from": "2026-03-10T09:00:00Z", "to": "2026-03-10T10:00:00Z"},
    )
    assert q["from"] == "2026-03-10T09:00:00Z" and q["to"] == "2026-03-10T10:00:00Z"
    assert [(r["value"], r["windowStart"], r["windowEnd"], r["subject"]) for r in q["data"]] == [
        (11, "2026-03-10T09:00:00Z", "2026-03-10T10:00:00Z", None)
    ]
    hourly = await api.get(
        "/api/v1/meters/api_calls/query",
        params={
            "from": "2026-03-10T00:00:00Z",
            "to": "2026-03-12T00:00:00Z",
            "windowSize": "HOUR",
            "filterCustomerId": c["id"],
        },
    )
    assert [
        (r["windowStart"], r["windowEnd"], r["value"], r["customerId"]) for r in hourly["data"]
    ] == [
        ("2026-03-10T09:00:00Z", "2026-03-10T10:00:00Z", 3, c["id"]),
        ("2026-03-10T10:00:00Z", "2026-03-10T11:00:00Z", 4, c["id"]),
        ("2026-03-11T11:00:00Z", "2026-03-11T12:00:00Z", 16, c["id"]),
    ]
    daily = await api.get(
        "/api/v1/meters/api_calls/query",
        params={"windowSize": "DAY", "windowTimeZone": "America/New_York", "groupBy": "subject"},
    )
    assert [(r["windowStart"], r["subject"], r["value"]) for r in daily["data"]] == [
        ("2026-03-10T04:00:00Z", "acme", 7),
        ("2026-03-10T04:00:00Z", "other", 8),
        ("2026-03-11T04:00:00Z", "acme", 16),
    ]
    monthly = await api.get("/api/v1/meters/api_calls/query", params={"windowSize": "MONTH"})
    assert [(r["windowStart"], r["windowEnd"], r["value"]) for r in monthly["data"]] == [
        ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", 31)
    ]
    r = await api.get(
        "/api/v1/meters/api_calls/query",
        params={"from": "2026-03-10T09:00:00Z", "to": "2026-03-10T09:00:00Z"},
        expect=400,
    )
    assert r["detail"] == "validation error: from and to cannot be equal"
    # duplicate events (same source + id) are ignored
    await api.ingest("acme", 1000, base, "q0")
    again = await api.get("/api/v1/meters/api_calls/query", params={"windowSize": "MONTH"})
    assert again["data"][0]["value"] == 31


async def test_event_content_types(api: Api) -> None:
    await api.customer("acme")
    await api.subscribe("acme", "free")
    ev = {
        "specversion": "1.0",
        "source": "t",
        "type": "api_call",
        "subject": "acme",
        "time": "2026-03-10T08:30:50Z",
        "data": {"credits": 1},
    }
    await api.call(
        "POST",
        "/api/v1/events",
        expect=204,
        json=dict(ev, id="a"),
        headers={"content-type": "application/cloudevents+json"},
    )
    await api.call(
        "POST",
        "/api/v1/events",
        expect=204,
        json=[dict(ev, id="b"), dict(ev, id="c")],
        headers={"content-type": "application/cloudevents-batch+json"},
    )
    await api.call("POST", "/api/v1/events", expect=204, json=[dict(ev, id="d")])
    await api.set_time(T0 + timedelta(minutes=1))
    assert (await api.value("acme"))["usage"] == 4
