"""Month-end anchors, scheduled edits and the rules/errors of every edit operation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .conftest import T0, Api


async def _sub_at(api: Api, sid: str, when: datetime) -> dict:
    await api.set_time(when)
    out: dict = await api.get(f"/api/v1/subscriptions/{sid}")
    return out


async def test_month_end_anchor_billing_and_usage_periods(api: Api) -> None:
    anchor = datetime(2028, 1, 31, 10, 15, 30, tzinfo=UTC)
    await api.set_time(anchor)
    await api.customer("acme")
    sub = await api.subscribe("acme", "free", billingAnchor="2028-01-31T10:15:30Z")
    expected = [
        (
            datetime(2028, 2, 15, tzinfo=UTC),
            "2028-01-31T10:15:30Z",
            "2028-02-29T10:15:30Z",
            "2028-01-31T10:15:00Z",
            "2028-02-29T10:15:00Z",
        ),
        (
            datetime(2028, 3, 1, tzinfo=UTC),
            "2028-02-29T10:15:30Z",
            "2028-03-31T10:15:30Z",
            "2028-02-29T10:15:00Z",
            "2028-03-31T10:15:00Z",
        ),
        (
            datetime(2028, 4, 15, tzinfo=UTC),
            "2028-03-31T10:15:30Z",
            "2028-04-30T10:15:30Z",
            "2028-03-31T10:15:00Z",
            "2028-04-30T10:15:00Z",
        ),
        (
            datetime(2028, 5, 1, tzinfo=UTC),
            "2028-04-30T10:15:30Z",
            "2028-05-31T10:15:30Z",
            "2028-04-30T10:15:00Z",
            "2028-05-31T10:15:00Z",
        ),
    ]
    for when, bfrom, bto, ufrom, uto in expected:
        s = await _sub_at(api, sub["id"], when)
        assert s["alignment"]["currentAlignedBillingPeriod"] == {"from": bfrom, "to": bto}
        ent = s["phases"][0]["items"][0]["included"]["entitlement"]
        assert ent["currentUsagePeriod"] == {"from": ufrom, "to": uto}
        assert ent["usagePeriod"]["anchor"] == "2028-01-31T10:15:00Z"
    # non-leap year: Jan 31 -> Feb 28
    await api.set_time(datetime(2027, 1, 31, 12, 0, tzinfo=UTC))
    await api.customer("beta")
    sub2 = await api.subscribe("beta", "free")
    s = await _sub_at(api, sub2["id"], datetime(2027, 3, 5, tzinfo=UTC))
    assert s["alignment"]["currentAlignedBillingPeriod"] == {
        "from": "2027-02-28T12:00:00Z",
        "to": "2027-03-31T12:00:00Z",
    }


async def test_usage_period_first_period_clipped_and_usage_before_is_not_counted(api: Api) -> None:
    await api.customer("acme")
    await api.ingest("acme", 100, T0 - timedelta(hours=1), "before")
    sub = await api.subscribe("acme", "free", billingAnchor="2026-03-01T00:00:00Z")
    ent = (await api.get(f"/api/v1/subscriptions/{sub['id']}"))["phases"][0]["items"][0][
        "included"
    ]["entitlement"]
    assert ent["measureUsageFrom"] == "2026-03-10T08:30:00Z"
    assert ent["currentUsagePeriod"] == {
        "from": "2026-03-10T08:30:00Z",
        "to": "2026-04-01T00:00:00Z",
    }
    await api.ingest("acme", 5, T0 + timedelta(seconds=10), "in")
    v = await api.value("acme")
    assert (v["usage"], v["balance"]) == (5, 49995)
    # next period: fresh usage, boundary at the anchor
    await api.ingest("acme", 2, datetime(2026, 4, 1, 0, 0, 5, tzinfo=UTC), "april")
    await api.set_time(datetime(2026, 4, 1, 0, 1, tzinfo=UTC))
    v = await api.value("acme")
    assert (v["usage"], v["balance"]) == (2, 49998)


async def test_overage_and_access(api: Api) -> None:
    await api.customer("acme")
    await api.subscribe("acme", "free")
    await api.ingest("acme", 50001, T0 + timedelta(seconds=1), "big")
    assert await api.value("acme") == {
        "hasAccess": False,
        "balance": 0,
        "usage": 50001,
        "overage": 1,
        "totalAvailableGrantAmount": 50000,
    }
    assert await api.value("acme", "unknown_feature") == {"hasAccess": False}
    r = await api.get("/api/v1/customers/ghost/entitlements/api_credits/value", expect=404)
    assert r["detail"].startswith("not found error: customer with id or key ghost")


async def test_scheduled_edit_and_unschedule_edit(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    sid = sub["id"]
    await api.ingest("acme", 4, T0 + timedelta(minutes=2), "e1")
    await api.set_time(T0 + timedelta(minutes=5))
    card = await api.plan_card("free")
    await api.patch(
        f"/api/v1/subscriptions/{sid}",
        {
            "timing": "next_billing_cycle",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}],
        },
    )
    s = await api.get(f"/api/v1/subscriptions/{sid}")
    timeline = s["phases"][0]["itemTimelines"]["api_credits"]
    assert [(t["activeFrom"], t.get("activeTo")) for t in timeline] == [
        ("2026-03-10T08:30:45.123456Z", "2026-04-10T08:30:45.123456Z"),
        ("2026-04-10T08:30:45.123456Z", None),
    ]
    assert [
        i["included"]["entitlement"]["issueAfterReset"]
        for i in s["phases"][0]["items"]
        if i["key"] == "api_credits"
    ] == [550000]
    assert (await api.value("acme"))["balance"] == 549996
    # unschedule the edit: the future version is gone, the current one is open-ended again
    await api.patch(f"/api/v1/subscriptions/{sid}", {"customizations": [{"op": "unschedule_edit"}]})
    s = await api.get(f"/api/v1/subscriptions/{sid}")
    timeline = s["phases"][0]["itemTimelines"]["api_credits"]
    assert [(t["activeFrom"], t.get("activeTo")) for t in timeline] == [
        ("2026-03-10T08:30:45.123456Z", None)
    ]
    # schedule again and cross the boundary: the free tier applies, usage is fresh
    await api.patch(
        f"/api/v1/subscriptions/{sid}",
        {
            "timing": "next_billing_cycle",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}],
        },
    )
    await api.set_time(datetime(2026, 4, 10, 8, 31, 30, tzinfo=UTC))
    assert await api.value("acme") == {
        "hasAccess": True,
        "balance": 50000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 50000,
    }


async def test_edit_operation_errors(api: Api) -> None:
    await api.customer("acme")
    sub = await api.subscribe("acme", "free")
    path = f"/api/v1/subscriptions/{sub['id']}"
    card = await api.plan_card("starter")
    await api.set_time(T0 + timedelta(days=1))

    async def err(ops: list, status: int) -> str:
        body = await api.patch(path, {"customizations": ops}, expect=status)
        return str(body["detail"])

    assert await err([], 400) == "validation error: missing customizations"
    assert await err([{"op": "add_item", "phaseKey": "nope", "rateCard": card}], 400) == (
        "patch validation error: phase nope not found"
    )
    assert await err([{"op": "remove_item", "phaseKey": "default", "itemKey": "zzz"}], 400) == (
        "patch validation error: items for key zzz doesn't exists in phase default"
    )
    assert await err([{"op": "stretch_phase", "phaseKey": "default", "extendBy": "P1M"}], 409) == (
        "patch conflict error: cannot stretch a single phase"
    )
    assert await err(
        [{"op": "add_phase", "phase": {"key": "old", "name": "Old", "startAfter": "PT0S"}}], 403
    ) == ("patch forbidden error: cannot add phase in the past")
    assert await err(
        [{"op": "add_phase", "phase": {"key": "default", "name": "Dup", "startAfter": "P2M"}}], 409
    ) == ("patch conflict error: phase default already exists")
    assert await err([{"op": "remove_phase", "phaseKey": "ghost", "shift": "next"}], 500) == ""
    assert await err([{"op": "remove_phase", "phaseKey": "default", "shift": "next"}], 403) == (
        "patch forbidden error: cannot remove already started phase"
    )
    # a new phase without items is rejected at the end of the batch …
    body = await api.patch(
        path,
        {
            "customizations": [
                {
                    "op": "add_phase",
                    "phase": {
                        "key": "promo",
                        "name": "Promo",
                        "startAfter": "P2M",
                        "duration": "P1M",
                    },
                }
            ]
        },
        expect=400,
    )
    assert body["extensions"]["validationErrors"][0]["code"] == "subscription_phase_has_no_items"
    # … but accepted with an item added in the same batch; then it can be stretched and removed
    await api.patch(
        path,
        {
            "customizations": [
                {
                    "op": "add_phase",
                    "phase": {
                        "key": "promo",
                        "name": "Promo",
                        "startAfter": "P2M",
                        "duration": "P1M",
                    },
                },
                {"op": "add_item", "phaseKey": "promo", "rateCard": card},
            ]
        },
    )
    s = await api.get(path)
    assert [(p["key"], p["activeFrom"], p.get("activeTo")) for p in s["phases"]] == [
        ("default", "2026-03-10T08:30:45.123456Z", "2026-05-10T08:30:45.123456Z"),
        ("promo", "2026-05-10T08:30:45.123456Z", None),
    ]
    assert s["phases"][1]["items"][0]["included"]["entitlement"]["activeFrom"] == (
        "2026-05-10T08:30:45.123456Z"
    )
    assert await err([{"op": "add_item", "phaseKey": "promo", "rateCard": card}], 403) == (
        "patch forbidden error: cannot add item to future phase promo which already has items"
    )
    await api.patch(
        path,
        {"customizations": [{"op": "stretch_phase", "phaseKey": "default", "extendBy": "P1M"}]},
    )
    s = await api.get(path)
    assert s["phases"][1]["activeFrom"] == "2026-06-10T08:30:45.123456Z"
    await api.patch(
        path, {"customizations": [{"op": "remove_phase", "phaseKey": "promo", "shift": "next"}]}
    )
    s = await api.get(path)
    assert [p["key"] for p in s["phases"]] == ["default"]
    # remove_item then add_item of the same key in one batch == add_item
    await api.patch(
        path,
        {
            "customizations": [
                {"op": "remove_item", "phaseKey": "default", "itemKey": "api_credits"},
                {"op": "add_item", "phaseKey": "default", "rateCard": card},
            ]
        },
    )
    assert (await api.value("acme"))["totalAvailableGrantAmount"] == 550000
    # metered template on a feature without a meter / unknown feature
    bad = dict(card, featureKey="nope", key="nope")
    assert await err([{"op": "add_item", "phaseKey": "default", "rateCard": bad}], 400) == (
        "validation error: feature with key nope not found"
    )
    r = await api.call("GET", f"{path}?at=2026-03-10T00:00:00Z", expect=501)
    assert r.json()["detail"] == "historical queries are not supported"
