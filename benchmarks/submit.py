"""The PostgreSQL submit: the store's ``submit_change`` vs the same function through psycopg.

    .venv/bin/python -m benchmarks.submit [--requests 600] [--rounds 3]

A diagnostic for benchmark 2 (intake) at concurrency 1, where a webhook's durable submit is
most of what the service adds to the bare endpoint. One process, one sequential caller, a fresh
migrated database: rounds alternate ``Store.submit_change`` (SQLAlchemy's async engine and
pool, autocommit, the result mapped to a ``ChangeRecord``) and the least work that stores the
same request, a plain ``psycopg.AsyncConnection`` in autocommit calling
``reconciler_submit_change`` with the same arguments and fetching its rows. Reports wall and
process CPU milliseconds per submit (medians over rounds) and checks that every submit stored
its row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks.harness import machine, pg_database

_CALL = (
    "SELECT * FROM reconciler_submit_change(%s, %s, %s, %s, CAST(%s AS integer), %s, %s, %s, "
    "%s, %s)"
)
_CUSTOMERS = 200


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _store_round(store: Any, tag: str, n: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), _cpu()
    for i in range(n):
        now = datetime.now(UTC)
        await store.submit_change(
            f"c{i % _CUSTOMERS}", "starter", None, now, "webhook", f"{tag}-{i}", now
        )
    return (time.perf_counter() - t0) / n * 1000, (_cpu() - c0) / n * 1000


async def _raw_round(conn: Any, tag: str, n: int) -> tuple[float, float]:
    from psycopg.types.json import Jsonb

    from reconciler.store.ids import new_ulid

    t0, c0 = time.perf_counter(), _cpu()
    for i in range(n):
        now = datetime.now(UTC)
        args = (new_ulid(), f"c{i % _CUSTOMERS}", None, "starter", None, now, "webhook")
        cur = await conn.execute(_CALL, (*args, f"{tag}-{i}", Jsonb({}), now))
        await cur.fetchall()
    return (time.perf_counter() - t0) / n * 1000, (_cpu() - c0) / n * 1000


async def _run(url: str, requests: int, rounds: int) -> dict[str, Any]:
    import psycopg

    from reconciler.store import Store

    store = await Store.open(url)
    try:
        await store.migrate()
        conn = await psycopg.AsyncConnection.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )
        try:
            await _store_round(store, "warm-store", 50)
            await _raw_round(conn, "warm-raw", 50)
            store_rounds, raw_rounds = [], []
            for r in range(rounds):
                store_rounds.append(await _store_round(store, f"store{r}", requests))
                raw_rounds.append(await _raw_round(conn, f"raw{r}", requests))
            cur = await conn.execute("SELECT count(*) FROM change_requests")
            row = await cur.fetchone()
            stored = int(row[0]) if row else 0
        finally:
            await conn.close()
    finally:
        await store.close()

    def summary(rs: list[tuple[float, float]]) -> dict[str, Any]:
        return {
            "rounds": [{"wall_ms": round(w, 3), "cpu_ms": round(c, 3)} for w, c in rs],
            "wall_ms": round(statistics.median(w for w, _ in rs), 3),
            "cpu_ms": round(statistics.median(c for _, c in rs), 3),
        }

    s, b = summary(store_rounds), summary(raw_rounds)
    return {
        "benchmark": "submit",
        "requests": requests,
        "rounds": rounds,
        "stored": stored,
        "expected_stored": 100 + 2 * rounds * requests,
        "store": s,
        "psycopg": b,
        "ratio_wall_psycopg_over_store": round(b["wall_ms"] / s["wall_ms"], 3),
        "ratio_cpu_store_over_psycopg": round(s["cpu_ms"] / b["cpu_ms"], 2),
        "machine": machine(),
    }


def run(requests: int = 600, rounds: int = 3) -> dict[str, Any]:
    with pg_database("submit") as url:
        return asyncio.run(_run(url, requests, rounds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(json.dumps(run(a.requests, a.rounds), indent=2))


if __name__ == "__main__":
    main()
