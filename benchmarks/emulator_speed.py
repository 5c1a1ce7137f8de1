"""Benchmark 5: how fast the emulator answers, so it is never the bottleneck being measured.

    .venv/bin/python -m benchmarks.emulator_speed [--customers 10000] [--requests 3000]

The emulator in its own process with N customers (bulk); ``GET /api/v1/subscriptions/{id}``
(the engine's most frequent read) at concurrency 1, 8 and 32 from this process, and the sweep's
``GET /api/v1/customers?pageSize=500&expand=subscriptions`` page. Reports requests/s and p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx

from benchmarks.harness import EmulatorProc, machine, peak_rss_mb, workdir
from benchmarks.loadgen import percentile


async def hammer(url: str, paths: list[str], concurrency: int) -> dict[str, Any]:
    it = iter(paths)
    lat: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(http.get("/_emulator/health") for _ in range(concurrency)))

        async def worker() -> None:
            for p in it:
                t = time.perf_counter()
                r = await http.get(p)
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "req_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
    }


def run(customers: int, requests: int) -> dict[str, Any]:
    with workdir("emuspeed-") as d:
        em = EmulatorProc(d)
        try:
            t = time.perf_counter()
            for start in range(0, customers, 25_000):
                em.api.bulk(min(25_000, customers - start), start=start)
            bulk_s = time.perf_counter() - t
            subs: list[str] = []
            page = 1
            while True:
                r = em.api.http.get(
                    "/api/v1/customers", params={"page": page, "pageSize": 1000}
                ).json()
                subs += [c["currentSubscriptionId"] for c in r["items"]]
                if page * 1000 >= r["totalCount"]:
                    break
                page += 1
            rnd = random.Random(1)
            paths = [f"/api/v1/subscriptions/{rnd.choice(subs)}" for _ in range(requests)]
            gets = [asyncio.run(hammer(em.url, paths, c)) for c in (1, 8, 32)]
            pages = max(1, min(20, customers // 500))
            page_paths = [
                f"/api/v1/customers?page={p}&pageSize=500&expand=subscriptions"
                for p in range(1, pages + 1)
            ]
            listing = asyncio.run(hammer(em.url, page_paths, 1))
            return {
                "benchmark": "emulator_speed",
                "customers": customers,
                "bulk_load_s": round(bulk_s, 2),
                "get_subscription": gets,
                "list_customers_page_500": listing,
                "emulator_peak_rss_mb": round(peak_rss_mb(em.pid), 1),
                "machine": machine(),
            }
        finally:
            em.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=3000)
    a = ap.parse_args()
    print(json.dumps(run(a.customers, a.requests), indent=2))


if __name__ == "__main__":
    main()
