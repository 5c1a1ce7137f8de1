"""Sweeps: drift made by hand in OpenMeter is healed, boundaries passed are converged, and a
lost database is rebuilt from OpenMeter's tags by the full sweep."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.openmeter.models import PlanReference, Subscription
from reconciler.service.worker import needs_reconcile
from reconciler.store.types import ChangeRecord, ChangeSource, ChangeStatus

from .conftest import Emu, ServiceServer, make_settings, plan_change, wait_for


def live(emu: Emu, customer: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in emu.subscriptions(customer):
        out.setdefault(s["status"], []).append(s)
    return out


def status_of(svc: ServiceServer, customer: str) -> str:
    items = svc.admin("GET", f"/v1/changes?customer={customer}").json()["items"]
    return str(items[0]["status"]) if items else "none"


def sweep(svc: ServiceServer, full: bool = False) -> dict[str, int]:
    r = svc.admin("POST", "/v1/sweeps", json={"full": full})
    assert r.status_code == 200, r.text
    counts: dict[str, int] = r.json()["customers"]
    return counts


def test_sweep_heals_drift_converges_and_full_sweep_adopts(emu: Emu, tmp_path: Path) -> None:
    emu.customer("drift")
    emu.customer("bystander")  # no desired state: left alone
    emu.advance(86400)
    emu.use("drift", 10)
    s = make_settings(emu.url, f"sqlite:///{tmp_path}/a.db")
    with ServiceServer(s, sweep_at_start=False) as svc:
        assert svc.webhook(plan_change("drift", "starter")).status_code == 202
        wait_for(lambda: status_of(svc, "drift") == "applied")
        assert sweep(svc) == {"in_sync": 1, "no_desired_state": 1}

        # 1. someone deletes the scheduled successor by hand
        succ = live(emu, "drift")["scheduled"][0]
        assert emu.http.delete(f"/api/v1/subscriptions/{succ['id']}").status_code == 204
        assert sweep(svc) == {"reconciled": 1, "no_desired_state": 1}
        assert status_of(svc, "drift") == "applied"  # the sweep waits for its reconciles
        assert live(emu, "drift")["scheduled"][0]["plan"]["key"] == "starter"
        assert emu.value("drift")["balance"] == 550_000 - 10  # allowance untouched

        # 2. the boundary passes while nobody looks: the sweep converges it
        emu.advance(32 * 86400)
        assert sweep(svc)["reconciled"] == 1
        wait_for(
            lambda: (
                svc.admin("GET", "/v1/changes?customer=drift").json()["items"][0]["status"]
                == "converged"
            )
        )
        assert sweep(svc) == {"in_sync": 1, "no_desired_state": 1}

        # 3. a downgrade scheduled by hand on a converged customer is undone (drift healed)
        cur = live(emu, "drift")["active"][0]
        r = emu.http.post(
            f"/api/v1/subscriptions/{cur['id']}/change",
            json={"timing": "next_billing_cycle", "plan": {"key": "free"}},
        )
        assert r.status_code in (200, 201), r.text
        assert sweep(svc)["reconciled"] == 1
        wait_for(lambda: svc.metric("reconciler_drift_healed_total") >= 1)
        subs = live(emu, "drift")
        # the hand-scheduled free successor is gone; starter stays the plan on record (its
        # pending cancelation is the engine bug shown by test_heal_leaves_no_cancelation)
        scheduled_free = [
            x
            for v in subs.values()
            for x in v
            if x["plan"]["key"] == "free" and x["status"] == "scheduled"
        ]
        assert scheduled_free == []
        on_record = subs.get("active", []) + subs.get("canceled", [])
        assert [x["plan"]["key"] for x in on_record] == ["starter"]
        assert (
            svc.metric("reconciler_sweep_customers_total", kind="sweep", result="reconciled") == 3
        )

    # 4. the database is lost: the nightly full sweep adopts the customer from OpenMeter's tags
    s2 = make_settings(emu.url, f"sqlite:///{tmp_path}/b.db")
    with ServiceServer(s2, sweep_at_start=False) as svc:
        assert sweep(svc) == {"no_desired_state": 2}
        counts = sweep(svc, full=True)
        assert counts == {"adopted": 1, "untagged": 1}
        changes = svc.admin("GET", "/v1/changes?customer=drift").json()["items"]
        assert [(c["plan"], c["source"]) for c in changes] == [("starter", "sweep")]
        wait_for(
            lambda: (
                svc.admin("GET", "/v1/changes?customer=drift").json()["items"][0]["status"]
                == "converged"
            )
        )


def test_sweep_finds_desired_state_stored_under_the_customer_id(emu: Emu, tmp_path: Path) -> None:
    """A portal that names customers by OpenMeter id: the sweep looks them up by key first and
    then by id, and still checks (and heals) them."""
    emu.customer("by-key")
    emu.customer("by-id")
    cid = emu.customer_id("by-id")
    emu.advance(86400)
    s = make_settings(emu.url, f"sqlite:///{tmp_path}/ids.db")
    with ServiceServer(s, sweep_at_start=False) as svc:
        assert svc.webhook(plan_change("by-key", "starter")).status_code == 202
        assert svc.webhook(plan_change(cid, "starter")).status_code == 202
        wait_for(lambda: status_of(svc, "by-key") == "applied" and status_of(svc, cid) == "applied")
        assert sweep(svc) == {"in_sync": 2}
        succ = live(emu, cid)["scheduled"][0]
        assert emu.http.delete(f"/api/v1/subscriptions/{succ['id']}").status_code == 204
        assert sweep(svc) == {"reconciled": 1, "in_sync": 1}
        assert live(emu, cid)["scheduled"][0]["plan"]["key"] == "starter"


def test_heal_leaves_no_cancelation(emu: Emu, tmp_path: Path) -> None:
    emu.customer("heal")
    s = make_settings(emu.url, f"sqlite:///{tmp_path}/h.db")
    with ServiceServer(s, sweep_at_start=False) as svc:
        assert svc.webhook(plan_change("heal", "starter")).status_code == 202
        wait_for(lambda: status_of(svc, "heal") == "applied")
        emu.advance(32 * 86400)
        sweep(svc)
        assert status_of(svc, "heal") == "converged"
        cur = live(emu, "heal")["active"][0]
        r = emu.http.post(
            f"/api/v1/subscriptions/{cur['id']}/change",
            json={"timing": "next_billing_cycle", "plan": {"key": "free"}},
        )
        assert r.status_code == 200
        sweep(svc)
        sweep(svc)
        subs = live(emu, "heal")
        assert [x["plan"]["key"] for x in subs.get("active", [])] == ["starter"]
        assert subs["active"][0].get("activeTo") is None


T = datetime(2026, 5, 10, tzinfo=UTC)


def _change(
    status: ChangeStatus, plan: str = "starter", converges: datetime | None = None
) -> ChangeRecord:
    return ChangeRecord(
        id="c1",
        customer="x",
        customer_id="id",
        plan_key=plan,
        plan_version=None,
        requested_at=T,
        received_at=T,
        source=ChangeSource.WEBHOOK,
        source_id="m",
        status=status,
        direction=None,
        timing=None,
        rule=None,
        effective_at=None,
        converges_at=converges,
        last_error=None,
        attempts=0,
        next_attempt_at=None,
        updated_at=T,
    )


def _sub(
    plan: str, status: str, start: datetime, end: datetime | None = None, succ: bool = False
) -> Subscription:
    return Subscription(
        annotations={"subscription.superseding.id": "s-next"} if succ else None,
        id=f"s-{plan}-{status}",
        active_from=start,
        active_to=end,
        status=status,
        customer_id="id",
        plan=PlanReference(key=plan, version=1),
        billing_cadence="P1M",
        billing_anchor=start,
    )


LATER = datetime(2026, 6, 1, tzinfo=UTC)
BEFORE = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "subs", "expected"),
    [
        (_change(ChangeStatus.PENDING), [], True),
        (_change(ChangeStatus.FAILED), [], False),
        (_change(ChangeStatus.SUPERSEDED), [], False),
        (_change(ChangeStatus.CONVERGED), [_sub("starter", "active", BEFORE)], False),
        (_change(ChangeStatus.CONVERGED), [_sub("free", "active", BEFORE)], True),
        (_change(ChangeStatus.CONVERGED), [], True),
        (_change(ChangeStatus.CONVERGED), [_sub("starter", "canceled", BEFORE, LATER)], True),
        (
            _change(ChangeStatus.CONVERGED),
            [_sub("starter", "active", BEFORE, LATER), _sub("free", "scheduled", LATER)],
            True,
        ),
        (
            _change(ChangeStatus.APPLIED, converges=LATER),
            [_sub("free", "active", BEFORE, LATER), _sub("starter", "scheduled", LATER)],
            False,
        ),
        (_change(ChangeStatus.APPLIED, converges=LATER), [_sub("free", "active", BEFORE)], True),
        # OpenMeter lists only the current subscription: the annotation shows the successor
        (
            _change(ChangeStatus.APPLIED, converges=LATER),
            [_sub("free", "canceled", BEFORE, LATER, succ=True)],
            False,
        ),
        (
            _change(ChangeStatus.APPLIED, converges=LATER),
            [_sub("free", "canceled", BEFORE, LATER)],
            True,
        ),
        (
            _change(ChangeStatus.CONVERGED),
            [_sub("starter", "canceled", BEFORE, LATER, succ=True)],
            True,
        ),
        (
            _change(ChangeStatus.SCHEDULED, converges=T),
            [_sub("free", "active", BEFORE, T), _sub("starter", "scheduled", T)],
            True,
        ),
    ],
)
def test_needs_reconcile(change: ChangeRecord, subs: list[Subscription], expected: bool) -> None:
    assert needs_reconcile(change, subs, T) is expected
