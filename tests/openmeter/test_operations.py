"""Every operation: the request sent (method, path, query, body, headers), the parsed answer, and
the request's validity against OpenMeter's OpenAPI contract."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from reconciler.domain.model import Timing
from reconciler.openmeter import NotFound, OpenMeterClient
from reconciler.openmeter.mapping import to_plan
from reconciler.openmeter.models import (
    CloudEvent,
    EntitlementBooleanV2,
    EntitlementMeteredV2,
    PlanModel,
    TieredPrice,
)
from tests.contract import assert_request as assert_valid

from .payloads import (
    CHANGE_RESPONSE,
    CUS_ID,
    CUSTOMER,
    ENTITLEMENT_BOOLEAN_V2,
    ENTITLEMENT_METERED_V2,
    ENTITLEMENT_VALUE,
    FEATURE,
    METER,
    METER_QUERY,
    NEXT_ID,
    PLAN_STARTER,
    SUB_ID,
    SUBSCRIPTION,
    SUBSCRIPTION_EXPANDED,
    UNIT_CARD,
    page,
)


def query(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_get_subscription_parses_expanded(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(json=SUBSCRIPTION_EXPANDED)
    sub = await client.get_subscription(SUB_ID)
    assert route.call_count == 1
    assert sub.id == SUB_ID and sub.status == "active"
    assert sub.plan is not None and (sub.plan.key, sub.plan.version) == ("free", 1)
    assert sub.alignment is not None
    period = sub.alignment.current_aligned_billing_period
    assert period is not None
    assert period.from_ == datetime(2026, 3, 10, 8, 30, 45, 123456, tzinfo=UTC)
    phase = sub.phases[0]
    assert [i.key for i in phase.items] == ["base_fee", "api_credits"]
    assert [i.id for i in phase.item_timelines["api_credits"]] == [
        SUBSCRIPTION_EXPANDED["phases"][0]["itemTimelines"]["api_credits"][0]["id"],
        SUBSCRIPTION_EXPANDED["phases"][0]["itemTimelines"]["api_credits"][1]["id"],
    ]
    item = phase.items[1]
    assert item.included is not None and item.included.feature is not None
    assert item.included.feature.meter_slug == "api_calls"
    ent = item.included.entitlement
    assert ent is not None and ent.type == "metered"
    assert ent.issue_after_reset == Decimal(550000)  # type: ignore[union-attr]
    assert sub.annotations == {"subscription.superseding.id": NEXT_ID}
    assert route.calls.last.request.headers["accept"] == "application/json"


async def test_list_customer_subscriptions_sends_no_page_params_and_status_filter(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/v1/customers/{CUS_ID}/subscriptions").respond(
        json={"totalCount": 1, "page": 0, "pageSize": 0, "items": [SUBSCRIPTION]}
    )
    subs = await client.list_customer_subscriptions(CUS_ID, status=["active", "scheduled"])
    assert [s.id for s in subs] == [SUB_ID]
    q = query(route.calls.last.request)
    assert q == {"status": ["active", "scheduled"]}


async def test_edit_subscription_sends_patch_with_operations_and_timing(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.patch(f"/api/v1/subscriptions/{SUB_ID}").respond(json=SUBSCRIPTION)
    ops = [
        {"op": "remove_item", "phaseKey": "default", "itemKey": "calls"},
        {"op": "add_item", "phaseKey": "default", "rateCard": UNIT_CARD},
    ]
    sub = await client.edit_subscription(SUB_ID, ops, timing=Timing.IMMEDIATE)
    assert sub.id == SUB_ID
    req = route.calls.last.request
    assert req.method == "PATCH"
    assert req.headers["content-type"] == "application/json"
    assert body(req) == {"customizations": ops, "timing": "immediate"}


async def test_edit_with_plan_rate_cards_sends_them_as_openmeter_wrote_them(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    """The engine copies ``RateCard.raw`` into ``add_item``: a free usage-based card keeps
    ``"price": null`` (OpenMeter writes and accepts it: required and nullable), nulls OpenMeter
    would omit are gone (``featureKey``/``taxConfig``/``entitlementTemplate``/``upToAmount``
    are not nullable in the spec), and the whole request satisfies the contract (fixture)."""
    route = router.patch(f"/api/v1/subscriptions/{SUB_ID}").respond(json=SUBSCRIPTION)
    cards = to_plan(PlanModel.model_validate(PLAN_STARTER)).phases[0].rate_cards
    ops = [{"op": "add_item", "phaseKey": "default", "rateCard": c.raw} for c in cards]
    await client.edit_subscription(SUB_ID, ops)
    sent = [op["rateCard"] for op in body(route.calls.last.request)["customizations"]]
    by_key = {c["key"]: c for c in sent}
    assert by_key["api_credits"]["price"] is None
    assert by_key["api_credits"]["entitlementTemplate"]["issueAfterReset"] == 550000
    assert "featureKey" not in by_key["base_fee"] and "taxConfig" not in by_key["base_fee"]
    assert by_key["sso"]["billingCadence"] is None
    assert by_key["tokens"]["price"]["tiers"][1] == {
        "flatPrice": {"type": "flat", "amount": "5"},
        "unitPrice": {"type": "unit", "amount": "0.005"},
    }
    assert by_key["tokens"]["price"]["tiers"][0]["flatPrice"] is None
    assert [c["key"] for c in sent] == [c["key"] for c in PLAN_STARTER["phases"][0]["rateCards"]]


async def test_edit_subscription_next_billing_cycle(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.patch(f"/api/v1/subscriptions/{SUB_ID}").respond(json=SUBSCRIPTION)
    await client.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}], "next_billing_cycle")
    assert body(route.calls.last.request) == {
        "customizations": [{"op": "unschedule_edit"}],
        "timing": "next_billing_cycle",
    }


async def test_change_subscription_returns_current_and_next(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/change").respond(json=CHANGE_RESPONSE)
    change = {"timing": "next_billing_cycle", "plan": {"key": "free", "version": 2}}
    resp = await client.change_subscription(SUB_ID, change)
    assert body(route.calls.last.request) == change
    assert resp.current.status == "canceled"
    assert resp.next.id == NEXT_ID and resp.next.status == "scheduled"
    assert resp.next.annotations == {"subscription.previous.id": SUB_ID}


async def test_cancel_sends_empty_object_without_timing(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/cancel").respond(json=SUBSCRIPTION)
    await client.cancel_subscription(SUB_ID)
    assert route.calls.last.request.content == b"{}"
    await client.cancel_subscription(SUB_ID, "next_billing_cycle")
    assert body(route.calls.last.request) == {"timing": "next_billing_cycle"}
    await client.cancel_subscription(SUB_ID, datetime(2026, 4, 10, 8, 30, 45, 123456, tzinfo=UTC))
    assert body(route.calls.last.request) == {"timing": "2026-04-10T08:30:45.123456Z"}


async def test_unschedule_cancelation_has_no_body(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/unschedule-cancelation").respond(
        json=SUBSCRIPTION
    )
    sub = await client.unschedule_cancelation(SUB_ID)
    assert sub.status == "active"
    req = route.calls.last.request
    assert req.content == b""
    assert "content-type" not in req.headers


async def test_delete_subscription_accepts_204(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.delete(f"/api/v1/subscriptions/{NEXT_ID}").respond(204)
    assert await client.delete_subscription(NEXT_ID) is None
    assert route.call_count == 1


async def test_create_subscription_201(client: OpenMeterClient, router: respx.MockRouter) -> None:
    route = router.post("/api/v1/subscriptions").respond(201, json=SUBSCRIPTION)
    create = {
        "customerKey": "acme",
        "plan": {"key": "free", "version": 1},
        "timing": "immediate",
        "metadata": {"reconciler.change": "chg_1"},
    }
    sub = await client.create_subscription(create)
    assert body(route.calls.last.request) == create
    assert sub.customer_id == CUS_ID


async def test_migrate_subscription(client: OpenMeterClient, router: respx.MockRouter) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/migrate").respond(json=CHANGE_RESPONSE)
    resp = await client.migrate_subscription(SUB_ID, {"targetVersion": 2, "timing": "immediate"})
    assert body(route.calls.last.request) == {"targetVersion": 2, "timing": "immediate"}
    assert resp.next.plan is not None and resp.next.plan.version == 2


async def test_get_plan_by_key_and_include_latest(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get("/api/v1/plans/starter").respond(json=PLAN_STARTER)
    plan = await client.get_plan("starter")
    assert query(route.calls.last.request) == {}
    assert plan.version == 2 and plan.phases[0].rate_cards[0].key == "base_fee"
    tiered = plan.phases[0].rate_cards[2].price
    assert isinstance(tiered, TieredPrice)
    assert tiered.tiers[0].up_to_amount == Decimal("1000")
    assert tiered.tiers[1].flat_price is not None
    assert tiered.tiers[1].flat_price.amount == Decimal(5)
    await client.get_plan("starter", include_latest=True)
    assert query(route.calls.last.request) == {"includeLatest": ["true"]}


async def test_list_plans_filters(client: OpenMeterClient, router: respx.MockRouter) -> None:
    route = router.get("/api/v1/plans").respond(json=page([PLAN_STARTER], page_size=1000))
    plans = await client.list_plans(key="starter", status="active")
    assert [p.id for p in plans] == [PLAN_STARTER["id"]]
    assert query(route.calls.last.request) == {
        "key": ["starter"],
        "status": ["active"],
        "page": ["1"],
        "pageSize": ["1000"],
    }


async def test_get_plan_version_lists_by_key_and_picks_the_version(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    v1 = {**PLAN_STARTER, "id": "01JQ8Z6V2X3Y4Z5A6B7C8D9PS1", "version": 1, "status": "archived"}
    route = router.get("/api/v1/plans").respond(json=page([v1, PLAN_STARTER], page_size=1000))
    plan = await client.get_plan_version("starter", 1)
    assert (plan.key, plan.version, plan.status) == ("starter", 1, "archived")
    assert query(route.calls.last.request) == {
        "key": ["starter"],
        "page": ["1"],
        "pageSize": ["1000"],
    }


async def test_get_plan_version_missing_is_not_found(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    router.get("/api/v1/plans").respond(json=page([], page_size=1000))
    with pytest.raises(NotFound) as ei:
        await client.get_plan_version("starter", 9)
    assert ei.value.status == 404
    assert "starter@v9" in ei.value.detail


async def test_entitlement_values_v1_and_v2_are_decimals(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    v1 = router.get(f"/api/v1/customers/{CUS_ID}/entitlements/api_credits/value").respond(
        json=ENTITLEMENT_VALUE
    )
    v2 = router.get(f"/api/v2/customers/{CUS_ID}/entitlements/api_credits/value").respond(
        json={"hasAccess": True, "balance": 0.1, "usage": 549999.9, "overage": 0}
    )
    a = await client.get_entitlement_value(CUS_ID, "api_credits")
    b = await client.get_entitlement_value_v2(CUS_ID, "api_credits")
    assert (a.has_access, a.balance, a.usage, a.total_available_grant_amount) == (
        True,
        Decimal(549997),
        Decimal(3),
        Decimal(550000),
    )
    assert b.balance == Decimal("0.1") and b.usage == Decimal("549999.9")
    assert v1.call_count == v2.call_count == 1


async def test_list_customer_entitlements_v2_discriminates_types(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    router.get(f"/api/v2/customers/{CUS_ID}/entitlements").respond(
        json=page([ENTITLEMENT_METERED_V2, ENTITLEMENT_BOOLEAN_V2], page_size=1000)
    )
    ents = await client.list_customer_entitlements_v2(CUS_ID)
    assert isinstance(ents[0], EntitlementMeteredV2)
    assert ents[0].issue is not None and ents[0].issue.amount == Decimal(550000)
    assert ents[0].customer_key == "acme"
    assert isinstance(ents[1], EntitlementBooleanV2)


async def test_customers_get_list_create(client: OpenMeterClient, router: respx.MockRouter) -> None:
    get = router.get("/api/v1/customers/acme").respond(json=CUSTOMER)
    c = await client.get_customer("acme", expand_subscriptions=True)
    assert query(get.calls.last.request) == {"expand": ["subscriptions"]}
    assert c.usage_attribution is not None
    assert c.usage_attribution.subject_keys == ["acme", "acme-eu"]
    assert c.current_subscription_id == SUB_ID
    assert c.subscriptions is not None and c.subscriptions[0].id == SUB_ID

    lst = router.get("/api/v1/customers").respond(json=page([CUSTOMER], page_size=50))
    p = await client.list_customers(page=1, page_size=50)
    assert query(lst.calls.last.request) == {"page": ["1"], "pageSize": ["50"]}
    assert p.total_count == 1 and p.items[0].key == "acme"

    post = router.post("/api/v1/customers").respond(201, json=CUSTOMER)
    new = {"name": "ACME Inc.", "key": "acme", "usageAttribution": {"subjectKeys": ["acme"]}}
    created = await client.create_customer(new)
    assert body(post.calls.last.request) == new
    assert created.id == CUS_ID


async def test_ingest_events_sends_cloudevents_batch(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post("/api/v1/events").respond(204)
    ev = CloudEvent(
        id="evt-1",
        source="reconciler",
        type="api_call",
        subject="acme",
        time=datetime(2026, 3, 20, 11, 59, tzinfo=UTC),
        data={"credits": 3},
    )
    await client.ingest_events(
        [
            ev,
            {
                "specversion": "1.0",
                "id": "evt-2",
                "source": "x",
                "type": "api_call",
                "subject": "acme",
            },
        ]
    )
    req = route.calls.last.request
    assert req.headers["content-type"] == "application/cloudevents-batch+json"
    assert body(req) == [
        {
            "id": "evt-1",
            "source": "reconciler",
            "type": "api_call",
            "subject": "acme",
            "specversion": "1.0",
            "time": "2026-03-20T11:59:00Z",
            "data": {"credits": 3},
        },
        {"specversion": "1.0", "id": "evt-2", "source": "x", "type": "api_call", "subject": "acme"},
    ]


async def test_ingest_nothing_sends_nothing(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post("/api/v1/events").respond(204)
    await client.ingest_events([])
    assert route.call_count == 0


async def test_features_plain_array_and_paged(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    other = {**FEATURE, "id": "01JQ8Z6V2X3Y4Z5A6B7C8D9FE5", "key": "sso", "meterSlug": None}
    route = router.get("/api/v1/features")
    route.side_effect = [
        httpx.Response(200, json=[FEATURE]),
        httpx.Response(200, json=page([FEATURE], page=1, page_size=1, total=2)),
        httpx.Response(200, json=page([other], page=2, page_size=1, total=2)),
    ]
    assert [f.key for f in await client.list_features()] == ["api_credits"]
    assert [f.key for f in await client.list_features()] == ["api_credits", "sso"]
    assert query(route.calls[2].request) == {"page": ["2"], "pageSize": ["1"]}

    one = router.get("/api/v1/features/api_credits").respond(json=FEATURE)
    f = await client.get_feature("api_credits")
    assert f.id == FEATURE["id"] and one.call_count == 1


async def test_meters_and_query(client: OpenMeterClient, router: respx.MockRouter) -> None:
    router.get("/api/v1/meters").respond(json=[METER])
    meters = await client.list_meters()
    assert meters[0].slug == "api_calls" and meters[0].event_type == "api_call"

    route = router.get("/api/v1/meters/api_calls/query").respond(json=METER_QUERY)
    res = await client.query_meter(
        "api_calls",
        datetime(2026, 3, 10, 8, 30, tzinfo=UTC),
        datetime(2026, 4, 10, 8, 30, tzinfo=UTC),
        window_size="DAY",
        filter_customer_id=CUS_ID,
    )
    assert query(route.calls.last.request) == {
        "from": ["2026-03-10T08:30:00Z"],
        "to": ["2026-04-10T08:30:00Z"],
        "windowSize": ["DAY"],
        "filterCustomerId": [CUS_ID],
    }
    row = res.data[0]
    assert row.value == Decimal("3.5") and row.customer_id == CUS_ID
    assert row.group_by == {"model": "gpt-4", "region": None}
    assert res.window_size == "DAY"


async def test_naive_datetime_is_refused_before_sending(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get("/api/v1/meters/api_calls/query").respond(json=METER_QUERY)
    with pytest.raises(ValueError, match="naive"):
        await client.query_meter("api_calls", datetime(2026, 3, 10), None)
    assert route.call_count == 0


Op = Callable[[OpenMeterClient], Awaitable[Any]]
STARTER = to_plan(PlanModel.model_validate(PLAN_STARTER))

# Every operation the client can send, with a canned answer; each request is validated against
# OpenMeter's OpenAPI contract (``tests/contract.py``).
CONTRACT_CASES: list[tuple[str, str, str, int, Any, Op]] = [
    (
        "get_customer",
        "GET",
        "/api/v1/customers/acme",
        200,
        CUSTOMER,
        lambda c: c.get_customer("acme", expand_subscriptions=True),
    ),
    (
        "list_customers",
        "GET",
        "/api/v1/customers",
        200,
        page([CUSTOMER]),
        lambda c: c.list_customers(2, 10, expand_subscriptions=True),
    ),
    (
        "create_customer",
        "POST",
        "/api/v1/customers",
        201,
        CUSTOMER,
        lambda c: c.create_customer(
            {"name": "ACME", "key": "acme", "usageAttribution": {"subjectKeys": ["acme"]}}
        ),
    ),
    (
        "list_customer_subscriptions",
        "GET",
        f"/api/v1/customers/{CUS_ID}/subscriptions",
        200,
        page([SUBSCRIPTION], page=0, page_size=0),
        lambda c: c.list_customer_subscriptions(CUS_ID, status="active"),
    ),
    (
        "get_subscription",
        "GET",
        f"/api/v1/subscriptions/{SUB_ID}",
        200,
        SUBSCRIPTION_EXPANDED,
        lambda c: c.get_subscription(SUB_ID),
    ),
    (
        "create_subscription",
        "POST",
        "/api/v1/subscriptions",
        201,
        SUBSCRIPTION,
        lambda c: c.create_subscription(
            {"customerId": CUS_ID, "plan": {"key": "free"}, "timing": "immediate"}
        ),
    ),
    (
        "edit_subscription",
        "PATCH",
        f"/api/v1/subscriptions/{SUB_ID}",
        200,
        SUBSCRIPTION,
        lambda c: c.edit_subscription(
            SUB_ID,
            [
                {"op": "remove_item", "phaseKey": "default", "itemKey": "tokens"},
                *(
                    {"op": "add_item", "phaseKey": "default", "rateCard": rc.raw}
                    for rc in STARTER.phases[0].rate_cards
                ),
            ],
        ),
    ),
    (
        "change_subscription",
        "POST",
        f"/api/v1/subscriptions/{SUB_ID}/change",
        200,
        CHANGE_RESPONSE,
        lambda c: c.change_subscription(
            SUB_ID, {"timing": "next_billing_cycle", "plan": {"key": "free", "version": 2}}
        ),
    ),
    (
        "cancel_subscription",
        "POST",
        f"/api/v1/subscriptions/{SUB_ID}/cancel",
        200,
        SUBSCRIPTION,
        lambda c: c.cancel_subscription(SUB_ID),
    ),
    (
        "cancel_subscription_timed",
        "POST",
        f"/api/v1/subscriptions/{SUB_ID}/cancel",
        200,
        SUBSCRIPTION,
        lambda c: c.cancel_subscription(SUB_ID, Timing.NEXT_BILLING_CYCLE),
    ),
    (
        "unschedule_cancelation",
        "POST",
        f"/api/v1/subscriptions/{SUB_ID}/unschedule-cancelation",
        200,
        SUBSCRIPTION,
        lambda c: c.unschedule_cancelation(SUB_ID),
    ),
    (
        "delete_subscription",
        "DELETE",
        f"/api/v1/subscriptions/{NEXT_ID}",
        204,
        None,
        lambda c: c.delete_subscription(NEXT_ID),
    ),
    (
        "migrate_subscription",
        "POST",
        f"/api/v1/subscriptions/{SUB_ID}/migrate",
        200,
        CHANGE_RESPONSE,
        lambda c: c.migrate_subscription(SUB_ID, {"targetVersion": 2, "timing": "immediate"}),
    ),
    (
        "list_plans",
        "GET",
        "/api/v1/plans",
        200,
        page([PLAN_STARTER]),
        lambda c: c.list_plans(key=["starter", "free"], status=["active", "archived"]),
    ),
    (
        "get_plan",
        "GET",
        "/api/v1/plans/starter",
        200,
        PLAN_STARTER,
        lambda c: c.get_plan("starter", include_latest=True),
    ),
    (
        "get_plan_by_id",
        "GET",
        f"/api/v1/plans/{PLAN_STARTER['id']}",
        200,
        PLAN_STARTER,
        lambda c: c.get_plan(PLAN_STARTER["id"]),
    ),
    (
        "get_plan_version",
        "GET",
        "/api/v1/plans",
        200,
        page([PLAN_STARTER]),
        lambda c: c.get_plan_version("starter", 2),
    ),
    (
        "get_entitlement_value",
        "GET",
        f"/api/v1/customers/{CUS_ID}/entitlements/api_credits/value",
        200,
        ENTITLEMENT_VALUE,
        lambda c: c.get_entitlement_value(CUS_ID, "api_credits"),
    ),
    (
        "get_entitlement_value_v2",
        "GET",
        f"/api/v2/customers/{CUS_ID}/entitlements/api_credits/value",
        200,
        ENTITLEMENT_VALUE,
        lambda c: c.get_entitlement_value_v2(CUS_ID, "api_credits"),
    ),
    (
        "list_customer_entitlements_v2",
        "GET",
        f"/api/v2/customers/{CUS_ID}/entitlements",
        200,
        page([ENTITLEMENT_METERED_V2]),
        lambda c: c.list_customer_entitlements_v2(CUS_ID),
    ),
    (
        "ingest_events",
        "POST",
        "/api/v1/events",
        204,
        None,
        lambda c: c.ingest_events(
            [
                CloudEvent(
                    id="e1",
                    source="reconciler",
                    type="api_call",
                    subject="acme",
                    data={"credits": 1},
                    time=datetime(2026, 3, 1, tzinfo=UTC),
                )
            ]
        ),
    ),
    ("list_features", "GET", "/api/v1/features", 200, [FEATURE], lambda c: c.list_features()),
    (
        "get_feature",
        "GET",
        "/api/v1/features/api_credits",
        200,
        FEATURE,
        lambda c: c.get_feature("api_credits"),
    ),
    ("list_meters", "GET", "/api/v1/meters", 200, [METER], lambda c: c.list_meters()),
    (
        "query_meter",
        "GET",
        "/api/v1/meters/api_calls/query",
        200,
        METER_QUERY,
        lambda c: c.query_meter(
            "api_calls",
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            "HOUR",
            [CUS_ID, "01JQ8Z6V2X3Y4Z5A6B7C8D9CS2"],
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "status", "answer", "op"),
    CONTRACT_CASES,
    ids=[c[0] for c in CONTRACT_CASES],
)
async def test_request_satisfies_openapi_contract(
    client: OpenMeterClient,
    router: respx.MockRouter,
    records: list[Any],
    name: str,
    method: str,
    path: str,
    status: int,
    answer: Any,
    op: Op,
) -> None:
    route = (
        router.route(method=method, path=path).respond(status, json=answer)
        if answer is not None
        else router.route(method=method, path=path).respond(status)
    )
    await op(client)
    assert route.call_count == 1
    request = route.calls.last.request
    assert_valid(request)  # raises on any contract violation
    assert records[-1].method == method and records[-1].path == path
    assert records[-1].status == status and records[-1].error is None
