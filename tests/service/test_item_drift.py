"""Item drift on a converged customer (issue 17): someone PATCHes the items of a customer that
had converged on *starter* back to *free*'s directly in OpenMeter. The listing the sweep reads
has no items; the mark stored at convergence (``reconciler.domain.drift``) tells the quick
sweep that the subscription moved, one read shows the items differ, and the customer is healed
at the next boundary (a scheduled change to starter, sent once). The full sweep reads every
converged customer's items, so it finds drift even when the subscription's ``updatedAt`` did not
move. A cancelation made outside stays respected."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .conftest import Emu, ServiceServer, make_settings, pg_query, plan_change, wait_for

DAY = 86400


def changes(svc: ServiceServer, customer: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = svc.admin("GET", f"/v1/changes?customer={customer}").json()[
        "items"
    ]
    return items


def status_of(svc: ServiceServer, customer: str) -> str:
    items = changes(svc, customer)
    return str(items[0]["status"]) if items else "none"


def sweep(svc: ServiceServer, full: bool = False) -> dict[str, int]:
    r = svc.admin("POST", "/v1/sweeps", json={"full": full})
    assert r.status_code == 200, r.text
    counts: dict[str, int] = r.json()["customers"]
    return counts


def current(emu: Emu, customer: str) -> dict[str, Any]:
    live = [s for s in emu.subscriptions(customer) if s["status"] in ("active", "canceled")]
    assert len(live) == 1, live
    return live[0]


def patch_items_to_free(emu: Emu, customer: str) -> None:
    """What an operator does by hand: put free's api_credits item back on the subscription."""
    plan = emu.http.get("/api/v1/plans/free").json()
    card = plan["phases"][0]["rateCards"][0]
    assert card["key"] == "api_credits"
    sub = current(emu, customer)
    r = emu.http.patch(
        f"/api/v1/subscriptions/{sub['id']}",
        json={
            "timing": "immediate",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": card}],
        },
    )
    assert r.status_code == 200, r.text


def reconciler_mutations(emu: Emu, customer: str, since: int) -> list[tuple[str, str]]:
    rows = emu.mutations(emu.customer_id(customer))[since:]
    return [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in rows]


def converge_on_starter(emu: Emu, svc: ServiceServer, customer: str) -> None:
    assert svc.webhook(plan_change(customer, "starter")).status_code == 202
    wait_for(lambda: status_of(svc, customer) == "applied")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'd.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def audit_rows(url: str, operation: str) -> list[tuple[Any, ...]]:
    query = "SELECT kind, customer, data FROM audit_log WHERE operation = "
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(query + "?", (operation,)).fetchall()
        return [(k, c, json.loads(d)) for k, c, d in rows]
    return pg_query(url, query + "%s", operation)  # JSONB comes back decoded


def test_item_drift_is_healed_by_the_quick_sweep_once(emu: Emu, database: str) -> None:
    emu.customer("drifty")
    emu.advance(DAY)
    s = make_settings(emu.url, database)
    with ServiceServer(s, sweep_at_start=False) as svc:
        converge_on_starter(emu, svc, "drifty")
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "drifty") == "converged")
        assert emu.value("drifty")["balance"] == 550_000
        assert sweep(svc) == {"in_sync": 1}  # the mark matches: nothing read
        cid = emu.customer_id("drifty")
        reads_before = len(
            [r for r in emu.requests("GET") if r["path"].startswith("/api/v1/subscriptions/")]
        )
        assert sweep(svc) == {"in_sync": 1}
        reads_after = len(
            [r for r in emu.requests("GET") if r["path"].startswith("/api/v1/subscriptions/")]
        )
        assert reads_after == reads_before  # an unmoved customer costs no read

        # Behind our back: the items go back to free's (50,000 left).
        emu.use("drifty", 7)
        patch_items_to_free(emu, "drifty")
        assert emu.value("drifty")["balance"] == 50_000 - 7
        n = len(emu.mutations(cid))

        assert sweep(svc) == {"reconciled": 1}
        wait_for(lambda: status_of(svc, "drifty") == "scheduled")
        # healed at the boundary, never mid-period: one scheduled change back to starter
        assert reconciler_mutations(emu, "drifty", n) == [("POST", "change")]
        succ = [x for x in emu.subscriptions("drifty") if x["status"] == "scheduled"]
        assert [x["plan"]["key"] for x in succ] == ["starter"]
        assert emu.value("drifty")["balance"] == 50_000 - 7
        assert svc.metric("reconciler_drift_found_total", kind="items") == 1
        assert svc.metric("reconciler_drift_healed_total", kind="schedule_change") == 1
        # audited with what was found
        rows = audit_rows(database, "drift_found")
        assert len(rows) == 1
        kind, who, data = rows[0]
        assert (kind, who, data["kind"], data["expected_plan"]) == (
            "decision",
            "drifty",
            "items",
            "starter@v1",
        )
        assert data["found"]["items"]["api_credits"]["allowance"] == "50000"
        assert data["found"]["plan"] == "starter@v1"

        # further sweeps send nothing more
        assert sweep(svc) == {"in_sync": 1}
        assert sweep(svc, full=True) == {"reconciled": 1}  # full: every unconverged change
        assert reconciler_mutations(emu, "drifty", n) == [("POST", "change")]

        # past the boundary: starter's allowance again, converged, marked, in sync
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "drifty") == "converged")
        assert emu.value("drifty")["balance"] == 550_000
        assert current(emu, "drifty")["plan"]["key"] == "starter"
        assert sweep(svc) == {"in_sync": 1}
        assert sweep(svc, full=True) == {"in_sync": 1}
        assert reconciler_mutations(emu, "drifty", n) == [("POST", "change")]
        assert svc.metric("reconciler_drift_found_total", kind="items") == 1


