"""Benchmark 2: webhook intake of ``reconciler run`` vs a bare Starlette endpoint.

    .venv/bin/python -m benchmarks.intake [--levels 1,4,16,64] [--requests 1500]
                                          [--db sqlite,postgres]

Signed ``plan_change.requested`` webhooks from a load generator in its own process
(``benchmarks.loadgen``) at rising concurrency; the same load against a bare Starlette endpoint
answering 202 under the same uvicorn settings (``benchmarks.bare_app``), alternated level by
level. The webhooks ask for the plan the customers already have (they exist in the emulator), so
the worker really reconciles each accepted request (observe, no mutation) while intake runs, as
in production. Reports accepted/s and client-side p50/p99 latency; goal: service ≥ 0.3 × bare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    PY,
    EmulatorProc,
    Proc,
    ServiceProc,
    free_port,
    machine,
    pg_database,
    wait_until,
    workdir,
)


def loadgen(url: str, concurrency: int, requests: int, customers: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            PY,
            "-m",
            "benchmarks.loadgen",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            "--requests",
            str(requests),
            "--customers",
            str(customers),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _pending(svc: ServiceProc) -> int:
    r = svc.admin("GET", "/v1/changes", params={"status": "pending", "limit": 1})
    r.raise_for_status()
    return len(r.json()["items"])


def run(
    levels: list[int], requests: int, dbs: list[str], customers: int = 1000, log_level: str = "INFO"
) -> dict[str, Any]:
    results: dict[str, Any] = {"benchmark": "intake", "levels": levels, "requests": requests}
    with workdir("intake-") as d:
        em = EmulatorProc(d)
        bare_port = free_port()
        bare = Proc("bare", [PY, "-m", "benchmarks.bare_app", "--port", str(bare_port)], None, d)
        bare_url = f"http://127.0.0.1:{bare_port}"
        try:
            em.api.bulk(customers, plan="free")
            import httpx

            wait_until(
                lambda: httpx.get(f"{bare_url}/healthz").status_code == 200, 30, what="bare app"
            )
            for db in dbs:
                ctx = pg_database("intake") if db == "postgres" else None
                url = ctx.__enter__() if ctx else f"sqlite:///{d}/intake-{db}.db"
                svc = ServiceProc(d, em.url, url, name=f"svc-{db}", log_level=log_level)
                rows = []
                try:
                    for c in levels:
                        b = loadgen(bare_url, c, requests, customers)
                        s = loadgen(svc.url, c, requests, customers)
                        ratio = s["accepted_per_s"] / b["accepted_per_s"]
                        rows.append(
                            {"concurrency": c, "bare": b, "service": s, "ratio": round(ratio, 3)}
                        )
                        print(json.dumps(rows[-1]), flush=True)
                        # let the worker drain what it accepted before the next level
                        wait_until(lambda s=svc: _pending(s) == 0, 600, 0.5, what="worker drained")
                    results[db] = rows
                finally:
                    svc.stop()
                    if ctx is not None:
                        ctx.__exit__(None, None, None)
        finally:
            bare.stop()
            em.stop()
    results["machine"] = machine()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    out = run(levels, a.requests, a.db.split(","), log_level=a.log_level)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
