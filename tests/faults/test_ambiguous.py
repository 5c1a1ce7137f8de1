"""Ambiguous failures and outages against ``reconciler run`` in its own process.

Each drill upgrades (or downgrades) one customer while the emulator misbehaves, then checks the
emulator's request log: every mutation the change needs applied exactly once, none repeated,
usage kept. Outages: ``/readyz`` goes unready while OpenMeter is down and recovers after.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.drills import ops, wait_status
from benchmarks.harness import EmulatorProc, ServiceProc, wait_until

CUSTOMER = "acme"
USED = 11
UPGRADE = ["PATCH sub", "POST change"]


def _onboard(em: EmulatorProc, key: str = CUSTOMER, plan: str = "free") -> None:
    api = em.api
    api.customer(key, plan)
    api.advance(86400)
    api.use(key, USED, api.now() - timedelta(seconds=30))


def _service(tmp_path: Path, em: EmulatorProc, **extra: Any) -> ServiceProc:
    return ServiceProc(tmp_path, em.url, f"sqlite:///{tmp_path}/r.db", clock=True, **extra)


def _fired(em: EmulatorProc) -> list[int | None]:
    faults = em.api.http.get("/_emulator/faults").json()["faults"]
    return [f["count"] for f in faults]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rule", "target", "expected", "status"),
    [
        pytest.param(
            {"method": "PATCH", "path": "/api/v1/subscriptions/*", "dropAfterApply": True},
            "starter",
            UPGRADE,
            "applied",
            id="patch-applied-then-connection-dropped",
        ),
        pytest.param(
            {
                "method": "POST",
                "path": "/api/v1/subscriptions/*/change",
                "status": 502,
                "applyBeforeStatus": True,
            },
            "starter",
            UPGRADE,
            "applied",
            id="change-applied-then-502",
        ),
        pytest.param(
            {
                "method": "POST",
                "path": "/api/v1/subscriptions/*/change",
                "dropAfterApply": True,
            },
            "free",
            ["POST change"],
            "scheduled",
            id="downgrade-change-applied-then-dropped",
        ),
        pytest.param(
            {"method": "PATCH", "path": "/api/v1/subscriptions/*", "status": 503},
            "starter",
            UPGRADE,
            "applied",
            id="patch-refused-503-not-applied",
        ),
    ],
)
def test_ambiguous_mutation_is_applied_once(
    emulator: EmulatorProc,
    tmp_path: Path,
    rule: dict[str, Any],
    target: str,
    expected: list[str],
    status: str,
) -> None:
    api = emulator.api
    _onboard(emulator, plan="starter" if target == "free" else "free")
    api.clear_requests()
    api.fault(**rule, count=1)
    svc = _service(tmp_path, emulator)
    try:
        assert svc.webhook(CUSTOMER, target).status_code == 202
        wait_status(svc, CUSTOMER, status)
        assert _fired(emulator) == [0]
        assert ops(api) == expected  # applied once: the ambiguous call was not repeated
        assert api.value(CUSTOMER)["usage"] == USED
    finally:
        svc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [1.04, 2.5], ids=["late-by-40ms", "late-by-1.5s"])
def test_mutation_slower_than_the_client_timeout(
    emulator: EmulatorProc, tmp_path: Path, delay: float
) -> None:
    """The emulator holds the PATCH past the client's read timeout (1 s), then applies it. The
    engine must not send the edit again while the first one may still be running: one PATCH in
    the log, applied. (Before the engine waited for the retry backoff, a PATCH late by 40 ms was
    applied twice: the immediate re-observation missed it and the edit was sent again.)"""
    api = emulator.api
    _onboard(emulator)
    api.clear_requests()
    api.fault(method="PATCH", path="/api/v1/subscriptions/*", delaySeconds=delay, count=1)
    svc = _service(tmp_path, emulator, openmeter_read_timeout=1)
    try:
        assert svc.webhook(CUSTOMER, "starter").status_code == 202
        wait_status(svc, CUSTOMER, "applied", timeout=90)
        patches = api.requests(method="PATCH")
        assert [(p["status"], p["applied"]) for p in patches] == [(200, True)]
        assert ops(api) == UPGRADE
        assert api.value(CUSTOMER)["usage"] == USED
        assert api.allowance(CUSTOMER) == 550_000
    finally:
        svc.stop()


@pytest.mark.slow
def test_read_5xx_bursts_are_retried(emulator: EmulatorProc, tmp_path: Path) -> None:
    api = emulator.api
    _onboard(emulator)
    api.clear_requests()
    api.fault(method="GET", path="/api/v1/customers/*", status=503, count=5)
    api.fault(method="GET", path="/api/v1/subscriptions/*", status=500, count=3)
    svc = _service(tmp_path, emulator, openmeter_read_retries=4)
    try:
        assert svc.webhook(CUSTOMER, "starter").status_code == 202
        wait_status(svc, CUSTOMER, "applied", timeout=90)
        assert _fired(emulator) == [0, 0]
        assert ops(api) == UPGRADE
        failed_reads = [r for r in api.requests(method="GET") if r.get("fault")]
        assert len(failed_reads) == 8
    finally:
        svc.stop()


@pytest.mark.slow
def test_openmeter_503_everywhere_then_back(emulator: EmulatorProc, tmp_path: Path) -> None:
    """OpenMeter answers 503 to everything for a while: /readyz goes unready, a plan change that
    arrives meanwhile is stored (202) and applied once when OpenMeter is back."""
    api = emulator.api
    _onboard(emulator)
    api.clear_requests()
    svc = _service(tmp_path, emulator, openmeter_read_retries=1)
    try:
        wait_until(svc.ready, 20, what="ready at start")
        api.fault(path="/api/*", status=503)
        wait_until(lambda: svc.http.get("/readyz").status_code == 503, 20, what="unready")
        assert "503" in svc.http.get("/readyz").text
        assert svc.webhook(CUSTOMER, "starter").status_code == 202  # stored while down
        wait_until(lambda: len(api.requests()) >= 3, 20, what="attempts while down")
        assert ops(api) == []  # nothing applied while every call failed
        api.clear_faults()
        wait_until(svc.ready, 20, what="ready again")
        wait_status(svc, CUSTOMER, "applied", timeout=120)
        assert ops(api) == UPGRADE
        assert api.value(CUSTOMER)["usage"] == USED
    finally:
        svc.stop()


@pytest.mark.slow
def test_openmeter_process_stopped_then_started(tmp_path: Path) -> None:
    """The OpenMeter process itself goes away (connection refused) and a new one comes up on the
    same address: unready, then ready, then a change is applied normally."""
    first = EmulatorProc(tmp_path)
    second: EmulatorProc | None = None
    svc = _service(tmp_path, first, openmeter_read_retries=1)
    try:
        wait_until(svc.ready, 20, what="ready at start")
        first.kill()  # SIGKILL: no goodbye
        wait_until(lambda: svc.http.get("/readyz").status_code == 503, 20, what="unready")
        assert "unreachable" in svc.http.get("/readyz").text
        assert svc.http.get("/healthz").status_code == 200  # alive, just not ready
        second = EmulatorProc(tmp_path, port=first.port)
        wait_until(svc.ready, 20, what="ready again")
        _onboard(second)
        second.api.clear_requests()
        assert svc.webhook(CUSTOMER, "starter").status_code == 202
        wait_status(svc, CUSTOMER, "applied", timeout=60)
        assert ops(second.api) == UPGRADE
    finally:
        svc.stop()
        first.stop()
        if second is not None:
            second.stop()