def test_full_sweep_finds_item_drift_the_listing_does_not_show(emu: Emu, tmp_path: Path) -> None:
    """Even if OpenMeter did not move ``updatedAt`` on an edit, the nightly full sweep compares
    the items themselves (one read per converged customer)."""
    emu.customer("quiet")
    emu.advance(DAY)
    db = tmp_path / "q.db"
    s = make_settings(emu.url, f"sqlite:///{db}")
    with ServiceServer(s, sweep_at_start=False) as svc:
        converge_on_starter(emu, svc, "quiet")
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "quiet") == "converged")
        patch_items_to_free(emu, "quiet")
        # Pretend the edit left updatedAt where it was: the stored mark's token is the one the
        # listing shows now, its digest still starter's items.
        sub = current(emu, "quiet")
        token = f"{sub['id']}@{_iso(sub['updatedAt'])}"
        with sqlite3.connect(db) as conn:
            (old,) = conn.execute("SELECT observed_mark FROM change_requests").fetchone()
            conn.execute(
                "UPDATE change_requests SET observed_mark = ?", (f"{token} {old.split(' ')[1]}",)
            )
        n = len(emu.mutations(emu.customer_id("quiet")))
        assert sweep(svc) == {"in_sync": 1}  # the quick sweep cannot see it
        assert sweep(svc, full=True) == {"reconciled": 1}
        wait_for(lambda: status_of(svc, "quiet") == "scheduled")
        assert reconciler_mutations(emu, "quiet", n) == [("POST", "change")]
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "quiet") == "converged")
        assert emu.value("quiet")["balance"] == 550_000
        assert reconciler_mutations(emu, "quiet", n) == [("POST", "change")]


def test_moved_subscription_with_the_same_items_refreshes_the_mark(
    emu: Emu, tmp_path: Path
) -> None:
    emu.customer("same")
    emu.advance(DAY)
    db = tmp_path / "s.db"
    s = make_settings(emu.url, f"sqlite:///{db}")
    with ServiceServer(s, sweep_at_start=False) as svc:
        converge_on_starter(emu, svc, "same")
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "same") == "converged")
        with sqlite3.connect(db) as conn:
            (good,) = conn.execute("SELECT observed_mark FROM change_requests").fetchone()
            stale = "old-sub@2026-01-01T00:00:00+00:00 " + good.split(" ")[1]
            conn.execute("UPDATE change_requests SET observed_mark = ?", (stale,))
        n = len(emu.mutations(emu.customer_id("same")))
        assert sweep(svc) == {"in_sync": 1}  # one read: the items are starter's
        with sqlite3.connect(db) as conn:
            (now,) = conn.execute("SELECT observed_mark FROM change_requests").fetchone()
        assert now == good  # refreshed: the next quick sweep reads nothing
        assert reconciler_mutations(emu, "same", n) == []


def test_cancelation_made_outside_stays_respected(emu: Emu, tmp_path: Path) -> None:
    emu.customer("leaver")
    emu.advance(DAY)
    s = make_settings(emu.url, f"sqlite:///{tmp_path}/r.db")
    with ServiceServer(s, sweep_at_start=False) as svc:
        converge_on_starter(emu, svc, "leaver")
        emu.advance(32 * DAY)
        sweep(svc)
        wait_for(lambda: status_of(svc, "leaver") == "converged")
        sub = current(emu, "leaver")
        r = emu.http.post(
            f"/api/v1/subscriptions/{sub['id']}/cancel", json={"timing": "next_billing_cycle"}
        )
        assert r.status_code == 200, r.text
        n = len(emu.mutations(emu.customer_id("leaver")))
        assert sweep(svc) == {"reconciled": 1}  # looked at once: respected, nothing sent
        assert sweep(svc) == {"in_sync": 1}
        assert sweep(svc, full=True) == {"in_sync": 1}
        assert status_of(svc, "leaver") == "converged"
        assert current(emu, "leaver")["status"] == "canceled"
        # the cancelation takes effect: looked at once more, still left alone
        emu.advance(40 * DAY)
        assert sweep(svc) == {"reconciled": 1}
        assert sweep(svc) == {"in_sync": 1}
        assert sweep(svc, full=True) == {"in_sync": 1}
        assert reconciler_mutations(emu, "leaver", n) == []
        assert svc.metric("reconciler_drift_found_total", kind="items") == 0
        assert not [x for x in emu.subscriptions("leaver") if x["status"] == "active"]


def _iso(wire: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(wire.replace("Z", "+00:00")).isoformat()
