"""Fuzzing the intake of ``reconciler run`` (its own process, SQLite): hypothesis-generated
webhook bodies and headers (valid, wrong, missing and garbage signatures over arbitrary JSON and
bytes) and admin requests (plan changes with arbitrary bodies, paths and Idempotency-Keys,
listings with arbitrary queries). Every answer is below 500; afterwards the database holds a
complete row for every accepted request and none for a refused one, and every customer's
desired pointer names one of its own requests."""

from __future__ import annotations

import json
import re
import sqlite3
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.harness import (
    ADMIN_TOKEN,
    EmulatorProc,
    ServiceProc,
    iso,
    signed_headers,
)

PLAN_RE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
STATUSES = {"pending", "applied", "scheduled", "converged", "superseded", "failed"}


class Record:
    def __init__(self) -> None:
        self.accepted: dict[str, str] = {}  # webhook id -> change id
        self.refused: set[str] = set()  # webhook ids answered 4xx
        self.admin_changes: set[str] = set()
        self.answers: dict[int, int] = {}

    def note(self, status: int) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProc, Path]]:
    d = tmp_path_factory.mktemp("fuzz")
    em = EmulatorProc(d)
    em.api.customer("acme", "free")
    db = d / "fuzz.db"
    svc = ServiceProc(d, em.url, f"sqlite:///{db}", clock=True, log_level="WARNING")
    try:
        yield svc, db
    finally:
        svc.stop()
        em.stop()


RECORD = Record()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_docs = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4)
)
customers = st.sampled_from(["acme", "ghost", "c_1"]) | st.text(max_size=300)
plans = st.sampled_from(["free", "starter", "pro", "legacy_x", "Free", "a__b"]) | scalars
times = (
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: iso(d.replace(tzinfo=UTC))
    )
    | st.just(iso(datetime.now(UTC)))
    | scalars
)
plan_change = st.fixed_dictionaries(
    {"customer": customers, "plan": plans},
    optional={"plan_version": st.none() | st.integers(-3, 2**33) | scalars, "requested_at": times},
)
webhook_docs = (
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["plan_change.requested", "invoice.paid"]) | scalars,
            "data": plan_change | json_docs,
        }
    )
    | json_docs
)
near_valid = st.fixed_dictionaries(
    {
        "type": st.just("plan_change.requested"),
        "data": st.fixed_dictionaries(
            {
                "customer": st.sampled_from(["acme", "ghost", "c_1"]) | customers,
                "plan": st.sampled_from(["free", "starter", "pro"]) | plans,
                "requested_at": st.just(iso(datetime.now(UTC))) | times,
            },
            optional={"plan_version": st.none() | st.integers(-1, 3) | scalars},
        ),
    },
    optional={"id": scalars, "extra": json_docs},
)
bodies = (
    near_valid.map(lambda d: json.dumps(d).encode())
    | webhook_docs.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=300)
)
header_text = st.text(alphabet=string.ascii_letters + string.digits + "_-.:,=+/", max_size=80)
msg_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-.:", min_size=1, max_size=300)


def _client(svc: ServiceProc) -> httpx.Client:
    return svc.http


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    msg_id=msg_ids,
    mode=st.sampled_from(["valid", "valid", "valid", "wrong", "missing", "garbage", "old"]),
    garbage=header_text,
)
def test_webhooks_never_5xx(
    target: tuple[ServiceProc, Path], body: bytes, msg_id: str, mode: str, garbage: str
) -> None:
    svc, _ = target
    if mode == "missing":
        headers = {"content-type": "application/json"}
    elif mode == "garbage":
        headers = {"webhook-id": msg_id, "webhook-timestamp": garbage, "webhook-signature": garbage}
    elif mode == "wrong":
        headers = signed_headers(body, msg_id=msg_id, secret=b"some-other-secret-0000000000000")
    elif mode == "old":
        headers = signed_headers(body, msg_id=msg_id, timestamp=1_000_000_000)
    else:
        headers = signed_headers(body, msg_id=msg_id)
    r = _client(svc).post("/v1/webhooks/portal", content=body, headers=headers)
    RECORD.note(r.status_code)
    assert r.status_code < 500, (r.status_code, r.text)
    if mode != "valid":
        assert r.status_code == 401, r.text
    if r.status_code in (200, 202) and "change_id" in r.json():
        RECORD.accepted[msg_id] = r.json()["change_id"]
    elif r.status_code >= 400 and msg_id not in RECORD.accepted:
        RECORD.refused.add(msg_id)


mostly_valid = st.fixed_dictionaries(
    {
        "type": st.just("plan_change.requested"),
        "data": st.fixed_dictionaries(
            {
                "customer": st.sampled_from(["acme", "ghost"])
                | st.text(alphabet=string.printable, min_size=1, max_size=260),
                "plan": st.sampled_from(["free", "starter", "pro", "legacy_x"]),
                "requested_at": st.datetimes(
                    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 11, 1)
                ).map(lambda d: iso(d.replace(tzinfo=UTC))),
            },
            optional={"plan_version": st.none() | st.integers(0, 3)},
        ),
    }
)


