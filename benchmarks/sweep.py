"""Benchmark 1: a no-op sweep by ``reconciler run`` vs a bare httpx loop over the same GETs.

    .venv/bin/python -m benchmarks.sweep --customers 10000 [--rounds 3] [--db sqlite|postgres]

The emulator runs in its own process with N customers on *free* (``/_emulator/bulk``); the
service runs in its own process (``reconciler run``); sweeps are triggered through the admin API
(``POST /v1/sweeps``) and timed end to end. The bare loop is an ``httpx.AsyncClient`` issuing
the same ``GET /api/v1/customers?page=P&pageSize=500&expand=subscriptions`` requests with the
same concurrency (the sweep reads one page at a time) and decoding the JSON. Rounds alternate
(bare, sweep, bare, sweep, …) so both see the same machine state. Reports wall time,
requests/s, customers/s, the ratio bare/sweep (goal ≥ 0.8) and the service's peak RSS (VmHWM;
goal < 200 MB at 100k).

``--managed`` seeds the reconciler's store first with a converged desired state on *free* for
every customer (what a fleet it manages looks like at rest), so the sweep also looks every
customer up in the store and checks it against OpenMeter (result ``in_sync``); without it no
customer has desired state (result ``no_desired_state``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from benchmarks.harness import (
    EmulatorProc,
    ServiceProc,
    machine,
    peak_rss_mb,
    pg_database,
    rss_mb,
    wait_until,
    workdir,
)

PAGE = 500  # reconciler.service.worker.SWEEP_PAGE_SIZE


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.partition("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def bare_loop(url: str, customers: int, concurrency: int = 1) -> float:
    pages = list(range(1, -(-customers // PAGE) + 1))  # the sweep stops at totalCount
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def one(p: int) -> int:
            async with sem:
                r = await http.get(
                    "/api/v1/customers",
                    params={"page": p, "pageSize": PAGE, "expand": "subscriptions"},
                )
                r.raise_for_status()
                return len(r.json()["items"])

        got = await asyncio.gather(*(one(p) for p in pages))
        elapsed = time.perf_counter() - started
    assert sum(got) == customers, (sum(got), customers)
    return elapsed


def observed_marks(em_url: str) -> dict[str, str]:
    """The mark the engine stores when a change converges (``reconciler.domain.drift``), per
    customer key: the current subscription's ``id@updatedAt`` as the listing shows it (and a
    placeholder digest: an unmoved token is never read). Untimed set-up."""
    from reconciler.domain.drift import subscription_token

    marks: dict[str, str] = {}
    with httpx.Client(base_url=em_url, timeout=120) as http:
        page = 1
        while True:
            r = http.get(
                "/api/v1/customers",
                params={"page": page, "pageSize": 1000, "expand": "subscriptions"},
            )
            r.raise_for_status()
            items = r.json()["items"]
            for c in items:
                sub = next(s for s in c["subscriptions"] if s["status"] == "active")
                at = datetime.fromisoformat(sub["updatedAt"].replace("Z", "+00:00"))
                marks[c["key"]] = f"{subscription_token(sub['id'], at)} seed"
            if len(items) < 1000:
                return marks
            page += 1


def seed_converged(
    url: str,
    customers: int,
    prefix: str = "cust-",
    plan: str = "free",
    marks: dict[str, str] | None = None,
) -> float:
    """Give every bulk-loaded customer a converged desired state on ``plan`` (the store's own
    migrations, then plain multi-row inserts), with the observed mark it would have stored at
    convergence; returns the seconds it took."""
    import sqlalchemy as sa

    from reconciler.store.schema import change_requests
    from reconciler.store.schema import customers as customers_t
    from reconciler.store.store import Store

    async def migrate() -> None:
        store = await Store.open(url)
        try:
            await store.migrate()
        finally:
            await store.close()

    started = time.perf_counter()
    asyncio.run(migrate())
    now = datetime.now(UTC)
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
            "+psycopg_async", "+psycopg"
        )
    )
    try:
        with engine.begin() as conn:
            for lo in range(0, customers, 5_000):
                idx = range(lo, min(lo + 5_000, customers))
                conn.execute(
                    sa.insert(customers_t),
                    [
                        {"customer": f"{prefix}{i}", "desired_change_id": None, "updated_at": now}
                        for i in idx
                    ],
                )
                conn.execute(
                    sa.insert(change_requests),
                    [
                        {
                            "id": f"seed-{i}",
                            "customer": f"{prefix}{i}",
                            "plan_key": plan,
                            "requested_at": now,
                            "received_at": now,
                            "source": "admin",
                            "status": "converged",
                            "updated_at": now,
                            "details": {},
                            "observed_mark": (marks or {}).get(f"{prefix}{i}"),
                        }
                        for i in idx
                    ],
                )
            conn.execute(
                sa.update(customers_t).values(
                    desired_change_id=sa.literal("seed-")
                    + sa.func.substr(customers_t.c.customer, len(prefix) + 1)
                )
            )
    finally:
        engine.dispose()
    return time.perf_counter() - started


def run(
    customers: int, rounds: int, db: str, bulk_chunk: int = 25_000, *, managed: bool = False
) -> dict[str, Any]:
    with workdir() as d, pg_database("benchsweep") if db == "postgres" else _sqlite(d) as url:
        em = EmulatorProc(d)
        svc: ServiceProc | None = None
        try:
            t0 = time.perf_counter()
            for start in range(0, customers, bulk_chunk):
                em.api.bulk(min(bulk_chunk, customers - start), start=start)
            load_s = time.perf_counter() - t0
            em.api.clear_requests()
            marks = observed_marks(em.url) if managed else None
            seed_s = seed_converged(url, customers, marks=marks) if managed else None
            svc = ServiceProc(d, em.url, url, log_level="WARNING", concurrency=8)
            # the sweep the service runs at start: wait for it, it is round 0 (not counted)
            wait_until(
                lambda: (
                    metric(
                        svc.http.get("/metrics").text,
                        "reconciler_sweep_duration_seconds_count",
                        kind="sweep",
                    )
                    >= 1
                ),
                timeout=1800,
                interval=0.5,
                what="the start-up sweep",
            )
            rss_after_start = peak_rss_mb(svc.pid)
            bare: list[float] = []
            sweep: list[float] = []
            counts: dict[str, int] = {}
            for _ in range(rounds):
                bare.append(asyncio.run(bare_loop(em.url, customers)))
                t = time.perf_counter()
                r = svc.admin("POST", "/v1/sweeps", json={"full": False}, timeout=3600)
                sweep.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                counts = r.json()["customers"]
                assert sum(counts.values()) == customers, counts
                assert counts.get("reconciled", 0) == 0, counts  # a no-op sweep
                if managed:
                    assert counts.get("in_sync", 0) == customers, counts
            muts = em.api.requests()
            assert not [m for m in muts if m["method"] != "GET"], "a no-op sweep mutated"
            requests_per_sweep = -(-customers // PAGE)
            b, s = statistics.median(bare), statistics.median(sweep)
            return {
                "benchmark": "sweep",
                "customers": customers,
                "db": db,
                "rounds": rounds,
                "managed": managed,
                "bulk_load_s": round(load_s, 2),
                "store_seed_s": None if seed_s is None else round(seed_s, 2),
                "requests_per_sweep": requests_per_sweep,
                "bare_s": [round(x, 3) for x in bare],
                "sweep_s": [round(x, 3) for x in sweep],
                "bare_median_s": round(b, 3),
                "sweep_median_s": round(s, 3),
                "bare_req_per_s": round(requests_per_sweep / b, 1),
                "sweep_req_per_s": round(requests_per_sweep / s, 1),
                "sweep_customers_per_s": round(customers / s),
                "ratio_bare_over_sweep": round(b / s, 3),
                "sweep_counts": counts,
                "service_peak_rss_mb_after_start_sweep": round(rss_after_start, 1),
                "service_peak_rss_mb": round(peak_rss_mb(svc.pid), 1),
                "service_rss_mb_now": round(rss_mb(svc.pid), 1),
                "emulator_peak_rss_mb": round(peak_rss_mb(em.pid), 1),
                "machine": machine(),
            }
        finally:
            if svc is not None:
                svc.stop()
            em.stop()


class _sqlite:
    def __init__(self, d: Any) -> None:
        self.url = f"sqlite:///{d}/sweep.db"

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--managed",
        action="store_true",
        help="seed a converged desired state for every customer (the sweep checks each one)",
    )
    args = ap.parse_args()
    print(json.dumps(run(args.customers, args.rounds, args.db, managed=args.managed), indent=2))


if __name__ == "__main__":
    main()
