"""Differences found by replaying OpenMeter's own e2e suite (v1.0.0-beta.227 ``e2e/e2e_test.go``,
``e2e/productcatalog_test.go``, ``e2e/entitlement_test.go``) against the emulator. Each test
names the OpenMeter implementation file it follows; every response is validated against the
OpenAPI document (requests too, except where the test sends an invalid request on purpose —
then the spec is shown to reject it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.contract import assert_request, assert_response

from .conftest import T0, Api, check_contract


def _z(dt: Any) -> str:
    return str(dt.isoformat().replace("+00:00", "Z"))


async def _invalid(api: Api, method: str, path: str, **kw: Any) -> httpx.Response:
    """Send a request the OpenAPI document rejects (proved), validate only the response."""
    resp = await api.client.request(method, path, **kw)
    with pytest.raises(Exception):  # noqa: B017,PT011 - openapi-core raises its own error types
        assert_request(resp.request)
    assert_response(resp.request, resp)
    return resp


async def create_meter(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/v1/meters`` answers 200 (``meter/httphandler/meter.go``) where the spec says
    201: the request is validated, the body as the spec's 201 response."""
    resp = await api.client.post("/api/v1/meters", json=body)
    assert resp.status_code == 200, resp.text
    assert_request(resp.request)
    as_201 = httpx.Response(201, headers=resp.headers, content=resp.content, request=resp.request)
    assert_response(resp.request, as_201)
    out: dict[str, Any] = resp.json()
    return out


def _event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-" + str(over.pop("n", 1)),
        "source": "my-app",
        "type": "ingest_invalid",
        "subject": "ingest_invalid",
        "time": _z(T0 - timedelta(minutes=5)),
    }
    ev.update(over)
    return ev


# ---------------------------------------------------------------- 1. event validation


