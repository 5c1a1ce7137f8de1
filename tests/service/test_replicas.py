"""Several replicas on one PostgreSQL database: every mutation applied once, one sweep leader."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import Emu, ServiceServer, make_settings, pg_query, plan_change, wait_for

pytestmark = pytest.mark.postgres

CUSTOMERS = 16


def test_two_replicas_apply_each_mutation_once(emu: Emu, pg_url: str) -> None:
    names = [f"cust{n:02d}" for n in range(CUSTOMERS)]
    for name in names:
        emu.customer(name)
    emu.advance(86400)
    for name in names:
        emu.use(name, 100)

    a = ServiceServer(make_settings(emu.url, pg_url, instance_id="replica-a", concurrency=4))
    b = ServiceServer(make_settings(emu.url, pg_url, instance_id="replica-b", concurrency=4))
    with a, b:
        # exactly one replica leads the sweeps
        wait_for(
            lambda: (
                a.metric("reconciler_leader", name="sweep")
                + b.metric("reconciler_leader", name="sweep")
                == 1
            )
        )

        # every webhook delivered to both replicas at once (the portal retries, a load
        # balancer spreads), in random order
        deliveries = []
        for name in names:
            payload = plan_change(name, "starter")
            deliveries += [(a, payload, f"msg-{name}"), (b, payload, f"msg-{name}")]
        random.Random(7).shuffle(deliveries)
        statuses: list[int] = []
        lock = threading.Lock()

        def send(chunk: list[tuple[ServiceServer, dict[str, object], str]]) -> None:
            for svc, payload, msg_id in chunk:
                r = svc.webhook(payload, msg_id=msg_id)
                with lock:
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=send, args=(deliveries[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Counter(statuses) == {202: CUSTOMERS, 200: CUSTOMERS}

        def all_applied() -> bool:
            rows = pg_query(pg_url, "SELECT status, count(*) FROM change_requests GROUP BY status")
            return dict(rows) == {"applied": CUSTOMERS}

        wait_for(all_applied, timeout=30)

        # a second wave: a later request (pro) for every customer, through either replica
        for i, name in enumerate(names):
            svc = a if i % 2 else b
            assert svc.webhook(plan_change(name, "pro"), msg_id=f"msg2-{name}").status_code == 202

        def all_applied_again() -> bool:
            rows = pg_query(
                pg_url, "SELECT status, count(*) FROM change_requests GROUP BY status ORDER BY 1"
            )
            return dict(rows) == {"applied": CUSTOMERS, "superseded": CUSTOMERS}

        wait_for(all_applied_again, timeout=30)
        worked = {
            svc.settings.instance_id: svc.metric("reconciler_actions_total", kind="edit_items")
            for svc in (a, b)
        }

    for name in names:
        kinds = Counter(
            m["method"] + ("" if m["method"] == "PATCH" else " " + m["path"].rsplit("/", 1)[-1])
            for m in emu.mutations(emu.customer_id(name))
        )
        # free -> starter: one PATCH and one scheduled change; starter -> pro: one PATCH, the
        # starter successor unscheduled and pro scheduled; never any of it twice
        assert kinds == {"PATCH": 2, "POST change": 2, "POST unschedule-cancelation": 1}, (
            name,
            kinds,
        )
        assert emu.value(name)["balance"] == 5_000_000 - 100, name
    # both replicas took part in the work
    assert sum(worked.values()) == 2 * CUSTOMERS
    assert all(v > 0 for v in worked.values()), worked


def test_admin_documents_match_the_cli(emu: Emu, pg_url: str, tmp_path: Path) -> None:
    """``GET /v1/customers/{c}`` is ``reconciler status --json``; the dry run is
    ``reconciler change --dry-run --json`` (same database, same OpenMeter)."""
    emu.customer("same")
    emu.advance(86400)
    emu.use("same", 77)
    settings = make_settings(emu.url, pg_url, instance_id="svc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {
        "RECONCILER_SECRETS_DIR": str(tmp_path / "none"),
        "RECONCILER_OPENMETER_URL": emu.url,
        "RECONCILER_DATABASE_URL": pg_url,
        "RECONCILER_POLICY_PATH": str(settings.policy_path),
        "RECONCILER_CLOCK_URL": f"{emu.url}/_emulator/clock",
        "RECONCILER_LOG_LEVEL": "ERROR",
    }

    def cli(*args: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()
        return json.loads(out.stdout)

    def stable(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k not in ("observed_at", "recent_audit", "now")}

    with ServiceServer(settings) as svc:
        assert svc.webhook(plan_change("same", "starter")).status_code == 202
        wait_for(lambda: pg_query(pg_url, "SELECT status FROM change_requests") == [("applied",)])
        api = svc.admin("GET", "/v1/customers/same").json()
        assert stable(api) == stable(cli("status", "same", "--json"))
        assert api["desired"]["status"] == "applied"

        dry = svc.admin(
            "POST", "/v1/customers/same/plan-change", json={"plan": "pro", "dry_run": True}
        ).json()
        expected = cli("change", "same", "pro", "--dry-run", "--json")
        assert dry.keys() == expected.keys()
        # the emulator's clock runs between the two calls: times and prorated charges move
        moving = ("effective_at", "charges", "now", "observed_at")
        assert {k: v for k, v in dry.items() if k not in moving} == {
            k: v for k, v in expected.items() if k not in moving
        }
        assert dry["target"]["key"] == "pro"
