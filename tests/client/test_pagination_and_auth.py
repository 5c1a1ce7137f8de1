"""Pagination (all pages fetched; the unpaged answer of listCustomerSubscriptions), bearer token
only when configured, settings wiring."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from reconciler.openmeter import OpenMeterClient, ServerError
from reconciler.settings import Settings

from .conftest import BASE
from .payloads import CUS_ID, CUSTOMER, PLAN_STARTER, SUB_ID, SUBSCRIPTION, page


def q(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(request.url)).query)


def sub(n: int) -> dict[str, object]:
    return {**SUBSCRIPTION, "id": f"01JQ8Z6V2X3Y4Z5A6B7C8D9S{n:02d}"}


async def test_customer_subscriptions_unpaged_answer_is_complete(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    items = [sub(i) for i in range(3)]
    route = router.get(f"/api/v1/customers/{CUS_ID}/subscriptions").respond(
        json={"totalCount": 3, "page": 0, "pageSize": 0, "items": items}
    )
    subs = await client.list_customer_subscriptions(CUS_ID)
    assert [s.id for s in subs] == [i["id"] for i in items]
    assert route.call_count == 1
    assert q(route.calls.last.request) == {}


async def test_customer_subscriptions_paged_answer_is_followed(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/v1/customers/{CUS_ID}/subscriptions")
    route.side_effect = [
        httpx.Response(200, json=page([sub(0), sub(1)], page=1, page_size=2, total=5)),
        httpx.Response(200, json=page([sub(2), sub(3)], page=2, page_size=2, total=5)),
        httpx.Response(200, json=page([sub(4)], page=3, page_size=2, total=5)),
    ]
    subs = await client.list_customer_subscriptions(CUS_ID, status="active")
    assert [s.id for s in subs] == [sub(i)["id"] for i in range(5)]
    assert [q(c.request) for c in route.calls] == [
        {"status": ["active"]},
        {"status": ["active"], "page": ["2"], "pageSize": ["2"]},
        {"status": ["active"], "page": ["3"], "pageSize": ["2"]},
    ]


async def test_plans_all_pages(client: OpenMeterClient, router: respx.MockRouter) -> None:
    plans = [
        {**PLAN_STARTER, "id": f"01JQ8Z6V2X3Y4Z5A6B7C8D9P{i:02d}", "version": i + 1}
        for i in range(3)
    ]
    route = router.get("/api/v1/plans")
    route.side_effect = [
        httpx.Response(200, json=page(plans[:2], page=1, page_size=1000, total=3)),
        # the server may cap pageSize; the client follows the size it answered
        httpx.Response(200, json=page(plans[2:], page=2, page_size=1000, total=3)),
    ]
    got = await client.list_plans(key="starter")
    assert [p.version for p in got] == [1, 2, 3]
    assert [q(c.request)["page"] for c in route.calls] == [["1"], ["2"]]


async def test_pagination_stops_on_empty_page(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/v2/customers/{CUS_ID}/entitlements")
    route.side_effect = [
        httpx.Response(200, json=page([], page=1, page_size=1000, total=7)),
    ]
    assert await client.list_customer_entitlements_v2(CUS_ID) == []
    assert route.call_count == 1


async def test_iter_customers_walks_every_page(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    customers = [
        {**CUSTOMER, "id": f"01JQ8Z6V2X3Y4Z5A6B7C8D9C{i:02d}", "key": f"c{i}"} for i in range(5)
    ]
    route = router.get("/api/v1/customers")
    route.side_effect = [
        httpx.Response(200, json=page(customers[0:2], page=1, page_size=2, total=5)),
        httpx.Response(200, json=page(customers[2:4], page=2, page_size=2, total=5)),
        httpx.Response(200, json=page(customers[4:], page=3, page_size=2, total=5)),
    ]
    keys = [c.key async for c in client.iter_customers(page_size=2)]
    assert keys == ["c0", "c1", "c2", "c3", "c4"]
    assert [q(c.request) for c in route.calls] == [
        {"expand": ["subscriptions"], "page": [str(n)], "pageSize": ["2"]} for n in (1, 2, 3)
    ]


async def test_no_authorization_header_without_token(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(
        json={**SUBSCRIPTION, "phases": []}
    )
    async with OpenMeterClient(BASE) as c:
        await c.get_subscription(SUB_ID)
    assert "authorization" not in route.calls.last.request.headers


async def test_bearer_token_when_set(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(
        json={**SUBSCRIPTION, "phases": []}
    )
    async with OpenMeterClient(BASE, token="om_secret") as c:
        await c.get_subscription(SUB_ID)
    assert route.calls.last.request.headers["authorization"] == "Bearer om_secret"


async def test_from_settings(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(503)
    settings = Settings(
        openmeter_url=BASE + "/",
        openmeter_token="tok",  # type: ignore[arg-type]
        openmeter_read_retries=1,
        openmeter_read_timeout=3.0,
        openmeter_connect_timeout=1.5,
    )
    slept: list[float] = []
    c = OpenMeterClient.from_settings(settings)
    c._sleep = _recorder(slept)
    try:
        timeout = c._http.timeout
        assert (timeout.connect, timeout.read) == (1.5, 3.0)
        assert c.read_retries == 1
        with pytest.raises(ServerError):
            await c.get_subscription(SUB_ID)
        assert route.call_count == 2
        assert route.calls.last.request.headers["authorization"] == "Bearer tok"
    finally:
        await c.aclose()
    assert c._http.is_closed


def _recorder(out: list[float]):  # type: ignore[no-untyped-def]
    async def sleep(s: float) -> None:
        out.append(s)

    return sleep
