"""The official OpenMeter SDK (openmeter==1.0.0b236, corehttp) drives a full scenario against a
real emulator server: a client nobody on this team wrote."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from corehttp.exceptions import HttpResponseError
from openmeter import Client

from reconciler.emulator import Clock, EmulatorServer

from .conftest import CATALOG, T0


def as_dict(model: Any) -> dict[str, Any]:
    return dict(model) if not isinstance(model, dict) else model


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(catalog=CATALOG, clock=Clock(T0)) as em:
        yield em


def test_sdk_full_scenario(server: EmulatorServer) -> None:
    client = Client(endpoint=server.url)
    cust = client.customers.create(
        {"name": "Acme", "key": "acme", "usageAttribution": {"subjectKeys": ["acme"]}}
    )
    assert cust.key == "acme"
    sub = client.subscriptions.create({"customerKey": "acme", "plan": {"key": "free"}})
    assert sub.status == "active"
    client.events.ingest_events_json(
        [
            {
                "specversion": "1.0",
                "id": "sdk-1",
                "source": "sdk",
                "type": "api_call",
                "subject": "acme",
                "time": (T0 + timedelta(seconds=5)).isoformat(),
                "data": {"credits": 3},
            }
        ]
    )
    httpx.post(f"{server.url}/_emulator/clock", json={"advance": "PT1H"}).raise_for_status()
    value = client.customer_entitlement.get_customer_entitlement_value("acme", "api_credits")
    assert (value.usage, value.balance) == (3, 49997)

    plan = client.plans.get("starter")
    card = next(rc for rc in as_dict(plan)["phases"][0]["rateCards"] if rc["key"] == "api_credits")
    edited = client.subscriptions.edit(
        sub.id,
        {
            "timing": "immediate",
            "customizations": [
                {"op": "add_item", "phaseKey": "default", "rateCard": as_dict(card)}
            ],
        },
    )
    assert edited.plan.key == "free"
    value = client.customer_entitlement.get_customer_entitlement_value("acme", "api_credits")
    assert (value.usage, value.balance, value.total_available_grant_amount) == (3, 549997, 550000)
    expanded = as_dict(client.subscriptions.get_expanded(sub.id))
    ent = expanded["phases"][0]["items"][0]["included"]["entitlement"]
    assert ent["metadata"] == {"tier": "starter"}

    changed = client.subscriptions.change(
        sub.id, {"timing": "next_billing_cycle", "plan": {"key": "free"}}
    )
    assert changed.current.status == "canceled"
    assert changed.next.status == "scheduled"
    listed = client.customers.list_customer_subscriptions("acme")
    assert [s["status"] for s in listed["items"]] == ["scheduled", "canceled"]
    with pytest.raises(HttpResponseError) as err:
        client.subscriptions.unschedule_cancelation(sub.id)
    assert err.value.status_code == 409
    client.subscriptions.delete(changed.next.id)
    back = client.subscriptions.unschedule_cancelation(sub.id)
    assert back.status == "active"
    access = client.customer.get_customer_access("acme")
    assert as_dict(access)["entitlements"]["api_credits"]["balance"] == 549997


def test_drop_after_apply_over_a_real_connection(server: EmulatorServer) -> None:
    httpx.post(
        f"{server.url}/_emulator/faults",
        json={
            "method": "POST",
            "path": "/api/v1/customers",
            "dropAfterApply": True,
            "count": 1,
        },
    ).raise_for_status()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.url}/api/v1/customers", json={"name": "X", "key": "x"})
    got = httpx.get(f"{server.url}/api/v1/customers/x")
    assert got.status_code == 200 and got.json()["key"] == "x"
    log = httpx.get(f"{server.url}/_emulator/requests", params={"method": "POST"}).json()
    assert [(r["path"], r["applied"], r["dropped"]) for r in log["requests"]] == [
        ("/api/v1/customers", True, True)
    ]


def test_sdk_reads_the_invoices_billing_writes() -> None:
    """``client.invoices.list`` (the SDK's own models) parses the emulator's invoices."""
    with EmulatorServer(catalog=CATALOG, clock=Clock(T0), billing=True) as em:
        client = Client(endpoint=em.url)
        cust = client.customers.create(
            {"name": "Acme Corp", "key": "acme", "usageAttribution": {"subjectKeys": ["acme"]}}
        )
        client.subscriptions.create({"customerKey": "acme", "plan": {"key": "starter"}})
        httpx.post(
            f"{em.url}/_emulator/clock", json={"now": (T0 + timedelta(seconds=2)).isoformat()}
        ).raise_for_status()
        page = client.invoices.list(customers=[cust.id], expand=["lines"])
        by_status = {inv.status: inv for inv in page["items"]}
        assert set(by_status) == {"paid", "gathering"}
        paid = by_status["paid"]
        assert paid.number == "OM-SANDBOX-ACCO-1" and paid.status_details.immutable
        [line] = paid.lines
        assert (line.name, line.totals.total, line.type) == ("Platform fee", "29", "usage_based")
