"""Database faults under ``reconciler run`` (its own process): the SQLite file write-locked by
another process for longer than the busy timeout, and PostgreSQL connections terminated by the
server again and again while sweeps and webhooks run. The service never answers 500, nothing
is lost or applied twice, and it carries on when the database is back."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from benchmarks.drills import ops, wait_status
from benchmarks.harness import PY, EmulatorProc, ServiceProc, pg_terminate, wait_until

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def _deliver(svc: ServiceProc, customer: str, plan: str, deadline_s: float = 90) -> list[int]:
    """Send one webhook like a sender does (same id, retried on 5xx / no answer); the answers."""
    from benchmarks.harness import signed_headers, signed_webhook

    body, headers = signed_webhook(customer, plan)
    msg_id = headers["webhook-id"]
    answers: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        headers = signed_headers(body, msg_id=msg_id)  # a redelivery is signed again
        try:
            r = svc.http.post("/v1/webhooks/portal", content=body, headers=headers, timeout=60)
            answers.append(r.status_code)
            if r.status_code < 500:
                return answers
        except httpx.HTTPError:
            answers.append(0)
        time.sleep(0.2)
    raise TimeoutError(f"webhook for {customer} not delivered: {answers}")


def _onboard(em: EmulatorProc, keys: list[str]) -> None:
    for k in keys:
        em.api.customer(k, "free")
    em.api.advance(86400)
    for k in keys:
        em.api.use(k, 5, em.api.now() - timedelta(seconds=30))


@pytest.mark.slow
def test_sqlite_write_locked_by_another_process(emulator: EmulatorProc, tmp_path: Path) -> None:
    api = emulator.api
    keys = [f"lk{i}" for i in range(3)]
    _onboard(emulator, keys)
    api.clear_requests()
    db = tmp_path / "locked.db"
    svc = ServiceProc(tmp_path, emulator.url, f"sqlite:///{db}", clock=True)
    try:
        wait_until(svc.ready, 20, what="ready")
        locker = subprocess.Popen(
            [PY, "-c", LOCKER, str(db), "8"], stdout=subprocess.PIPE, text=True
        )
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        answers: dict[str, list[int]] = {}
        threads = [
            threading.Thread(target=lambda k=k: answers.__setitem__(k, _deliver(svc, k, "starter")))
            for k in keys
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert locker.wait(timeout=30) == 0
        waited = time.monotonic() - started
        assert all(a and a[-1] == 202 for a in answers.values()), answers
        assert 500 not in [s for a in answers.values() for s in a], answers
        print(f"sqlite lock: answers {answers}, delivered after {waited:.1f} s")
        assert waited > 3  # the lock really held the writes back
        for k in keys:
            wait_status(svc, k, "applied", timeout=90)
        got = ops(api)
        assert sorted(got) == sorted(["PATCH sub", "POST change"] * len(keys)), got
        assert svc.http.get("/healthz").status_code == 200
        wait_until(svc.ready, 20, what="ready after the lock")
    finally:
        svc.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_connections_terminated_mid_sweep(
    emulator: EmulatorProc, tmp_path: Path, pg_url: str
) -> None:
    api = emulator.api
    api.bulk(3000, prefix="bulk-")
    keys = [f"pg{i}" for i in range(12)]
    _onboard(emulator, keys)
    api.clear_requests()
    svc = ServiceProc(tmp_path, emulator.url, pg_url, clock=True, concurrency=4)
    stop = threading.Event()
    terminated: list[int] = []

    def terminator() -> None:
        while not stop.is_set():
            terminated.append(pg_terminate(pg_url))
            time.sleep(0.15)

    try:
        wait_until(svc.ready, 30, what="ready")
        killer = threading.Thread(target=terminator, daemon=True)
        killer.start()
        sweeps: list[int] = []
        answers: dict[str, list[int]] = {}
        deadline = time.monotonic() + 4
        i = 0
        while time.monotonic() < deadline:
            if i < len(keys):
                answers[keys[i]] = _deliver(svc, keys[i], "starter")
                i += 1
            try:
                r = svc.admin("POST", "/v1/sweeps", json={"full": False}, timeout=60)
                sweeps.append(r.status_code)
            except httpx.HTTPError:
                sweeps.append(0)
        stop.set()
        killer.join(timeout=30)
        print(f"pg: {sum(terminated)} backends terminated, sweeps {sweeps}, answers {answers}")
        assert sum(terminated) > 5, terminated  # connections really were cut, many times
        assert 500 not in sweeps, sweeps
        for k in keys[i:]:
            answers[k] = _deliver(svc, k, "starter")
        assert all(a[-1] == 202 for a in answers.values()), answers
        assert 500 not in [s for a in answers.values() for s in a], answers
        # the worker carries on: every upgrade applied exactly once
        for k in keys:
            wait_status(svc, k, "applied", timeout=120)
        got = ops(api)
        assert sorted(got) == sorted(["PATCH sub", "POST change"] * len(keys)), got
        wait_until(svc.ready, 30, what="ready after the terminations")
        r = wait_until(
            lambda: (
                (x := svc.admin("POST", "/v1/sweeps", json={}, timeout=60)).status_code == 200 and x
            ),
            60,
            0.5,
            what="a sweep succeeds again",
        )
        counts = r.json()["customers"]
        assert sum(counts.values()) == 3000 + len(keys), counts
        assert counts.get("reconciled", 0) == 0, counts
    finally:
        stop.set()
        svc.stop()
