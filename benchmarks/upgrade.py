"""Upgrade path vs the bare script (issue 16): benchmarks 6 (one upgrade, idle), 7 (a burst of
distinct upgrades) and 8 (CPU per upgrade), all on an emulator with a per-request delay.

    .venv/bin/python -m benchmarks.upgrade [--delay-ms 20,50] [--rounds 30] [--burst 200]
        [--db sqlite,postgres] [--concurrency 8]

The emulator (own process, demo catalog) delays every ``/api/…`` request by ``--delay-ms``
(fault API ``delaySeconds``), so round trips dominate, not the emulator's CPU. Both contenders
run under the same policy with ``plan_record: next_boundary`` (an upgrade is PATCH + POST change
for both; the default ``billing_safe`` would send the change a period later).

The bare script is what a portal would write instead: list the customer's subscriptions and read
the target plan (concurrently), read the current subscription's items, PATCH them to the target's
rate cards, POST the change at the next billing cycle: 2 sequential round trips before the PATCH.

* idle: rounds alternate reconciler / bare on fresh customers; the reconciler's time is webhook
  202 → PATCH served (the emulator's ``wallTime``), the bare script's start → PATCH served.
  The sequential OpenMeter round trips before the PATCH, and up to the POST change, are counted
  from the request log: the customer's requests are grouped into levels by their served times
  (a gap of more than half the delay starts a new level).
* burst: N webhooks at once vs the bare script doing the same N upgrades with the service's
  concurrency limit; time until all PATCHes and all changes are served; process CPU of the
  service (``/proc/<pid>/stat``) and of the bare script (``time.process_time``) per upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import (
    POLICY,
    EmulatorProc,
    ServiceProc,
    machine,
    pg_database,
    signed_webhook,
    wait_until,
    workdir,
)
from benchmarks.loadgen import percentile

TARGET = "starter"


def policy_next_boundary(d: Path) -> Path:
    text = POLICY.read_text().replace("plan_record: billing_safe", "plan_record: next_boundary")
    assert "plan_record: next_boundary" in text
    path = d / "policy.next_boundary.yaml"
    path.write_text(text)
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wall(row: dict[str, Any]) -> float:
    return (
        datetime.fromisoformat(row["wallTime"].replace("Z", "+00:00"))
        .replace(tzinfo=UTC)
        .timestamp()
    )


async def bare_upgrade(http: httpx.AsyncClient, key: str, plan_key: str = TARGET) -> None:
    """The least work that does the same upgrade (2 sequential round trips before the PATCH)."""
    subs_r, plan_r = await asyncio.gather(
        http.get(f"/api/v1/customers/{key}/subscriptions", params={"status": "active"}),
        http.get(f"/api/v1/plans/{plan_key}"),
    )
    subs_r.raise_for_status()
    plan_r.raise_for_status()
    sub_id = subs_r.json()["items"][0]["id"]
    plan = plan_r.json()
    sub_r = await http.get(f"/api/v1/subscriptions/{sub_id}")
    sub_r.raise_for_status()
    phase = sub_r.json()["phases"][-1]
    ops: list[dict[str, Any]] = [
        {"op": "remove_item", "phaseKey": phase["key"], "itemKey": item["key"]}
        for item in phase["items"]
    ]
    ops += [
        {"op": "add_item", "phaseKey": phase["key"], "rateCard": card}
        for card in plan["phases"][0]["rateCards"]
    ]
    p = await http.patch(
        f"/api/v1/subscriptions/{sub_id}", json={"timing": "immediate", "customizations": ops}
    )
    p.raise_for_status()
    c = await http.post(
        f"/api/v1/subscriptions/{sub_id}/change",
        json={
            "timing": "next_billing_cycle",
            "plan": {"key": plan["key"], "version": plan["version"]},
        },
    )
    c.raise_for_status()


def levels(times: list[float], gap: float) -> int:
    out, last = 0, None
    for t in sorted(times):
        if last is None or t - last > gap:
            out += 1
        last = t
    return out


def sub_ids(em: EmulatorProc, keys: list[str]) -> dict[str, str]:
    return {em.api.subscriptions(k)[0]["id"]: k for k in keys}


def mutations(em: EmulatorProc) -> list[dict[str, Any]]:
    return [
        r
        for r in em.api.requests(prefix="/api/v1/subscriptions")
        if r["method"] in ("PATCH", "POST") and r["applied"]
    ]


# ---------------------------------------------------------------------------------------------
# idle


def idle(em: EmulatorProc, svc: ServiceProc, rounds: int, delay: float, tag: str) -> dict[str, Any]:
    rec: list[float] = []
    bare: list[float] = []
    rec_levels: list[int] = []
    bare_levels: list[int] = []
    rec_reads: list[int] = []
    bare_reads: list[int] = []
    rec_chain: list[int] = []
    bare_chain: list[int] = []
    calls: dict[str, list[str]] = {}

    async def bare_once(key: str) -> float:
        async with httpx.AsyncClient(base_url=em.url, timeout=60) as http:
            await http.get("/_emulator/health")  # connection up, as the service's pool is
            t0 = time.time()
            await bare_upgrade(http, key)
            return t0

    for i in range(rounds):
        for who in ("reconciler", "bare"):
            key = f"idle-{tag}-{who}-{i}"
            em.api.customer(key, "free")
            listed = em.api.subscriptions(key)[0]
            sub, cid = listed["id"], listed["customerId"]
            em.api.clear_requests()
            if who == "reconciler":
                body, headers = signed_webhook(key, TARGET)
                r = svc.http.post("/v1/webhooks/portal", content=body, headers=headers)
                assert r.status_code == 202, r.text
                t0 = time.time()
            else:
                t0 = asyncio.run(bare_once(key))

            def patched(sub: str = sub) -> list[dict[str, Any]]:
                return [
                    r
                    for r in em.api.requests(method="PATCH")
                    if r["applied"] and r["path"].endswith(sub)
                ]

            rows = wait_until(patched, 60, 0.02, what=f"PATCH of {key}")
            assert len(rows) == 1, rows
            t_patch = wall(rows[0])
            log = em.api.requests()
            mine = (sub, cid, f"/customers/{key}", "/api/v1/plans")
            before = [
                r
                for r in log
                if r["seq"] < rows[0]["seq"]
                and r["path"].startswith("/api/")
                and any(m in r["path"] for m in mine)
            ]
            depth = levels([wall(r) for r in before], delay / 2)

            def changed(sub: str = sub) -> list[dict[str, Any]]:
                return [
                    r
                    for r in em.api.requests(method="POST")
                    if r["applied"] and r["path"].endswith(f"{sub}/change")
                ]

            (change,) = wait_until(changed, 60, 0.02, what=f"POST change of {key}")
            log = em.api.requests()
            upto = [
                r
                for r in log
                if r["seq"] <= change["seq"]
                and r["path"].startswith("/api/")
                and any(m in r["path"] for m in mine)
            ]
            chain = levels([wall(r) for r in upto], delay / 2)
            if who == "reconciler":
                rec.append(t_patch - t0)
                rec_levels.append(depth)
                rec_reads.append(len(before))
                rec_chain.append(chain)
            else:
                bare.append(t_patch - t0)
                bare_levels.append(depth)
                bare_reads.append(len(before))
                bare_chain.append(chain)
            calls.setdefault(who, [f"{r['method']} {r['path']}" for r in before])
    out = {
        "rounds": rounds,
        "reconciler_p50_s": round(statistics.median(rec), 4),
        "reconciler_p95_s": round(percentile(rec, 0.95), 4),
        "bare_p50_s": round(statistics.median(bare), 4),
        "bare_p95_s": round(percentile(bare, 0.95), 4),
        "ratio_bare_over_reconciler_p50": round(
            statistics.median(bare) / statistics.median(rec), 3
        ),
        "ratio_bare_over_reconciler_p95": round(percentile(bare, 0.95) / percentile(rec, 0.95), 3),
        "round_trips_before_patch": {
            "reconciler": statistics.median(rec_levels),
            "bare": statistics.median(bare_levels),
        },
        # sequential round trips from the first request to the POST change served, included
        "round_trips_to_change": {
            "reconciler": statistics.median(rec_chain),
            "bare": statistics.median(bare_chain),
        },
        "requests_before_patch": {
            "reconciler": statistics.median(rec_reads),
            "bare": statistics.median(bare_reads),
        },
        "first_round_calls_before_patch": calls,
    }
    return out


# ---------------------------------------------------------------------------------------------
# burst


async def fire(url: str, keys: list[str]) -> None:
    prepared = [signed_webhook(k, TARGET) for k in keys]
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(body: bytes, headers: dict[str, str]) -> None:
            r = await http.post("/v1/webhooks/portal", content=body, headers=headers)
            assert r.status_code == 202, r.text

        await asyncio.gather(*(one(b, h) for b, h in prepared))


async def bare_burst(url: str, keys: list[str], concurrency: int) -> None:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(key: str) -> None:
            async with sem:
                await bare_upgrade(http, key)

        await asyncio.gather(*(one(k) for k in keys))


def burst_round(
    em: EmulatorProc, svc: ServiceProc, n: int, concurrency: int, who: str, tag: str
) -> dict[str, Any]:
    prefix = f"b-{tag}-{who}-"
    em.api.bulk(n, plan="free", prefix=prefix)
    keys = [f"{prefix}{i}" for i in range(n)]
    subs = sub_ids(em, keys)
    em.api.clear_requests()
    if who == "reconciler":
        cpu0 = cpu_seconds(svc.pid)
        t0 = time.time()
        asyncio.run(fire(svc.url, keys))

        def done() -> list[dict[str, Any]]:
            rows = [r for r in mutations(em) if r["path"].split("/")[4] in subs]
            return rows if len(rows) >= 2 * n else []

        rows = wait_until(done, 600, 0.25, what="all PATCHes and changes")
        t_end = max(wall(r) for r in rows)
        cpu = cpu_seconds(svc.pid) - cpu0
    else:
        cpu0 = time.process_time()
        t0 = time.time()
        asyncio.run(bare_burst(em.url, keys, concurrency))
        t_end = time.time()
        cpu = time.process_time() - cpu0
        rows = [r for r in mutations(em) if r["path"].split("/")[4] in subs]
    kinds = sorted({("PATCH" if r["method"] == "PATCH" else "POST change") for r in rows})
    per_sub: dict[str, int] = {}
    for r in rows:
        s = r["path"].split("/")[4]
        per_sub[s] = per_sub.get(s, 0) + 1
    assert len(per_sub) == n and set(per_sub.values()) == {2}, per_sub
    return {
        "who": who,
        "all_served_after_s": round(t_end - t0, 3),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_upgrade": round(cpu / n * 1000, 2),
        "mutations": len(rows),
        "kinds": kinds,
    }


# ---------------------------------------------------------------------------------------------


def run(
    delays_ms: list[int],
    rounds: int,
    burst: int,
    dbs: list[str],
    concurrency: int = 8,
    burst_rounds: int = 1,
) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "upgrade", "concurrency": concurrency, "runs": []}
    with workdir("upgrade-") as d:
        policy = policy_next_boundary(d)
        for db in dbs:
            em = EmulatorProc(d)
            ctx = pg_database("upgrade") if db == "postgres" else None
            url = ctx.__enter__() if ctx else f"sqlite:///{d}/upgrade-{db}.db"
            svc: ServiceProc | None = None
            try:
                svc = ServiceProc(
                    d,
                    em.url,
                    url,
                    concurrency=concurrency,
                    log_level="WARNING",
                    policy_path=policy,
                )
                wait_until(svc.ready, 30, what="ready")
                for delay_ms in delays_ms:
                    em.api.clear_faults()
                    em.api.fault(path="/api/*", delaySeconds=delay_ms / 1000)
                    tag = f"{db}{delay_ms}"
                    row: dict[str, Any] = {"db": db, "delay_ms": delay_ms}
                    if rounds:
                        row["idle"] = idle(em, svc, rounds, delay_ms / 1000, tag)
                    if burst:
                        rec: list[dict[str, Any]] = []
                        bare: list[dict[str, Any]] = []
                        for j in range(burst_rounds):
                            rec.append(
                                burst_round(em, svc, burst, concurrency, "reconciler", f"{tag}r{j}")
                            )
                            bare.append(
                                burst_round(em, svc, burst, concurrency, "bare", f"{tag}r{j}")
                            )
                        r_t = statistics.median(x["all_served_after_s"] for x in rec)
                        b_t = statistics.median(x["all_served_after_s"] for x in bare)
                        r_c = statistics.median(x["cpu_ms_per_upgrade"] for x in rec)
                        b_c = statistics.median(x["cpu_ms_per_upgrade"] for x in bare)
                        row["burst"] = {
                            "upgrades": burst,
                            "reconciler": rec,
                            "bare": bare,
                            "ratio_bare_over_reconciler": round(b_t / r_t, 3),
                            "cpu_ratio_reconciler_over_bare": round(r_c / b_c, 2),
                        }
                    out["runs"].append(row)
                em.api.clear_faults()
            finally:
                if svc is not None:
                    svc.stop()
                em.stop()
                if ctx is not None:
                    ctx.__exit__(None, None, None)
    out["machine"] = machine()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", default="20,50")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--burst-rounds", type=int, default=1)
    ap.add_argument("--db", default="sqlite")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    out = run(
        [int(x) for x in a.delay_ms.split(",")],
        a.rounds,
        a.burst,
        a.db.split(","),
        a.concurrency,
        a.burst_rounds,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
