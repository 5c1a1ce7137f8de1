"""Pagination (all pages fetched; the unpaged answer of listCustomerSubscriptions), bearer token
only when configured, settings wiring."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from reconciler.emulator import create_app
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


async def test_cookies_a_response_sets_are_not_sent_back(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(
        json={**SUBSCRIPTION, "phases": []}, headers={"Set-Cookie": "session=abc; Path=/"}
    )
    async with OpenMeterClient(BASE) as c:
        await c.get_subscription(SUB_ID)
        await c.get_subscription(SUB_ID)
        assert len(c._http.cookies) == 0
    assert route.call_count == 2
    assert "cookie" not in route.calls.last.request.headers


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


def _customers(n: int) -> list[dict[str, object]]:
    return [
        {**CUSTOMER, "id": f"01JQ8Z6V2X3Y4Z5A6B7C8D9C{i:02d}", "key": f"c{i}"} for i in range(n)
    ]


def _listing_page(items: list[dict[str, object]], n: int, total: int) -> httpx.Response:
    return httpx.Response(
        200, json=page(items[2 * (n - 1) : 2 * n], page=n, page_size=2, total=total)
    )


async def test_sweep_listings_request_the_next_page_before_the_caller_is_done(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    customers = _customers(5)
    route = router.get("/api/v1/customers")
    route.side_effect = [_listing_page(customers, n, 5) for n in (1, 2, 3)]
    pages = client.iter_customer_listings(page_size=2)
    seen_calls = []
    keys = []
    async for items in pages:
        await asyncio.sleep(0)  # the caller working on the page lets the loop run
        seen_calls.append(route.call_count)
        keys += [c.key for c in items]
    assert keys == ["c0", "c1", "c2", "c3", "c4"]
    # page 2 is asked for while the caller holds page 1, page 3 while it holds page 2, and
    # nothing is asked past the announced count
    assert seen_calls == [2, 3, 3]
    assert [q(c.request)["page"] for c in route.calls] == [["1"], ["2"], ["3"]]
    assert all(q(c.request)["pageSize"] == ["2"] for c in route.calls)


async def test_sweep_listings_follow_a_count_that_shrank_or_grew(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    customers = _customers(6)
    route = router.get("/api/v1/customers")
    # announced 5; page 2 says 4 (customers deleted meanwhile): page 3, asked ahead, is dropped
    route.side_effect = [
        _listing_page(customers, 1, 5),
        _listing_page(customers, 2, 4),
        _listing_page(customers, 3, 4),
    ]
    got = [c.key async for items in client.iter_customer_listings(page_size=2) for c in items]
    assert got == ["c0", "c1", "c2", "c3"]

    route.reset()
    # announced 4; page 2 says 6 (customers created meanwhile): page 3 is asked after all
    route.side_effect = [
        _listing_page(customers, 1, 4),
        _listing_page(customers, 2, 6),
        _listing_page(customers, 3, 6),
    ]
    got = [c.key async for items in client.iter_customer_listings(page_size=2) for c in items]
    assert got == [f"c{i}" for i in range(6)]
    assert [q(c.request)["page"] for c in route.calls] == [["1"], ["2"], ["3"]]


async def test_sweep_listings_stopped_early_cancel_the_request_sent_ahead() -> None:
    customers = _customers(6)
    gate = asyncio.Event()
    asked: list[int] = []
    answered: list[int] = []

    class Slow(httpx.AsyncBaseTransport):
        """Answers page 1 at once and later pages only when the gate opens."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            n = int(q(request)["page"][0])
            asked.append(n)
            if n > 1:
                await gate.wait()
            answered.append(n)
            return _listing_page(customers, n, 6)

    async with OpenMeterClient(BASE, transport=Slow()) as client:
        pages = client.iter_customer_listings(page_size=2)
        first = await anext(pages)
        assert [c.key for c in first] == ["c0", "c1"]
        await asyncio.sleep(0)
        assert asked == [1, 2]  # page 2 is on its way while the caller holds page 1
        await pages.aclose()  # the caller stops (a worker shutting down)
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
    assert (asked, answered) == ([1, 2], [1])  # page 2's request was cancelled, no page 3


