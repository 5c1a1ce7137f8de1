"""Webhook storm drill: many signed plan-change webhooks, duplicates, stale and forged ones,
shuffled, sent while a worker restarts (SIGKILL) once.

    .venv/bin/python -m benchmarks.storm --webhooks 10000 --customers 1000
    .venv/bin/python -m benchmarks.storm --db postgres --workers 2

Every customer must end on the plan of its latest *valid* request (by ``requested_at``), checked
in OpenMeter after the billing boundary (plan on record and allowance), and in the store (the
desired change of each customer); duplicates create no row, stale or forged ones are refused
(401) and leave no trace. ``tests/faults/test_storm.py`` runs it at CI size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    EmulatorProc,
    ServiceProc,
    machine,
    op_of,
    pg_database,
    pg_rows,
    signed_headers,
    wait_until,
    webhook_body,
    workdir,
)

PLANS = ("free", "starter", "pro")
ALLOWANCE = {"free": 50_000, "starter": 550_000, "pro": 5_000_000}
WRONG_SECRET = b"not-the-portal-key-000000000000"


@dataclass
class Msg:
    kind: str  # valid | duplicate | stale | forged
    customer: str
    plan: str
    requested_at: datetime
    msg_id: str
    body: bytes
    status: int | None = None
    attempts: int = 0


@dataclass
class StormPlan:
    messages: list[Msg]
    expected: dict[str, str]  # customer -> plan of its latest valid request
    valid_ids: set[str]
    kinds: Counter[str] = field(default_factory=Counter)


def make_storm(
    webhooks: int,
    customers: int,
    *,
    seed: int = 7,
    duplicates: float = 0.30,
    stale: float = 0.05,
    forged: float = 0.05,
    prefix: str = "storm-",
) -> StormPlan:
    rnd = random.Random(seed)
    n_dup = int(webhooks * duplicates)
    n_stale = int(webhooks * stale)
    n_forged = int(webhooks * forged)
    n_valid = webhooks - n_dup - n_stale - n_forged
    base = datetime.now(UTC) - timedelta(hours=2)
    names = [f"{prefix}{i}" for i in range(customers)]
    used: set[tuple[str, datetime]] = set()
    valid: list[Msg] = []
    for i in range(n_valid):
        c = names[i % customers] if i < customers else rnd.choice(names)
        while True:
            at = base + timedelta(seconds=rnd.randrange(0, 3600), microseconds=rnd.randrange(10**6))
            if (c, at) not in used:
                used.add((c, at))
                break
        plan = rnd.choice(PLANS)
        valid.append(Msg("valid", c, plan, at, f"msg_v{i}", webhook_body(c, plan, at)))
    latest: dict[str, Msg] = {}
    for m in valid:
        if m.customer not in latest or m.requested_at > latest[m.customer].requested_at:
            latest[m.customer] = m
    expected = {c: (latest[c].plan if c in latest else "free") for c in names}
    msgs = list(valid)
    for _ in range(n_dup):
        src = rnd.choice(valid)
        dup = Msg("duplicate", src.customer, src.plan, src.requested_at, src.msg_id, src.body)
        msgs.append(dup)
    # Refused ones are the newest of all and name another plan: if one got through, it would win.
    for kind, n in (("stale", n_stale), ("forged", n_forged)):
        for i in range(n):
            c = rnd.choice(names)
            plan = rnd.choice([p for p in PLANS if p != expected[c]])
            at = base + timedelta(hours=1, seconds=rnd.randrange(1, 1800))
            msgs.append(Msg(kind, c, plan, at, f"msg_{kind[0]}{i}", webhook_body(c, plan, at)))
    rnd.shuffle(msgs)
    return StormPlan(msgs, expected, {m.msg_id for m in valid}, Counter(m.kind for m in msgs))


def headers_for(m: Msg) -> dict[str, str]:
    if m.kind == "stale":
        return signed_headers(m.body, msg_id=m.msg_id, timestamp=int(time.time()) - 3600)
    if m.kind == "forged":
        return signed_headers(m.body, msg_id=m.msg_id, secret=WRONG_SECRET)
    return signed_headers(m.body, msg_id=m.msg_id)  # a redelivery is signed again, as senders do


async def send_all(
    msgs: list[Msg], urls: list[str], concurrency: int = 32, deadline_s: float = 600
) -> None:
    """Deliver every message like a Standard Webhooks sender: retry on connection errors and 5xx
    (another worker if there are several) until a 2xx or 4xx, bounded by ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    for m in msgs:
        queue.put_nowait(m)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def worker(n: int) -> None:
            while True:
                try:
                    m = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                while True:
                    url = urls[(n + m.attempts) % len(urls)]
                    m.attempts += 1
                    try:
                        r = await http.post(
                            f"{url}/v1/webhooks/portal", content=m.body, headers=headers_for(m)
                        )
                        if r.status_code < 500:
                            m.status = r.status_code
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not deliver {m.msg_id}")
                    await asyncio.sleep(0.05 * min(m.attempts, 10))

        await asyncio.gather(*(worker(n) for n in range(concurrency)))


