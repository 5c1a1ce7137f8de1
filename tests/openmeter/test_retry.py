"""Retry rules: reads retried (transport errors, 408, 429, 5xx) honouring Retry-After; mutations
never; ingestion retried; every attempt reported to the observer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from reconciler.openmeter import (
    CallRecord,
    NotFound,
    OpenMeterClient,
    RateLimited,
    ServerError,
    TransportError,
)
from reconciler.openmeter.client import parse_retry_after

from .conftest import BASE, Sleeps
from .payloads import CUS_ID, ENTITLEMENT_VALUE, SUB_ID, SUBSCRIPTION, SUBSCRIPTION_EXPANDED

PATH = f"/api/v1/subscriptions/{SUB_ID}"


async def test_get_retried_on_503_then_succeeds(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps, records: list[CallRecord]
) -> None:
    route = router.get(PATH)
    route.side_effect = [
        httpx.Response(503, json={"title": "Service Unavailable", "status": 503}),
        httpx.Response(503, json={"title": "Service Unavailable", "status": 503}),
        httpx.Response(200, json=SUBSCRIPTION_EXPANDED),
    ]
    sub = await client.get_subscription(SUB_ID)
    assert sub.id == SUB_ID
    assert route.call_count == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 30 for s in sleeps)
    assert [(r.attempt, r.status, r.error) for r in records] == [
        (1, 503, "ServerError"),
        (2, 503, "ServerError"),
        (3, 200, None),
    ]
    assert all(r.operation == "get_subscription" and r.method == "GET" for r in records)


async def test_retry_after_seconds_is_honoured(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.get(PATH)
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(200, json=SUBSCRIPTION_EXPANDED),
    ]
    await client.get_subscription(SUB_ID)
    assert sleeps == [7.0, 2.0]


async def test_retry_after_http_date_is_honoured(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=20)
    route = router.get(PATH)
    route.side_effect = [
        httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)}),
        httpx.Response(200, json=SUBSCRIPTION_EXPANDED),
    ]
    await client.get_subscription(SUB_ID)
    assert len(sleeps) == 1
    assert 15 <= sleeps[0] <= 21


async def test_retry_after_is_capped_by_max_sleep(router: respx.MockRouter) -> None:
    sleeps = Sleeps()
    route = router.get(PATH)
    route.side_effect = [
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(200, json=SUBSCRIPTION_EXPANDED),
    ]
    async with OpenMeterClient(BASE, sleep=sleeps, max_retry_sleep=5.0) as c:
        await c.get_subscription(SUB_ID)
    assert sleeps == [5.0]


async def test_get_gives_up_after_read_retries(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.get(PATH).respond(429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited) as ei:
        await client.get_subscription(SUB_ID)
    assert ei.value.retry_after == 1.0
    assert route.call_count == 4  # 1 + read_retries (3)
    assert sleeps == [1.0, 1.0, 1.0]


async def test_backoff_grows_exponentially_with_jitter(router: respx.MockRouter) -> None:
    sleeps = Sleeps()
    router.get(PATH).respond(500)
    async with OpenMeterClient(BASE, sleep=sleeps, read_retries=6, backoff_base=1.0) as c:
        with pytest.raises(ServerError):
            await c.get_subscription(SUB_ID)
    assert len(sleeps) == 6
    # full jitter: attempt n waits uniformly in [0, min(cap, base * 2**n)]
    for n, s in enumerate(sleeps, start=1):
        assert 0 <= s <= min(30.0, 2**n)


async def test_get_retried_on_transport_error(
    client: OpenMeterClient, router: respx.MockRouter, records: list[CallRecord]
) -> None:
    route = router.get(f"/api/v1/customers/{CUS_ID}/entitlements/api_credits/value")
    route.side_effect = [
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.Response(200, json=ENTITLEMENT_VALUE),
    ]
    value = await client.get_entitlement_value(CUS_ID, "api_credits")
    assert value.has_access is True
    assert route.call_count == 3
    assert [(r.status, r.error) for r in records] == [
        (None, "TransportError"),
        (None, "TransportError"),
        (200, None),
    ]
    assert "ConnectError" in (records[0].detail or "")


async def test_get_not_retried_on_404_or_501(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.get(PATH).respond(404, json={"status": 404, "detail": "not found error: x"})
    with pytest.raises(NotFound):
        await client.get_subscription(SUB_ID)
    assert route.call_count == 1
    route = router.get(f"/api/v1/subscriptions/{SUB_ID[:-1]}1").respond(
        501, json={"status": 501, "detail": "historical queries are not supported"}
    )
    with pytest.raises(ServerError):
        await client.get_subscription(SUB_ID[:-1] + "1")
    assert route.call_count == 1
    assert sleeps == []


async def test_get_retried_on_408(client: OpenMeterClient, router: respx.MockRouter) -> None:
    route = router.get(PATH)
    route.side_effect = [
        httpx.Response(408, json={"status": 408, "title": "Request Timeout"}),
        httpx.Response(200, json=SUBSCRIPTION_EXPANDED),
    ]
    await client.get_subscription(SUB_ID)
    assert route.call_count == 2


async def test_patch_not_retried_on_503(
    client: OpenMeterClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.patch(PATH).respond(503)
    with pytest.raises(ServerError):
        await client.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}])
    assert route.call_count == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("server disconnected without sending a response"),
        httpx.ReadError("connection reset by peer"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_lost_mutation_response_is_ambiguous_and_not_retried(
    client: OpenMeterClient,
    router: respx.MockRouter,
    records: list[CallRecord],
    exc: Exception,
) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/change").mock(side_effect=exc)
    body = {"timing": "next_billing_cycle", "plan": {"key": "free", "version": 2}}
    with pytest.raises(TransportError) as ei:
        await client.change_subscription(SUB_ID, body)
    e = ei.value
    assert e.ambiguous is True
    assert e.cause is exc
    assert (e.method, e.path, e.status) == ("POST", f"/api/v1/subscriptions/{SUB_ID}/change", None)
    assert route.call_count == 1
    assert len(records) == 1
    assert records[0].request_body == body
    assert records[0].error == "TransportError"


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("connect timed out")]
)
async def test_mutation_that_never_connected_is_not_ambiguous(
    client: OpenMeterClient, router: respx.MockRouter, exc: Exception
) -> None:
    route = router.patch(PATH).mock(side_effect=exc)
    with pytest.raises(TransportError) as ei:
        await client.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}])
    assert ei.value.ambiguous is False
    assert route.call_count == 1  # still not retried: the caller re-observes


async def test_delete_and_create_not_retried(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    delete = router.delete(PATH).mock(side_effect=httpx.ReadTimeout("t"))
    with pytest.raises(TransportError) as ei:
        await client.delete_subscription(SUB_ID)
    assert ei.value.ambiguous is True and delete.call_count == 1
    create = router.post("/api/v1/subscriptions").respond(500)
    with pytest.raises(ServerError):
        await client.create_subscription({"customerKey": "acme", "plan": {"key": "free"}})
    assert create.call_count == 1


async def test_ingest_is_retried_and_resends_the_same_batch(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.post("/api/v1/events")
    route.side_effect = [httpx.ReadTimeout("t"), httpx.Response(503), httpx.Response(204)]
    ev = {"specversion": "1.0", "id": "e-1", "source": "reconciler", "type": "t", "subject": "s"}
    await client.ingest_events([ev])
    assert route.call_count == 3
    bodies = {call.request.content for call in route.calls}
    assert len(bodies) == 1  # identical (source, id): OpenMeter deduplicates the retry


async def test_ingest_without_retry(client: OpenMeterClient, router: respx.MockRouter) -> None:
    route = router.post("/api/v1/events").mock(side_effect=httpx.ReadTimeout("t"))
    ev = {"specversion": "1.0", "id": "e-1", "source": "reconciler", "type": "t", "subject": "s"}
    with pytest.raises(TransportError) as ei:
        await client.ingest_events([ev], retry=False)
    assert ei.value.ambiguous is True
    assert route.call_count == 1


async def test_async_observer_and_failing_observer(router: respx.MockRouter) -> None:
    got: list[CallRecord] = []

    async def observer(record: CallRecord) -> None:
        got.append(record)

    router.patch(PATH).respond(json=SUBSCRIPTION)
    async with OpenMeterClient(BASE, observer=observer) as c:
        await c.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}], "next_billing_cycle")
    (r,) = got
    assert r.operation == "edit_subscription"
    assert (r.method, r.path, r.status, r.attempt, r.error, r.detail) == (
        "PATCH",
        PATH,
        200,
        1,
        None,
        None,
    )
    assert r.request_body == {
        "customizations": [{"op": "unschedule_edit"}],
        "timing": "next_billing_cycle",
    }
    assert r.duration_s >= 0

    def broken(record: CallRecord) -> None:
        raise RuntimeError("metrics backend down")

    async with OpenMeterClient(BASE, observer=broken) as c:
        sub = await c.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}])
    assert sub.id == SUB_ID  # an observer failure never fails the call


def test_parse_retry_after() -> None:
    now = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Fri, 20 Mar 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Fri, 20 Mar 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("", now=now) is None
    assert parse_retry_after(None) is None
