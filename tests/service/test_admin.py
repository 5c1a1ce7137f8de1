"""Admin API, probes and metrics over real HTTP against the emulator."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ADMIN_TOKEN, Emu, ServiceServer, make_settings, plan_change, wait_for


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "admin.db"


@pytest.fixture
def svc(emu: Emu, db: Path) -> Iterator[ServiceServer]:
    with ServiceServer(make_settings(emu.url, f"sqlite:///{db}")) as s:
        yield s


def problem(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return r.status_code, r.json()["detail"]


ADMIN_ROUTES = [
    ("GET", "/v1/customers/acme", None),
    ("POST", "/v1/customers/acme/plan-change", {"plan": "pro"}),
    ("GET", "/v1/changes", None),
    ("GET", "/v1/events?status=dead", None),
    ("POST", "/v1/sweeps", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_auth(svc: ServiceServer, method: str, path: str, body: Any) -> None:
    r = svc.http.request(method, path, json=body)
    assert problem(r) == (401, "missing header Authorization: Bearer <admin token>")
    assert r.headers["www-authenticate"] == 'Bearer realm="reconciler-admin"'
    r = svc.http.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
    assert problem(r) == (401, "invalid admin token")
    r = svc.http.request(method, path, json=body, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert problem(r) == (401, "header Authorization must be 'Bearer <admin token>'")


def test_admin_disabled_without_token(emu: Emu, tmp_path: Path) -> None:
    s = make_settings(emu.url, f"sqlite:///{tmp_path}/x.db", admin_token=None)
    with ServiceServer(s) as svc:
        for method, path, body in ADMIN_ROUTES:
            r = svc.admin(method, path, json=body)
            assert problem(r) == (
                404,
                "the admin API is disabled: RECONCILER_ADMIN_TOKEN is not set",
            )
        # probes and metrics stay open
        assert svc.http.get("/healthz").json() == {"status": "ok"}
        assert svc.http.get("/metrics").status_code == 200


def test_status_preview_and_plan_change(emu: Emu, svc: ServiceServer, db: Path) -> None:
    emu.customer("acme")
    emu.advance(86400)
    emu.use("acme", 40)

    st = svc.admin("GET", "/v1/customers/acme")
    assert st.status_code == 200
    doc = st.json()
    assert doc["customer"] == "acme"
    assert doc["customer_id"] == emu.customer_id("acme")
    assert doc["plan_on_record"].startswith("free")
    assert doc["desired"] is None and doc["convergence"] == "no_desired_state"
    assert doc["entitlements"]["api_credits"]["usage"] == 40

    assert problem(svc.admin("GET", "/v1/customers/ghost"))[0] == 404

    dry = svc.admin(
        "POST", "/v1/customers/acme/plan-change", json={"plan": "starter", "dry_run": True}
    )
    assert dry.status_code == 200, dry.text
    preview = dry.json()
    assert preview["direction"] == "upgrade" and preview["timing"] == "immediate"
    assert preview["target"]["key"] == "starter"
    assert preview["actions"][0]["method"] == "PATCH"
    assert len(emu.mutations()) == 1  # only the test's own POST /subscriptions: nothing changed
    assert db.exists()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM change_requests").fetchone() == (0,)

    assert (
        problem(
            svc.admin(
                "POST", "/v1/customers/acme/plan-change", json={"plan": "gold", "dry_run": True}
            )
        )[0]
        == 422
    )
    assert problem(
        svc.admin(
            "POST", "/v1/customers/acme/plan-change", json={"plan": "starter", "plan_version": 0}
        )
    ) == (400, "field plan_version: 0 is not a positive plan version")
    assert problem(
        svc.admin(
            "POST", "/v1/customers/acme/plan-change", json={"plan": "starter", "dry_run": "yes"}
        )
    ) == (400, "field dry_run: must be true or false")

    key = {"Idempotency-Key": "portal-op-17"}
    first = svc.admin(
        "POST", "/v1/customers/acme/plan-change", json={"plan": "starter"}, headers=key
    )
    assert first.status_code == 202, first.text
    wait_for(lambda: [m for m in emu.mutations() if m["method"] == "PATCH"], timeout=2)
    again = svc.admin(
        "POST", "/v1/customers/acme/plan-change", json={"plan": "starter"}, headers=key
    )
    assert again.status_code == 200
    assert again.json()["change_id"] == first.json()["change_id"]
    time.sleep(0.6)
    assert len([m for m in emu.mutations() if m["method"] == "PATCH"]) == 1
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT source, source_id FROM change_requests").fetchall() == [
            ("admin", "portal-op-17")
        ]
    st = svc.admin("GET", "/v1/customers/acme").json()
    assert st["desired"]["change_id"] == first.json()["change_id"]
    assert st["entitlements"]["api_credits"]["balance"] == 550_000 - 40


def test_changes_and_events_listing(emu: Emu, svc: ServiceServer, db: Path) -> None:
    emu.customer("okco")
    # three customers OpenMeter does not know: their changes fail
    for n in range(3):
        assert svc.webhook(plan_change(f"ghost{n}", "pro")).status_code == 202
    assert svc.webhook(plan_change("okco", "starter")).status_code == 202
    wait_for(lambda: len(svc.admin("GET", "/v1/changes?status=failed").json()["items"]) == 3)

    page1 = svc.admin("GET", "/v1/changes?status=failed&limit=2").json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = svc.admin("GET", f"/v1/changes?status=failed&limit=2&cursor={page1['next_cursor']}")
    assert page2.status_code == 200
    items = page1["items"] + page2.json()["items"]
    assert page2.json()["next_cursor"] is None
    assert sorted(i["customer"] for i in items) == ["ghost0", "ghost1", "ghost2"]
    for i in items:
        assert i["status"] == "failed"
        assert i["last_error"].startswith("customer not found in OpenMeter")
    one = svc.admin("GET", "/v1/changes?customer=okco").json()["items"]
    assert [i["customer"] for i in one] == ["okco"]

    assert problem(svc.admin("GET", "/v1/changes?status=broken")) == (
        400,
        "query parameter status: must be one of pending, applied, scheduled, converged, "
        "superseded, failed",
    )
    assert problem(svc.admin("GET", "/v1/changes?limit=0")) == (
        400,
        "query parameter limit: must be an integer from 1 to 500",
    )
    assert problem(svc.admin("GET", "/v1/changes?cursor=garbage"))[0] == 400

    # outbound events: the engine enqueued failed/applied events; mark one dead
    wait_for(lambda: svc.admin("GET", "/v1/events").json()["items"])
    with sqlite3.connect(db) as c:
        (eid,) = c.execute(
            "SELECT id FROM outbox_events WHERE type='plan_change.failed' LIMIT 1"
        ).fetchone()
        c.execute(
            "UPDATE outbox_events SET status='dead', last_error='HTTP 500 x5' WHERE id=?", (eid,)
        )
    dead = svc.admin("GET", "/v1/events?status=dead").json()
    assert [(e["id"], e["status"], e["last_error"]) for e in dead["items"]] == [
        (eid, "dead", "HTTP 500 x5")
    ]
    assert dead["items"][0]["payload"]["error"].startswith("customer not found")
    # the gauge follows the store
    wait_for(lambda: svc.metric("reconciler_outbound_events", status="dead") == 1)
    wait_for(lambda: svc.metric("reconciler_changes", status="failed") == 3)


def test_probes(emu: Emu, svc: ServiceServer) -> None:
    assert svc.http.get("/healthz").json() == {"status": "ok"}
    r = svc.http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    emu.fault(method="GET", path="/api/v1/customers", status=503, count=1000)
    time.sleep(3.1)  # past the readiness cache
    r = svc.http.get("/readyz")
    assert problem(r) == (503, "OpenMeter answered 503 to GET /api/v1/customers")
    emu.http.delete("/_emulator/faults")
    time.sleep(3.1)
    assert svc.http.get("/readyz").status_code == 200
    assert problem(svc.http.get("/nope")) == (404, "no route /nope")


def test_metrics_move(emu: Emu, svc: ServiceServer) -> None:
    emu.customer("metco")
    emu.advance(86400)
    emu.use("metco", 7)
    # one 503 on the first entitlement read: the client retries it
    emu.fault(method="GET", path="/api/v1/customers/*/entitlements/*/value", status=503, count=1)
    assert svc.webhook(plan_change("metco", "starter")).status_code == 202
    assert svc.webhook(b"{bad", msg_id="m-bad").status_code == 400
    wait_for(lambda: svc.metric("reconciler_change_transitions_total", status="applied") == 1)
    m = svc.metric
    assert m("reconciler_actions_total", kind="edit_items", outcome="applied") == 1
    assert m("reconciler_webhook_requests_total", outcome="accepted") == 1
    assert m("reconciler_webhook_requests_total", outcome="invalid") == 1
    assert m("reconciler_openmeter_calls_total", operation="edit_subscription", status="200") == 1
    assert (
        m("reconciler_openmeter_calls_total", operation="get_entitlement_value", status="503") == 1
    )
    assert m("reconciler_openmeter_retries_total", operation="get_entitlement_value") == 1
    assert m("reconciler_openmeter_call_duration_seconds_count", operation="edit_subscription") == 1
    assert m("reconciler_change_transitions_total", status="applied") == 1
    assert m("reconciler_reconciles_total", trigger="request", state="waiting") >= 1
    assert m("reconciler_leader", name="sweep") == 1
    wait_for(lambda: m("reconciler_changes", status="applied") == 1)
    assert m("reconciler_sweep_duration_seconds_count", kind="sweep") >= 1
    text = svc.http.get("/metrics").text
    for series in (
        "reconciler_drift_healed_total",
        "reconciler_usage_not_preserved_total",
        "reconciler_queue_depth",
        "reconciler_outbound_events",
    ):
        assert f"# TYPE {series.removesuffix('_total')}" in text


def test_quote_route(emu: Emu, svc: ServiceServer) -> None:
    emu.customer("qco", plan="starter")
    emu.advance(86400)
    r = svc.admin("GET", "/v1/customers/qco/quote", params={"plan": "pro"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["currency"] == "USD"
    fees = [ln for ln in doc["current"]["lines"] if ln["key"] == "platform_fee"]
    assert fees and fees[0]["amount"] == "29.00"
    assert doc["with_change"] is not None and doc["difference"] is not None
    assert problem(svc.admin("GET", "/v1/customers/qco/quote", params={"plan": "gold"}))[0] == 422
    assert problem(svc.admin("GET", "/v1/customers/qco/quote", params={"at": "soon"}))[0] == 400
    assert problem(svc.admin("GET", "/v1/customers/ghost/quote"))[0] == 404
    assert svc.http.get("/v1/customers/qco/quote").status_code == 401