def _changes(db_url: str, sqlite_path: Path | None) -> list[tuple[Any, ...]]:
    q = (
        "SELECT cr.customer, cr.plan_key, cr.source_id, cr.status, "
        "(cu.desired_change_id = cr.id) AS desired, cr.last_error, cr.id "
        "FROM change_requests cr JOIN customers cu ON cu.customer = cr.customer"
    )
    if sqlite_path is not None:
        with sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True) as conn:
            return list(conn.execute(q).fetchall())
    return pg_rows(db_url, q)


def _open_changes(
    svc: ServiceProc, statuses: tuple[str, ...] = ("pending", "applied", "scheduled")
) -> int:
    n = 0
    for status in statuses:
        r = svc.admin("GET", "/v1/changes", params={"status": status, "limit": 1})
        r.raise_for_status()
        n += len(r.json()["items"])
    return n


def run(
    webhooks: int,
    customers: int,
    *,
    db: str = "sqlite",
    workers: int = 1,
    concurrency: int = 32,
    seed: int = 7,
    log_dir: Path | None = None,
    log_level: str = "WARNING",
) -> dict[str, Any]:
    plan = make_storm(webhooks, customers, seed=seed)
    with workdir("storm-") as d:
        d = log_dir or d
        em = EmulatorProc(d)
        sqlite_path = d / "storm.db" if db == "sqlite" else None
        procs: list[ServiceProc] = []
        try:
            with _db(db, sqlite_path) as url:
                em.api.bulk(customers, plan="free", prefix="storm-")
                em.api.advance(86400)
                em.api.clear_requests()

                def start(i: int, port: int = 0) -> ServiceProc:
                    return ServiceProc(
                        d,
                        em.url,
                        url,
                        name=f"worker{i}",
                        port=port,
                        clock=True,
                        log_level=log_level,
                        concurrency=16,
                    )

                procs = [start(i) for i in range(workers)]
                urls = [p.url for p in procs]
                half = len(plan.messages) // 2
                t0 = time.perf_counter()
                asyncio.run(send_all(plan.messages[:half], urls, concurrency))
                # the restart: SIGKILL worker 0 while the second half is being sent
                victim = procs[0]
                restarted: dict[str, float] = {}

                async def second_half() -> None:
                    sender = asyncio.create_task(send_all(plan.messages[half:], urls, concurrency))
                    await asyncio.sleep(0.3)
                    victim.kill()
                    restarted["killed_at_s"] = time.perf_counter() - t0
                    procs[0] = await asyncio.to_thread(start, 0, victim.port)
                    restarted["back_at_s"] = time.perf_counter() - t0
                    await sender

                asyncio.run(second_half())
                victim.stop()
                sent_s = time.perf_counter() - t0
                svc = procs[0]
                # everything stored is acted on; then the boundary passes and all converge
                wait_until(lambda: _open_changes(svc, ("pending",)) == 0, 900, 0.5, "pending")
                settle_s = time.perf_counter() - t0
                em.api.advance(32 * 86400)
                for _ in range(3):
                    r = svc.admin("POST", "/v1/sweeps", json={"full": False}, timeout=900)
                    if r.status_code == 409:  # another replica leads the sweeps
                        r = procs[-1].admin("POST", "/v1/sweeps", json={}, timeout=900)
                    assert r.status_code == 200, r.text
                    if _open_changes(svc) == 0:
                        break
                try:
                    wait_until(lambda: _open_changes(svc) == 0, 120, 0.5, "converged")
                except TimeoutError as exc:
                    stuck = [
                        svc.admin("GET", "/v1/changes", params={"status": st, "limit": 3}).json()
                        for st in ("pending", "applied", "scheduled")
                    ]
                    raise AssertionError(f"{exc}: {json.dumps(stuck)[:3000]}") from exc
                converged_s = time.perf_counter() - t0
                result = verify(plan, em, url, sqlite_path)
                result.update(
                    {
                        "webhooks": webhooks,
                        "customers": customers,
                        "db": db,
                        "workers": workers,
                        "kinds": dict(plan.kinds),
                        "restart": restarted,
                        "sent_s": round(sent_s, 1),
                        "settled_s": round(settle_s, 1),
                        "converged_after_boundary_s": round(converged_s, 1),
                        "deliveries": sum(m.attempts for m in plan.messages),
                        "machine": machine(),
                    }
                )
                return result
        finally:
            for p in procs:
                p.stop()
            em.stop()