@pytest.mark.slow
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=mostly_valid, msg_id=msg_ids)
def test_signed_plan_changes_with_fuzzed_fields(
    target: tuple[ServiceProc, Path], doc: dict[str, Any], msg_id: str
) -> None:
    svc, _ = target
    body = json.dumps(doc).encode()
    headers = signed_headers(body, msg_id=msg_id)
    r = _client(svc).post("/v1/webhooks/portal", content=body, headers=headers)
    RECORD.note(r.status_code)
    assert r.status_code in (200, 202, 400, 409), (r.status_code, r.text)
    if r.status_code in (200, 202):
        RECORD.accepted[msg_id] = r.json()["change_id"]
    elif msg_id not in RECORD.accepted:
        RECORD.refused.add(msg_id)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["change", "change", "list", "status"]),
    customer=customers,
    doc=st.fixed_dictionaries(
        {"plan": plans},
        optional={"plan_version": scalars, "dry_run": st.just(False) | scalars},
    )
    | json_docs,
    raw=st.booleans(),
    junk=st.binary(max_size=100),
    key=st.none() | header_text,
    query=st.dictionaries(
        st.sampled_from(["status", "customer", "limit", "cursor", "x"]), header_text, max_size=4
    ),
    auth=st.sampled_from(["good", "good", "good", "bad", "none"]),
)
def test_admin_never_5xx(
    target: tuple[ServiceProc, Path],
    kind: str,
    customer: str,
    doc: Any,
    raw: bool,
    junk: bytes,
    key: str | None,
    query: dict[str, str],
    auth: str,
) -> None:
    svc, _ = target
    if isinstance(doc, dict) and doc.get("dry_run") is True:
        doc["dry_run"] = False  # a preview reads OpenMeter; this drill is about intake
    headers = {
        "good": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "bad": {"Authorization": "Bearer nope"},
        "none": {},
    }[auth]
    if key is not None:
        headers["Idempotency-Key"] = key
    path_customer = quote(customer, safe="") or "x"
    http = _client(svc)
    if kind == "change":
        content = junk if raw else json.dumps(doc).encode()
        r = http.post(
            f"/v1/customers/{path_customer}/plan-change", content=content, headers=headers
        )
        if r.status_code in (200, 202):
            RECORD.admin_changes.add(r.json()["change_id"])
    elif kind == "list":
        r = http.get("/v1/changes", params=query, headers=headers)
    else:
        r = http.get(f"/v1/customers/{path_customer}", headers=headers)
    RECORD.note(r.status_code)
    assert r.status_code < 500, (kind, r.status_code, r.text)
    if auth != "good":  # (404: a path that matches no route, e.g. an encoded "/")
        assert r.status_code in (401, 404), r.text


@pytest.mark.slow
def test_no_half_stored_rows(target: tuple[ServiceProc, Path]) -> None:
    """Runs after the two fuzzers (file order): the database agrees with what was answered."""
    svc, db = target
    assert svc.alive() and svc.http.get("/healthz").status_code == 200
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT id, customer, plan_key, plan_version, requested_at, received_at, source, "
            "source_id, status, updated_at, details FROM change_requests"
        ).fetchall()
        custs = dict(conn.execute("SELECT customer, desired_change_id FROM customers").fetchall())
    by_id = {r[0]: r for r in rows}
    by_source = {r[7]: r for r in rows if r[6] == "webhook"}
    for cid, customer, plan, version, req_at, rec_at, source, _, status, upd, details in rows:
        assert customer and "/" not in customer and customer == customer.strip(), customer
        assert PLAN_RE.match(plan) and len(plan) <= 64, plan
        assert version is None or 1 <= version < 2**31, version
        assert req_at and rec_at and upd, cid
        assert source in ("webhook", "admin"), source
        assert status in STATUSES, status
        json.loads(details)
        assert customer in custs, f"change {cid} has no customer row"
    for customer, desired in custs.items():
        if desired is not None:
            assert desired in by_id and by_id[desired][1] == customer, (customer, desired)
    for msg_id, change_id in RECORD.accepted.items():
        assert by_source[msg_id][0] == change_id, msg_id
    for msg_id in RECORD.refused - RECORD.accepted.keys():
        assert msg_id not in by_source, f"refused webhook {msg_id!r} left a row"
    for change_id in RECORD.admin_changes:
        assert by_id[change_id][6] == "admin"
    assert RECORD.answers, "the fuzzers did not run"
    print("answers", sorted(RECORD.answers.items()), "accepted", len(RECORD.accepted))
    assert len(RECORD.accepted) >= 20, "too few valid webhooks were generated to mean anything"
    assert not [s for s in RECORD.answers if s >= 500], RECORD.answers
