"""Signature verification and payload parsing, checked against the standardwebhooks library."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from reconciler.service import webhooks as wh
from reconciler.service.problems import ProblemError

NOW = 1_790_000_000
RAW = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(RAW).decode()
KEYS = wh.secret_keys([SECRET])


def lib_headers(secret: str, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def verify(headers: dict[str, str], body: bytes, keys: list[bytes] = KEYS) -> wh.VerifiedHeaders:
    return wh.verify(headers, body, keys, tolerance_seconds=300, now=NOW)


def detail(exc: pytest.ExceptionInfo[ProblemError]) -> tuple[int, str]:
    return exc.value.status, exc.value.detail


def test_accepts_what_the_standardwebhooks_library_signs() -> None:
    body = b'{"type":"plan_change.requested"}'
    got = verify(lib_headers(SECRET, "msg_1", NOW, body), body)
    assert got == wh.VerifiedHeaders("msg_1", NOW)


def test_our_signature_verifies_with_the_library() -> None:
    body = b'{"a":1}'
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(NOW),
        "webhook-signature": wh.sign(RAW, "msg_2", NOW, body),
    }
    wl = Webhook(SECRET)
    # the library checks against the real clock; sign "now" for it
    import time

    ts = int(time.time())
    headers["webhook-timestamp"] = str(ts)
    headers["webhook-signature"] = wh.sign(RAW, "msg_2", ts, body)
    assert wl.verify(body, headers) == {"a": 1}


def test_svix_header_names() -> None:
    body = b"{}"
    h = lib_headers(SECRET, "msg_3", NOW, body)
    svix = {k.replace("webhook-", "svix-"): v for k, v in h.items()}
    assert verify(svix, body).msg_id == "msg_3"


def test_rotation_any_configured_secret_and_any_listed_signature() -> None:
    old_raw = b"old-secret-bytes-old-secret-byte"
    old = "whsec_" + base64.b64encode(old_raw).decode()
    keys = wh.secret_keys([SECRET, old])
    body = b'{"x":true}'
    # signed with the old secret only
    verify(lib_headers(old, "m", NOW, body), body, keys)
    # a list with a bogus v1, an unknown version and the right one
    good = wh.sign(RAW, "m", NOW, body)
    bogus = "v1," + base64.b64encode(b"x" * 32).decode()
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(NOW),
        "webhook-signature": f"{bogus} v1a,abcd {good}",
    }
    verify(headers, body, keys)
    # the old secret is no longer configured: refused
    with pytest.raises(ProblemError) as e:
        verify(lib_headers(old, "m", NOW, body), body, KEYS)
    assert detail(e) == (
        401,
        "no signature in header webhook-signature matches the body with a configured secret",
    )


def test_unprefixed_secret_raw_and_base64() -> None:
    body = b"{}"
    keys = wh.secret_keys(["plain-text-secret"])
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(NOW),
        "webhook-signature": wh.sign(b"plain-text-secret", "m", NOW, body),
    }
    verify(headers, body, keys)
    b64 = base64.b64encode(RAW).decode()
    verify(lib_headers(b64, "m", NOW, body), body, wh.secret_keys([b64]))


def test_bad_prefixed_secret_is_a_config_error_without_the_secret() -> None:
    with pytest.raises(wh.WebhookConfigError) as e:
        wh.secret_keys(["whsec_***notbase64***"])
    assert str(e.value) == "webhook secret #1 starts with whsec_ but is not valid base64"


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("webhook-id", "missing header webhook-id (or svix-id)"),
        ("webhook-timestamp", "missing header webhook-timestamp (or svix-timestamp)"),
        ("webhook-signature", "missing header webhook-signature (or svix-signature)"),
    ],
)
def test_missing_headers(drop: str, expected: str) -> None:
    body = b"{}"
    h = lib_headers(SECRET, "m", NOW, body)
    del h[drop]
    with pytest.raises(ProblemError) as e:
        verify(h, body)
    assert detail(e) == (401, expected)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (
            NOW - 301,
            "header webhook-timestamp is 301 s in the past; the tolerance is 300 s "
            "(replayed or delayed message)",
        ),
        (
            NOW + 301,
            "header webhook-timestamp is 301 s in the future; the tolerance is 300 s "
            "(check the sender's clock)",
        ),
    ],
)
def test_stale_and_future_timestamps(ts: int, expected: str) -> None:
    body = b"{}"
    with pytest.raises(ProblemError) as e:
        verify(lib_headers(SECRET, "m", ts, body), body)
    assert detail(e) == (401, expected)
    # exactly at the tolerance is accepted
    verify(lib_headers(SECRET, "m", NOW - 300, body), body)
    verify(lib_headers(SECRET, "m", NOW + 300, body), body)


def test_timestamp_not_a_number_and_no_v1() -> None:
    body = b"{}"
    h = lib_headers(SECRET, "m", NOW, body)
    with pytest.raises(ProblemError) as e:
        verify({**h, "webhook-timestamp": "2026-01-01T00:00:00Z"}, body)
    assert detail(e) == (
        401,
        "header webhook-timestamp is not an integer Unix timestamp in seconds",
    )
    with pytest.raises(ProblemError) as e:
        verify({**h, "webhook-signature": "v2,abc v1a,def"}, body)
    assert detail(e) == (401, "header webhook-signature holds no v1 signature")


def test_signature_covers_body_id_and_timestamp() -> None:
    body = b'{"a":1}'
    h = lib_headers(SECRET, "m", NOW, body)
    for headers, data in (
        (h, b'{"a":2}'),
        ({**h, "webhook-id": "other"}, body),
        ({**h, "webhook-timestamp": str(NOW + 1)}, body),
    ):
        with pytest.raises(ProblemError) as e:
            verify(headers, data)
        assert e.value.status == 401


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
                "svix-id",
                "svix-signature",
                "svix-timestamp",
                "x-other",
            ]
        ),
        st.text(max_size=80),
    ),
    body=st.binary(max_size=200),
)
def test_fuzzed_headers_only_ever_give_problems(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(ProblemError) as e:
        verify(headers, body)
    assert e.value.status in (400, 401)
    assert e.value.detail


LIMIT = datetime(2026, 6, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    doc=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"type": st.just("plan_change.requested")},
            optional={
                "data": st.fixed_dictionaries(
                    {},
                    optional={
                        "customer": json_values,
                        "plan": st.one_of(
                            json_values, st.from_regex(r"[a-z0-9_]{0,70}", fullmatch=True)
                        ),
                        "plan_version": json_values,
                        "requested_at": st.one_of(
                            json_values,
                            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
                        ),
                    },
                )
            },
        ),
    )
)
def test_fuzzed_payloads_parse_or_give_a_400(doc: object) -> None:
    problem: ProblemError | None = None
    try:
        out = wh.parse_event(wh.parse_json(json.dumps(doc).encode()), future_limit=LIMIT)
    except ProblemError as e:
        problem = e
    if problem is not None:
        assert problem.status == 400
        assert problem.detail.startswith(("field ", "body "))
        return
    if isinstance(out, wh.Ignored):
        assert isinstance(doc, dict) and doc["type"] != wh.EVENT_PLAN_CHANGE
        return
    assert wh.PLAN_KEY_RE.match(out.plan)
    assert out.plan_version is None or out.plan_version >= 1
    assert out.requested_at is not None and out.requested_at <= LIMIT


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"plan": "pro", "requested_at": "2026-01-01T00:00:00Z"},
            "field data.customer: required, a string (OpenMeter customer id or key)",
        ),
        (
            {"customer": "", "plan": "pro", "requested_at": "2026-01-01T00:00:00Z"},
            "field data.customer: must not be empty",
        ),
        (
            {"customer": "a/b", "plan": "pro", "requested_at": "2026-01-01T00:00:00Z"},
            "field data.customer: must not contain control characters, '/' or surrounding spaces",
        ),
        (
            {"customer": "acme", "plan": "Pro-Plan", "requested_at": "2026-01-01T00:00:00Z"},
            'field data.plan: "Pro-Plan" is not a plan key (lowercase letters, digits and single '
            "underscores, at most 64 characters)",
        ),
        (
            {"customer": "acme", "requested_at": "2026-01-01T00:00:00Z"},
            "field data.plan: required, a plan key string",
        ),
        (
            {
                "customer": "acme",
                "plan": "pro",
                "plan_version": -1,
                "requested_at": "2026-01-01T00:00:00Z",
            },
            "field data.plan_version: -1 is not a positive plan version",
        ),
        (
            {
                "customer": "acme",
                "plan": "pro",
                "plan_version": "2",
                "requested_at": "2026-01-01T00:00:00Z",
            },
            "field data.plan_version: must be a positive integer or null",
        ),
        (
            {
                "customer": "acme",
                "plan": "pro",
                "plan_version": True,
                "requested_at": "2026-01-01T00:00:00Z",
            },
            "field data.plan_version: must be a positive integer or null",
        ),
        (
            {"customer": "acme", "plan": "pro"},
            "field data.requested_at: required, an RFC 3339 date-time with a time zone",
        ),
        (
            {"customer": "acme", "plan": "pro", "requested_at": "2026-01-01T00:00:00"},
            'field data.requested_at: "2026-01-01T00:00:00" is not an RFC 3339 date-time with a '
            "time zone",
        ),
        (
            {"customer": "acme", "plan": "pro", "requested_at": "2026-02-30T00:00:00Z"},
            'field data.requested_at: "2026-02-30T00:00:00Z" is not a valid date-time: day is out '
            "of range for month",
        ),
        (
            {"customer": "acme", "plan": "pro", "requested_at": "2027-01-01T00:00:00Z"},
            "field data.requested_at: 2027-01-01T00:00:00Z is in the future",
        ),
    ],
)
def test_payload_errors_name_the_field(data: dict[str, object], expected: str) -> None:
    body = json.dumps({"type": "plan_change.requested", "data": data}).encode()
    with pytest.raises(ProblemError) as e:
        wh.parse_event(wh.parse_json(body), future_limit=LIMIT)
    assert detail(e) == (400, expected)


def test_valid_payload() -> None:
    body = json.dumps(
        {
            "type": "plan_change.requested",
            "data": {
                "customer": "acme",
                "plan": "pro",
                "plan_version": 2,
                "requested_at": "2026-01-01T01:00:00+01:00",
            },
        }
    ).encode()
    got = wh.parse_event(wh.parse_json(body), future_limit=LIMIT)
    assert got == wh.PlanChange("acme", "pro", 2, datetime(2026, 1, 1, tzinfo=UTC))
    assert wh.future_limit(LIMIT, 60) == LIMIT + timedelta(seconds=60)