class _db:
    def __init__(self, db: str, sqlite_path: Path | None) -> None:
        self.db = db
        self.sqlite_path = sqlite_path
        self._pg: Any = None

    def __enter__(self) -> str:
        if self.db == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        self._pg = pg_database("storm")
        return str(self._pg.__enter__())

    def __exit__(self, *exc: Any) -> None:
        if self._pg is not None:
            self._pg.__exit__(*exc)


def verify(
    plan: StormPlan, em: EmulatorProc, db_url: str, sqlite_path: Path | None
) -> dict[str, Any]:
    """Raise AssertionError on any lost, doubled or wrongly accepted request."""
    problems: list[str] = []
    statuses = Counter((m.kind, m.status) for m in plan.messages)
    for m in plan.messages:
        if m.kind in ("stale", "forged") and m.status != 401:
            problems.append(f"{m.kind} {m.msg_id} answered {m.status}")
        if m.kind in ("valid", "duplicate") and m.status not in (200, 202):
            problems.append(f"{m.kind} {m.msg_id} answered {m.status}")
    # store: one row per valid webhook id, none for refused ones; desired = latest valid
    rows = _changes(db_url, sqlite_path)
    ids = [r[2] for r in rows]
    dup_rows = [i for i, n in Counter(ids).items() if n > 1]
    if dup_rows:
        problems.append(f"duplicate rows for {dup_rows[:5]}")
    if set(ids) != plan.valid_ids:
        extra = sorted(set(ids) - plan.valid_ids)[:5]
        missing = sorted(plan.valid_ids - set(ids))[:5]
        problems.append(f"rows differ from valid webhooks: extra {extra} missing {missing}")
    desired = {r[0]: r[1] for r in rows if r[4]}
    failed = [r for r in rows if r[3] == "failed"]
    if failed:
        problems.append(f"{len(failed)} failed changes, e.g. {failed[:3]}")
    for c, p in plan.expected.items():
        if c in desired and desired[c] != p:
            problems.append(f"store: {c} desires {desired[c]}, latest valid request is {p}")
    # OpenMeter: plan on record and allowance of every customer after the boundary
    wrong: list[str] = []
    page = 1
    seen = 0
    while True:
        r = em.api.http.get(
            "/api/v1/customers",
            params={"page": page, "pageSize": 1000, "expand": "subscriptions"},
        )
        r.raise_for_status()
        doc = r.json()
        for cust in doc["items"]:
            key = cust["key"]
            if key not in plan.expected:
                continue
            seen += 1
            active = [s for s in cust.get("subscriptions") or [] if s["status"] == "active"]
            got = [s["plan"]["key"] for s in active]
            if got != [plan.expected[key]]:
                wrong.append(f"{key}: on {got}, expected {plan.expected[key]}")
        if page * 1000 >= doc["totalCount"]:
            break
        page += 1
    if seen != len(plan.expected):
        problems.append(f"saw {seen} customers of {len(plan.expected)}")
    sample = list(plan.expected)[:: max(1, len(plan.expected) // 200)]
    for key in sample:
        if em.api.allowance(key) != ALLOWANCE[plan.expected[key]]:
            wrong.append(f"{key}: allowance {em.api.allowance(key)}")
    problems += wrong
    muts = [
        r
        for r in em.api.requests(prefix="/api/v1/subscriptions")
        if r["method"] != "GET" and r["applied"]
    ]
    by_op = Counter(op_of(r) for r in muts)
    result = {
        "ok": not problems,
        "problems": problems[:20],
        "problem_count": len(problems),
        "responses": {f"{k}:{s}": n for (k, s), n in sorted(statuses.items(), key=str)},
        "rows": len(rows),
        "valid_webhooks": len(plan.valid_ids),
        "customers_checked_in_openmeter": seen,
        "allowances_checked": len(sample),
        "customers_changed": sum(1 for p in plan.expected.values() if p != "free"),
        "mutations_applied": len(muts),
        "mutations_by_kind": dict(by_op),
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--webhooks", type=int, default=10_000)
    ap.add_argument("--customers", type=int, default=1_000)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--log-dir", type=Path, default=None, help="keep logs and the database here")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    if args.db == "sqlite" and args.workers != 1:
        ap.error("SQLite serves one worker; use --db postgres for several")
    out = run(
        args.webhooks,
        args.customers,
        db=args.db,
        workers=args.workers,
        concurrency=args.concurrency,
        seed=args.seed,
        log_dir=args.log_dir,
        log_level=args.log_level,
    )
    print(json.dumps(out, indent=2))
    raise SystemExit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
