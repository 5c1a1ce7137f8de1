"""Benchmark 4: OpenMeter requests per plan change, by method and route, vs the recipe's minimum.

    .venv/bin/python -m benchmarks.calls

``reconciler run`` (own process, SQLite) and the emulator (own process); for each scenario one
customer, one webhook, and the emulator's request log between the webhook and the settled status.
Mutating calls must equal the minimum (upgrade: PATCH + change; downgrade: change; re-plan up:
DELETE + unschedule + PATCH + change); reads are reported by route.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.drills import wait_status
from benchmarks.harness import EmulatorProc, ServiceProc, machine, op_of, workdir

MINIMUM = {
    "upgrade": ["PATCH sub", "POST change"],
    "downgrade": ["POST change"],
    "replan_up": ["DELETE sub", "POST unschedule-cancelation", "PATCH sub", "POST change"],
}
SCENARIOS = {  # name: (start plan, changes before, target, settled status)
    "upgrade": ("free", (), "starter", "applied"),
    "downgrade": ("starter", (), "free", "scheduled"),
    "replan_up": ("free", ("starter",), "pro", "applied"),
}
_ID = re.compile(r"/[0-9A-HJKMNP-TV-Z]{26}")


def route(row: dict[str, Any]) -> str:
    path = _ID.sub("/{id}", row["path"])
    path = re.sub(r"/customers/c-[^/]+", "/customers/{key}", path)
    path = re.sub(r"/plans/[a-z_]+$", "/plans/{key}", path)
    return f"{row['method']} {path}"


def measure(d: Path, em: EmulatorProc, name: str) -> dict[str, Any]:
    start, before, target, status = SCENARIOS[name]
    api = em.api
    key = f"c-{name}"
    api.customer(key, start)
    api.advance(86400)
    api.use(key, 9, api.now() - timedelta(seconds=30))
    svc = ServiceProc(d, em.url, f"sqlite:///{d}/calls-{name}.db", clock=True)
    try:
        for plan in before:
            assert svc.webhook(key, plan).status_code == 202
            wait_status(svc, key, ("applied", "scheduled"))
        api.clear_requests()
        assert svc.webhook(key, target).status_code == 202
        wait_status(svc, key, status)
        rows = [r for r in api.requests() if r["path"].startswith("/api/")]
    finally:
        svc.stop()
    mutations = [op_of(r) for r in rows if r["method"] != "GET" and r["applied"]]
    reads = Counter(route(r) for r in rows if r["method"] == "GET")
    return {
        "scenario": name,
        "mutations": mutations,
        "minimum": MINIMUM[name],
        "mutations_equal_minimum": mutations == MINIMUM[name],
        "reads_total": sum(reads.values()),
        "reads": dict(reads.most_common()),
        "requests_total": len(rows),
    }


def run(scenarios: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "calls", "scenarios": []}
    with workdir("calls-") as d:
        em = EmulatorProc(d)
        try:
            for name in scenarios:
                out["scenarios"].append(measure(d, em, name))
        finally:
            em.stop()
    out["machine"] = machine()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    a = ap.parse_args()
    out = run(a.scenarios.split(","))
    print(json.dumps(out, indent=2))
    raise SystemExit(0 if all(s["mutations_equal_minimum"] for s in out["scenarios"]) else 1)


if __name__ == "__main__":
    main()