async def test_sweep_listings_next_request_is_on_the_wire_before_this_page_is_parsed() -> None:
    """Over a real socket: OpenMeter receives the request for page N + 1 while page N is still
    being parsed (a page of 500 takes milliseconds to parse; OpenMeter builds the next one
    meanwhile)."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    customers = _customers(6)
    arrived: dict[int, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            n = int(parse_qs(urlsplit(self.path).query)["page"][0])
            arrived[n] = time.monotonic()
            body = json.dumps(
                page(customers[2 * (n - 1) : 2 * n], page=n, page_size=2, total=6)
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    parsed: dict[int, tuple[float, float]] = {}
    try:
        async with OpenMeterClient(f"http://127.0.0.1:{server.server_port}") as client:
            real_parse = client._parse

            def slow_parse(response: httpx.Response, tp: object) -> object:
                n = int(q(response.request)["page"][0])
                started = time.monotonic()
                time.sleep(0.3)  # a long parse, holding the event loop as a real one does
                result = real_parse(response, tp)
                parsed[n] = (started, time.monotonic())
                return result

            client._parse = slow_parse  # type: ignore[method-assign]
            keys = [c.key async for items in client.iter_customer_listings(2) for c in items]
    finally:
        server.shutdown()
        server.server_close()
    assert keys == [f"c{i}" for i in range(6)]
    # page 1 told how many there are; from then on, the request for page N + 1 reached the
    # server before page N's parse was over (written first, then the parse began)
    assert parsed[1][1] < arrived[2]
    assert arrived[3] < parsed[2][1]


async def test_sweep_listings_fail_like_any_read(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    client._sleep = _recorder([])
    customers = _customers(4)
    route = router.get("/api/v1/customers")
    route.side_effect = [_listing_page(customers, 1, 4)] + [httpx.Response(503)] * 10
    pages = client.iter_customer_listings(page_size=2)
    assert [c.key for c in await anext(pages)] == ["c0", "c1"]
    with pytest.raises(ServerError):
        await anext(pages)
    assert route.call_count == 1 + client.read_retries + 1


# -- the request as sent: straight to the pool's transport (client._dispatch) ------------------


async def test_base_url_path_prefix_is_kept() -> None:
    """An OpenMeter behind a path prefix (a shared ingress): every call goes under it, as
    httpx's base-URL merging would send it."""
    with respx.mock(assert_all_called=True) as r:
        route = r.get(f"https://gw.test/openmeter/api/v1/subscriptions/{SUB_ID}").respond(
            json={**SUBSCRIPTION, "phases": []}
        )
        async with OpenMeterClient("https://gw.test/openmeter/") as c:
            got = await c.get_subscription(SUB_ID)
    assert got.id == SUB_ID
    sent = route.calls.last.request
    assert sent.url.path == f"/openmeter/api/v1/subscriptions/{SUB_ID}"
    assert sent.headers["host"] == "gw.test"
    assert sent.headers["accept"] == "application/json"
    # httpx's defaults, as its own request building sends them: compressed answers accepted
    assert "gzip" in sent.headers["accept-encoding"]
    assert sent.headers["user-agent"].startswith("openmeter-reconciler")


async def test_request_carries_the_configured_timeouts(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(
        json={**SUBSCRIPTION, "phases": []}
    )
    async with OpenMeterClient(BASE, read_timeout=3.0, connect_timeout=1.5) as c:
        await c.get_subscription(SUB_ID)
    assert route.calls.last.request.extensions["timeout"] == {
        "connect": 1.5,
        "read": 3.0,
        "write": 3.0,
        "pool": 3.0,
    }


async def test_a_closed_client_sends_nothing(router: respx.MockRouter) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").respond(json=SUBSCRIPTION)
    c = OpenMeterClient(BASE)
    await c.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await c.get_subscription(SUB_ID)
    assert route.call_count == 0


async def test_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``HTTP_PROXY`` set, calls go through the proxy httpx mounted for it (the client's
    own ``send`` picks the transport), not straight to OpenMeter."""
    seen: list[bytes] = []
    body = json.dumps({**SUBSCRIPTION, "phases": []}).encode()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with OpenMeterClient("http://openmeter.invalid:8888") as c:
            got = await c.get_subscription(SUB_ID)
    finally:
        server.close()
        await server.wait_closed()
    assert got.id == SUB_ID
    # a proxy is asked for the absolute URL
    assert seen == [
        f"GET http://openmeter.invalid:8888/api/v1/subscriptions/{SUB_ID} HTTP/1.1".encode()
    ]


#: OpenMeter's keys are free text. Sent raw in a path, ``?`` would start a query, ``#`` a
#: fragment and ``%`` an escape; a space is no URL character.
ODD_KEY = "acme?eu #1 50%"


async def test_path_parameters_are_percent_encoded(router: respx.MockRouter) -> None:
    route = router.get(url__regex=r".*").respond(
        json={"totalCount": 0, "page": 0, "pageSize": 0, "items": []}
    )
    async with OpenMeterClient(BASE) as c:
        assert await c.list_customer_subscriptions(ODD_KEY) == []
    sent = route.calls.last.request
    assert sent.url.raw_path == b"/api/v1/customers/acme%3Feu%20%231%2050%25/subscriptions"
    assert sent.url.query == b""


async def test_a_key_with_reserved_characters_reaches_its_customer() -> None:
    """End to end on the emulator, which, like OpenMeter's router, unescapes path parameters:
    the customer asked for is the one answered, not the key's part before the ``?``."""
    app = create_app()
    async with OpenMeterClient("http://emulator.test", transport=httpx.ASGITransport(app)) as c:
        for key in ("acme", ODD_KEY):
            r = await c._http.post(
                "/api/v1/customers",
                json={"key": key, "name": key, "usageAttribution": {"subjectKeys": [key]}},
            )
            assert r.status_code == 201, r.text
        got = await c.get_customer(ODD_KEY)
    assert got.key == ODD_KEY
