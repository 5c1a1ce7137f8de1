"""Several replicas on one PostgreSQL database: every mutation applied once, one sweep leader."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from conftest import Emu, ServiceServer, make_settings, pg_query, plan_change, wait_for

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
