"""problem+json answers become typed exceptions carrying status, detail, problem, method, path."""

from __future__ import annotations

import httpx
import pytest
import respx

from reconciler.openmeter import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OpenMeterClient,
    OpenMeterError,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TransportError,
    UnexpectedStatus,
)

from .payloads import NEXT_ID, SUB_ID, SUBSCRIPTION

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: object) -> httpx.Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "urn:request:host/abc123-000042",
        **extra,
    }
    return httpx.Response(status, json=body, headers={"content-type": PROBLEM})


async def test_forbidden_edit_of_canceled_subscription(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    detail = "forbidden error: transition update in state canceled not allowed"
    router.patch(f"/api/v1/subscriptions/{SUB_ID}").mock(
        return_value=problem(403, "Forbidden", detail)
    )
    with pytest.raises(Forbidden) as ei:
        await client.edit_subscription(SUB_ID, [{"op": "unschedule_edit"}])
    e = ei.value
    assert (e.status, e.detail, e.method, e.path) == (
        403,
        detail,
        "PATCH",
        f"/api/v1/subscriptions/{SUB_ID}",
    )
    assert e.title == "Forbidden"
    assert e.instance == "urn:request:host/abc123-000042"
    assert e.problem["type"] == "about:blank"
    assert e.codes == []
    assert detail in str(e) and "403" in str(e)


async def test_conflict_exposes_validation_error_codes(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    router.post(f"/api/v1/subscriptions/{SUB_ID}/unschedule-cancelation").mock(
        return_value=problem(
            409,
            "Conflict",
            "conflict error: only single subscription is allowed per customer at a time",
            extensions={
                "validationErrors": [
                    {
                        "code": "only_single_subscription_allowed_per_customer_at_a_time",
                        "message": "only single subscription is allowed per customer at a time",
                        "field": "$.subscription",
                        "severity": "critical",
                        "component": "subscription",
                    }
                ]
            },
        )
    )
    with pytest.raises(Conflict) as ei:
        await client.unschedule_cancelation(SUB_ID)
    e = ei.value
    assert e.status == 409
    assert e.codes == ["only_single_subscription_allowed_per_customer_at_a_time"]
    assert e.validation_errors[0]["field"] == "$.subscription"
    assert e.method == "POST"


@pytest.mark.parametrize(
    ("status", "title", "detail", "exc"),
    [
        (
            400,
            "Bad Request",
            "validation error: invalid timing: validation error: cannot edit running "
            "subscription with custom timing",
            BadRequest,
        ),
        (404, "Not Found", "not found error: subscription not found", NotFound),
        (
            412,
            "Precondition Failed",
            "precondition failed error: customer deleted",
            PreconditionFailed,
        ),
        (429, "Too Many Requests", "slow down", RateLimited),
        (500, "Internal Server Error", "", ServerError),
        (501, "Not Implemented", "historical queries are not supported", ServerError),
        (405, "Method Not Allowed", "method not allowed", UnexpectedStatus),
        (401, "Unauthorized", "missing token", UnexpectedStatus),
    ],
)
async def test_status_maps_to_exception_type(
    client: OpenMeterClient,
    router: respx.MockRouter,
    status: int,
    title: str,
    detail: str,
    exc: type[OpenMeterError],
) -> None:
    route = router.post(f"/api/v1/subscriptions/{SUB_ID}/cancel").mock(
        return_value=problem(status, title, detail)
    )
    with pytest.raises(exc) as ei:
        await client.cancel_subscription(SUB_ID)
    assert type(ei.value) is exc
    assert ei.value.status == status
    # 500 has an empty detail in OpenMeter: fall back to the title.
    assert ei.value.detail == (detail or title)
    assert ei.value.path == f"/api/v1/subscriptions/{SUB_ID}/cancel"
    assert route.call_count == 1  # a mutation: never retried


async def test_non_json_error_body_gives_a_clear_message(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    router.delete(f"/api/v1/subscriptions/{NEXT_ID}").respond(
        502, text="<html><body>Bad Gateway</body></html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(ServerError) as ei:
        await client.delete_subscription(NEXT_ID)
    e = ei.value
    assert e.status == 502
    assert e.problem == {}
    assert e.detail.startswith("HTTP 502 Bad Gateway (text/html): <html><body>Bad Gateway")
    assert e.method == "DELETE"


async def test_empty_error_body(client: OpenMeterClient, router: respx.MockRouter) -> None:
    router.post(f"/api/v1/subscriptions/{SUB_ID}/cancel").respond(404)
    with pytest.raises(NotFound) as ei:
        await client.cancel_subscription(SUB_ID)
    assert ei.value.detail == "HTTP 404 Not Found (empty body)"


async def test_invalid_success_body_is_unexpected(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    bad = {k: v for k, v in SUBSCRIPTION.items() if k != "customerId"}
    router.post(f"/api/v1/subscriptions/{SUB_ID}/cancel").respond(200, json=bad)
    with pytest.raises(UnexpectedStatus) as ei:
        await client.cancel_subscription(SUB_ID)
    assert ei.value.status == 200
    assert "customerId" in ei.value.detail


async def test_transport_error_on_read_is_not_ambiguous(
    client: OpenMeterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"/api/v1/subscriptions/{SUB_ID}").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    with pytest.raises(TransportError) as ei:
        await client.get_subscription(SUB_ID)
    e = ei.value
    assert e.status is None
    assert e.ambiguous is False
    assert isinstance(e.cause, httpx.ReadTimeout)
    assert "ReadTimeout" in e.detail
    assert route.call_count == 4  # read_retries=3 in the fixture: 1 + 3 retries
