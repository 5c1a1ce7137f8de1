"""Load generator for the webhook endpoint, run as its own process by ``benchmarks.intake``.

    python -m benchmarks.loadgen --url http://127.0.0.1:PORT --concurrency 16 --requests 2000

Bodies and signatures are prepared before the clock starts (signing is the sender's cost, not the
server's). Prints one JSON line: accepted/s, latency percentiles, status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx

from benchmarks.harness import signed_headers, webhook_body


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


async def run(
    url: str, concurrency: int, n: int, customers: int, plan: str, prefix: str
) -> dict[str, object]:
    base = datetime.now(UTC) - timedelta(minutes=1)
    prepared = []
    tag = uuid.uuid4().hex[:8]
    for i in range(n):
        body = webhook_body(f"{prefix}{i % customers}", plan, base + timedelta(microseconds=i))
        prepared.append((body, signed_headers(body, msg_id=f"msg_{tag}_{i}")))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    it = iter(prepared)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        # warm the connections
        await asyncio.gather(*(http.get("/healthz") for _ in range(concurrency)))

        async def worker() -> None:
            for body, headers in it:
                t = time.perf_counter()
                try:
                    r = await http.post("/v1/webhooks/portal", content=body, headers=headers)
                    statuses[r.status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                    continue
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    accepted = statuses.get(202, 0) + statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": n,
        "seconds": round(elapsed, 3),
        "accepted": accepted,
        "accepted_per_s": round(accepted / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--plan", default="free")
    ap.add_argument("--prefix", default="cust-")
    a = ap.parse_args()
    out = asyncio.run(run(a.url, a.concurrency, a.requests, a.customers, a.plan, a.prefix))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
