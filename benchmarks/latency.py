"""Benchmark 3: webhook accepted → PATCH served, for concurrent upgrades of distinct customers.

    .venv/bin/python -m benchmarks.latency [--customers 200] [--db sqlite] [--concurrency 8]

N customers on *free* in the emulator (own process); N signed upgrade webhooks (to *starter*)
posted at once by a sender in its own process (this one) to ``reconciler run`` (own process).
For each customer: the wall time its webhook's 202 arrived, and the wall time the emulator logged
the PATCH of that customer's subscription (``/_emulator/requests`` ``wallTime``, written once the
edit is applied). Reports p50/p99/max of the difference (goal p99 < 1 s) and checks each customer
got exactly one PATCH. ``--concurrency`` is the service's ``RECONCILER_CONCURRENCY`` (default 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from benchmarks.harness import (
    EmulatorProc,
    ServiceProc,
    machine,
    pg_database,
    signed_webhook,
    wait_until,
    workdir,
)
from benchmarks.loadgen import percentile


async def fire(url: str, keys: list[str]) -> dict[str, float]:
    prepared = [(k, *signed_webhook(k, "starter")) for k in keys]
    accepted: dict[str, float] = {}
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(http.get("/healthz") for _ in range(min(len(keys), 50))))

        async def one(key: str, body: bytes, headers: dict[str, str]) -> None:
            r = await http.post("/v1/webhooks/portal", content=body, headers=headers)
            assert r.status_code == 202, r.text
            accepted[key] = time.time()

        await asyncio.gather(*(one(*p) for p in prepared))
    return accepted


def run(customers: int, db: str, concurrency: int, **service_extra: Any) -> dict[str, Any]:
    with workdir("latency-") as d:
        em = EmulatorProc(d)
        ctx = pg_database("latency") if db == "postgres" else None
        url = ctx.__enter__() if ctx else f"sqlite:///{d}/latency.db"
        svc: ServiceProc | None = None
        try:
            # real time on both sides (the service reads the system clock, as in production)
            em.api.bulk(customers, plan="free", prefix="lat-")
            keys = [f"lat-{i}" for i in range(customers)]
            sub_of: dict[str, str] = {}
            page = 1
            while len(sub_of) < customers:
                r = em.api.http.get(
                    "/api/v1/customers", params={"page": page, "pageSize": 1000}
                ).json()
                for c in r["items"]:
                    sub_of[c["currentSubscriptionId"]] = c["key"]
                page += 1
            svc = ServiceProc(
                d, em.url, url, concurrency=concurrency, log_level="WARNING", **service_extra
            )
            wait_until(svc.ready, 30, what="ready")
            em.api.clear_requests()
            t0 = time.perf_counter()
            accepted = asyncio.run(fire(svc.url, keys))
            intake_s = time.perf_counter() - t0

            def patches() -> list[dict[str, Any]]:
                return [r for r in em.api.requests(method="PATCH") if r["applied"]]

            wait_until(lambda: len(patches()) >= customers, 300, 0.25, what="all PATCHes")
            all_done_s = time.perf_counter() - t0
            served: dict[str, float] = {}
            for r in patches():
                key = sub_of[r["path"].rsplit("/", 1)[-1]]
                assert key not in served, f"{key} was edited twice"
                served[key] = (
                    datetime.fromisoformat(r["wallTime"].replace("Z", "+00:00"))
                    .replace(tzinfo=UTC)
                    .timestamp()
                )
            lat = [served[k] - accepted[k] for k in keys]
            return {
                "benchmark": "latency",
                "customers": customers,
                "db": db,
                "service_concurrency": concurrency,
                "webhooks_accepted_in_s": round(intake_s, 3),
                "all_patched_after_s": round(all_done_s, 3),
                "p50_s": round(percentile(lat, 0.5), 3),
                "p99_s": round(percentile(lat, 0.99), 3),
                "max_s": round(max(lat), 3),
                "min_s": round(min(lat), 3),
                "machine": machine(),
            }
        finally:
            if svc is not None:
                svc.stop()
            em.stop()
            if ctx is not None:
                ctx.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(run(a.customers, a.db, a.concurrency), indent=2))


if __name__ == "__main__":
    main()