async def test_ingest_rejects_non_json_datacontenttype_and_non_object_data(api: Api) -> None:
    """``server/router/router.go``: kin-openapi validates events against ``Event``
    (``datacontenttype`` enum ``application/json``, ``data`` an object); e2e
    ``TestInvalidIngest``."""
    xml = await _invalid(
        api,
        "POST",
        "/api/v1/events",
        json=_event(datacontenttype="application/xml", data="<xml></xml>"),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert xml.status_code == 400
    assert "datacontenttype" in xml.json()["detail"]
    string = await _invalid(
        api,
        "POST",
        "/api/v1/events",
        json=_event(n=2, data="string"),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert string.status_code == 400
    assert '"/data"' in string.json()["detail"]
    # null data, no data and an empty object are accepted (204)
    for n, extra in ((3, {"data": None}), (4, {}), (5, {"data": {}})):
        await api.post(
            "/api/v1/events",
            _event(n=n, **extra),
            expect=204,
            headers={"content-type": "application/cloudevents+json"},
        )
    log = (await api.get("/_emulator/requests", params={"pathPrefix": "/api/v1/events"}))[
        "requests"
    ]
    assert [e["status"] for e in log] == [400, 400, 204, 204, 204]


# ---------------------------------------------------------------- 2. NaN / Inf skipped


async def test_meter_query_leaves_out_nan_and_inf(api: Api) -> None:
    """``streaming/clickhouse/meter_query.go``: non-finite values are not aggregated; e2e
    ``TestInvalidIngest`` expects SUM = 100 over "NaN", "Inf" and "100"."""
    meter = {
        "slug": "ingest_invalid",
        "eventType": "ingest_invalid",
        "aggregation": "SUM",
        "valueProperty": "$.duration_ms",
    }
    await create_meter(api, meter)
    for n, v in ((1, "NaN"), (2, "Inf"), (3, "-Infinity"), (4, "100")):
        await api.post("/api/v1/events", _event(n=n, data={"duration_ms": v}), expect=204)
    out = await api.get("/api/v1/meters/ingest_invalid/query")
    assert [row["value"] for row in out["data"]] == [100]
    assert out["data"][0]["subject"] is None


# ---------------------------------------------------------------- 3. advanced filters


async def test_feature_answers_advanced_group_by_filters_derived_from_legacy(api: Api) -> None:
    """``productcatalog/driver/parser.go`` ``MapFeatureToResponse`` /
    ``feature/feature.go`` ``ConvertMapStringToMeterGroupByFilters``."""
    meter = {
        "slug": "tokens",
        "eventType": "tokens",
        "aggregation": "SUM",
        "valueProperty": "$.n",
        "groupBy": {"model": "$.model"},
    }
    await create_meter(api, meter)
    f = await api.post(
        "/api/v1/features",
        {
            "key": "gpt4",
            "name": "gpt4",
            "meterSlug": "tokens",
            "meterGroupByFilters": {"model": "gpt-4"},
        },
        expect=201,
    )
    assert f["meterGroupByFilters"] == {"model": "gpt-4"}
    assert f["advancedMeterGroupByFilters"] == {"model": {"$eq": "gpt-4"}}
    assert (await api.get("/api/v1/features/gpt4"))["advancedMeterGroupByFilters"] == {
        "model": {"$eq": "gpt-4"}
    }
    # advanced filters that are not all equalities have no legacy form
    g = await api.post(
        "/api/v1/features",
        {
            "key": "gpt_any",
            "name": "gpt any",
            "meterSlug": "tokens",
            "advancedMeterGroupByFilters": {"model": {"$in": ["gpt-4", "gpt-4o"]}},
        },
        expect=201,
    )
    assert "meterGroupByFilters" not in g
    assert g["advancedMeterGroupByFilters"] == {"model": {"$in": ["gpt-4", "gpt-4o"]}}


# ---------------------------------------------------------------- 4. meter create status


async def test_create_meter_answers_200_as_the_implementation(api: Api) -> None:
    """``meter/httphandler/meter.go`` ``CreateMeter`` encodes ``http.StatusOK``; the OpenAPI
    document declares 201. The body is validated as the spec's 201 ``Meter``."""
    body = {"slug": "calls", "eventType": "calls", "aggregation": "COUNT"}
    m = await create_meter(api, body)
    assert m["slug"] == "calls" and m["aggregation"] == "COUNT"
    assert (await api.get("/api/v1/meters/calls"))["id"] == m["id"]


# ---------------------------------------------------------------- 5. misaligned plan


def _flat(key: str, cadence: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "flat_fee",
        "key": key,
        "name": key,
        "billingCadence": cadence,
        "price": {"type": "flat", "amount": "1000", "paymentTerm": "in_advance"},
        **extra,
    }


async def test_misaligned_plan_is_created_then_refused_at_publish(api: Api) -> None:
    """``plan/httpdriver/plan.go``: create/update with ``IgnoreNonCriticalIssues``; the
    alignment issue (``productcatalog/errors.go`` ``ErrRateCardBillingCadenceUnaligned``) is of
    warning severity, so the plan is stored (201, listed in ``validationErrors``) and
    ``PublishPlan`` refuses it (400). e2e: "Should not allow publishing a misaligned plan"."""
    body = {
        "key": "misaligned",
        "name": "misaligned",
        "currency": "USD",
        "billingCadence": "P1M",
        "phases": [
            {
                "key": "default",
                "name": "default",
                "duration": None,
                "rateCards": [_flat("install", "P1W"), _flat("platform", "P1M")],
            }
        ],
    }
    plan = await api.post("/api/v1/plans", body, expect=201)
    assert plan["version"] == 1 and plan["status"] == "draft"
    assert [e["code"] for e in plan["validationErrors"]] == ["rate_card_billing_cadence_unaligned"]
    refused = await api.post(f"/api/v1/plans/{plan['id']}/publish", expect=400)
    ve = refused["extensions"]["validationErrors"]
    assert ve[0]["code"] == "rate_card_billing_cadence_unaligned"
    assert ve[0]["field"] == (
        "$.phases[?(@.key=='default')].rateCards[?(@.key=='install')].billingCadence"
    )
    body["phases"][0]["rateCards"] = [_flat("platform", "P1M")]
    fixed = await api.call(
        "PUT",
        f"/api/v1/plans/{plan['id']}",
        expect=200,
        json={k: body[k] for k in ("name", "billingCadence", "phases")},
    )
    assert fixed.json()["validationErrors"] is None
    published = await api.post(f"/api/v1/plans/{plan['id']}/publish", expect=200)
    assert published["status"] == "active"


# ---------------------------------------------------------------- 6 + 7. edit validation


def _add_phase3() -> dict[str, Any]:
    return {
        "op": "add_phase",
        "phase": {"key": "test_plan_phase_3", "name": "Test Plan Phase 3", "startAfter": "P5M"},
    }


async def test_edit_adding_unaligned_rate_card_is_refused(api: Api) -> None:
    """``workflow/service/subscription.go`` ``EditRunning`` → ``subscriptionspec.go``
    ``ValidateAlignment``: 400 ``rate_card_billing_cadence_unaligned``."""
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    add = {
        "op": "add_item",
        "phaseKey": "test_plan_phase_3",
        "rateCard": _flat("test_plan_phase_3_rate_card_1", "P1W"),
    }
    r = await api.patch(
        f"/api/v1/subscriptions/{sub['id']}", {"customizations": [_add_phase3(), add]}, expect=400
    )
    ve = r["extensions"]["validationErrors"]
    assert ve[0]["code"] == "rate_card_billing_cadence_unaligned"
    assert ve[0]["field"] == (
        "$.phases[?(@.key=='test_plan_phase_3')].itemsByKey.test_plan_phase_3_rate_card_1[0]"
        ".billingCadence"
    )
    # nothing was applied: still one phase
    view = await api.get(f"/api/v1/subscriptions/{sub['id']}")
    assert [p["key"] for p in view["phases"]] == ["default"]
    # the same item with an aligned cadence is accepted
    add["rateCard"] = _flat("test_plan_phase_3_rate_card_1", "P1M")
    await api.patch(
        f"/api/v1/subscriptions/{sub['id']}", {"customizations": [_add_phase3(), add]}, expect=200
    )
    view = await api.get(f"/api/v1/subscriptions/{sub['id']}")
    assert [p["key"] for p in view["phases"]] == ["default", "test_plan_phase_3"]


async def test_edit_template_priority_without_issue_after_reset_is_refused_first(api: Api) -> None:
    """``productcatalog/entitlement.go`` ``MeteredEntitlementTemplate.Validate`` run by the patch's
    ``Validate`` (``subscription/patch/additem.go``) before the patch is applied — so before the
    feature's meter is looked at: a feature *without* a meter still gets this issue."""
    await api.post("/api/v1/features", {"key": "plan_feature_1", "name": "pf1"}, expect=201)
    await api.customer("acme")
    sub = await api.subscribe("acme", "starter")
    add = {
        "op": "add_item",
        "phaseKey": "test_plan_phase_3",
        "rateCard": _flat(
            "plan_feature_1",
            "P1M",
            featureKey="plan_feature_1",
            entitlementTemplate={"type": "metered", "issueAfterResetPriority": 10},
        ),
    }
    r = await api.patch(
        f"/api/v1/subscriptions/{sub['id']}", {"customizations": [_add_phase3(), add]}, expect=400
    )
    ve = r["extensions"]["validationErrors"][0]
    assert ve["code"] == "entitlement_template_invalid_issue_after_reset_with_priority"
    assert ve["field"] == (
        "$.phases[?(@.key=='test_plan_phase_3')].items.plan_feature_1"
        ".entitlementTemplate.issueAfterReset"
    )
    # with issueAfterReset the next check is the feature's meter
    add["rateCard"]["entitlementTemplate"]["issueAfterReset"] = 5
    r = await api.patch(
        f"/api/v1/subscriptions/{sub['id']}", {"customizations": [_add_phase3(), add]}, expect=400
    )
    assert r["detail"] == "validation error: invalid entitlement template: Feature has no meter"


# ---------------------------------------------------------------- 8. planKey filter


async def test_customer_list_filters_by_plan_key_of_active_subscription(api: Api) -> None:
    """``customer/adapter/customer.go`` ``applyActiveSubscriptionFilterWithPlanKey``."""
    for key in ("a", "b", "c", "d"):
        await api.customer(key)
    await api.subscribe("a", "free")
    await api.subscribe("b", "starter")
    # d: on free, but scheduled to start later (not active now)
    await api.subscribe("d", "free", timing=_z(T0 + timedelta(days=3)))
    free = await api.get("/api/v1/customers", params={"planKey": "free"})
    assert [c["key"] for c in free["items"]] == ["a"] and free["totalCount"] == 1
    starter = await api.get("/api/v1/customers", params={"planKey": "starter"})
    assert [c["key"] for c in starter["items"]] == ["b"]
    assert (await api.get("/api/v1/customers", params={"planKey": "pro"}))["items"] == []
    await api.set_time(T0 + timedelta(days=4))
    free = await api.get("/api/v1/customers", params={"planKey": "free"})
    assert [c["key"] for c in free["items"]] == ["a", "d"]


# ---------------------------------------------------------------- 9. v1 subject delete


async def test_v1_subject_delete_of_managed_entitlement_is_forbidden(api: Api) -> None:
    """``entitlement/driver/entitlement.go`` ``DeleteEntitlement`` → connector →
    ``entitlement/hooks/subscription/hook.go`` ``PreDelete``: 403, like the v2 route."""
    await api.customer("acme")
    await api.subscribe("acme", "free")
    ents = await api.get("/api/v2/customers/acme/entitlements")
    eid = ents["items"][0]["id"]
    got = await api.get(f"/api/v1/subjects/acme/entitlements/{eid}")
    assert got["id"] == eid and got["subjectKey"] == "acme"
    r = await api.delete(f"/api/v1/subjects/acme/entitlements/{eid}", expect=403)
    assert r["detail"] == "forbidden error: entitlement is managed by subscription"
    v2 = await api.delete(f"/api/v2/customers/acme/entitlements/{eid}", expect=403)
    assert v2["detail"] == r["detail"]
    await api.delete("/api/v1/subjects/acme/entitlements/01ABSENT", expect=404)
    # still there
    assert (await api.get(f"/api/v2/entitlements/{eid}"))["id"] == eid


__all__ = ["check_contract"]
