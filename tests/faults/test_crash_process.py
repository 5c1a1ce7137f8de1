"""Crash at every step, process level: ``reconciler run`` is SIGKILLed right after each OpenMeter
mutation of a plan change is served, started again on the same SQLite file, and must converge
with every mutation applied exactly once (the emulator's request log), usage kept, and — after
the billing boundary — the plan on record the target's, with no further mutation.

The kill comes from :class:`benchmarks.drills.KillOnMutation`, which watches the request log.
To make the kill land between mutation N and N+1 every time, customer reads are slowed by a
fault rule (0.3 s each) while the doomed process runs: the engine re-observes after each
mutation, so the next mutation is at least one slowed read away.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from benchmarks.drills import KillOnMutation, ops, wait_status
from benchmarks.harness import EmulatorProc, ServiceProc

ALLOWANCE = {"free": 50_000, "starter": 550_000, "pro": 5_000_000}
CUSTOMER = "acme"
USED = 7
SLOW_READS = {"method": "GET", "path": "/api/v1/customers/*", "delaySeconds": 0.3}


@dataclass(frozen=True)
class Scenario:
    name: str
    start_plan: str
    before: tuple[str, ...]  # changes made (and settled) before the one under test
    target: str
    expected: tuple[str, ...]  # the mutations the change needs, once each
    status: str  # status of the change once it has done all it can before the boundary
    items_now: str  # whose items the customer has before the boundary


SCENARIOS = [
    Scenario("upgrade", "free", (), "starter", ("PATCH sub", "POST change"), "applied", "starter"),
    Scenario("downgrade", "starter", (), "free", ("POST change",), "scheduled", "starter"),
    Scenario(
        "replan_up",
        "free",
        ("starter",),
        "pro",
        ("DELETE sub", "POST unschedule-cancelation", "PATCH sub", "POST change"),
        "applied",
        "pro",
    ),
]
CASES = [(s, k) for s in SCENARIOS for k in range(len(s.expected))]


def _onboard(em: EmulatorProc, plan: str) -> None:
    api = em.api
    api.customer(CUSTOMER, plan)
    api.advance(86400)
    api.use(CUSTOMER, USED, api.now() - timedelta(seconds=30))


def _start(tmp_path: Path, em: EmulatorProc, name: str) -> ServiceProc:
    return ServiceProc(tmp_path, em.url, f"sqlite:///{tmp_path}/r.db", name=name, clock=True)


def _after_boundary(em: EmulatorProc, svc: ServiceProc, sc: Scenario) -> None:
    """Past the boundary the plan record is the target's, and converging it needed no call."""
    before = ops(em.api)
    em.api.advance(32 * 86400)
    r = svc.admin("POST", "/v1/sweeps", json={"full": False})
    assert r.status_code == 200, r.text
    wait_status(svc, CUSTOMER, "converged")
    assert em.api.plans_of(CUSTOMER).get("active") == [sc.target]
    assert "scheduled" not in em.api.plans_of(CUSTOMER)
    assert em.api.allowance(CUSTOMER) == ALLOWANCE[sc.target]
    assert ops(em.api) == before


@pytest.mark.slow
@pytest.mark.parametrize(("sc", "k"), CASES, ids=[f"{s.name}-kill-after-{k + 1}" for s, k in CASES])
def test_sigkill_after_each_mutation_then_restart(
    emulator: EmulatorProc, tmp_path: Path, sc: Scenario, k: int
) -> None:
    api = emulator.api
    _onboard(emulator, sc.start_plan)
    svc = _start(tmp_path, emulator, "doomed")
    try:
        for plan in sc.before:
            assert svc.webhook(CUSTOMER, plan).status_code == 202
            wait_status(svc, CUSTOMER, ("applied", "scheduled", "converged"))
        api.clear_requests()
        api.fault(**SLOW_READS)
        killer = KillOnMutation(emulator.url, svc.pid, nth=k + 1)
        killer.start()
        assert svc.webhook(CUSTOMER, sc.target).status_code == 202
        killer.join(timeout=120)
        assert killer.error is None, killer.error
        assert killer.killed_at_count == k + 1, killer.killed_at_count
        svc.popen.wait(timeout=10)
        assert svc.popen.returncode == -9
    finally:
        svc.stop()
    api.clear_faults()
    assert ops(api) == list(sc.expected[: k + 1])  # nothing happened after the kill

    svc2 = _start(tmp_path, emulator, "restarted")  # "the process starts again"
    try:
        wait_status(svc2, CUSTOMER, sc.status)
        assert ops(api) == list(sc.expected)  # every mutation exactly once
        v = api.value(CUSTOMER)
        assert v["usage"] == USED  # no edit ever lost usage
        assert api.allowance(CUSTOMER) == ALLOWANCE[sc.items_now]
        _after_boundary(emulator, svc2, sc)
    finally:
        svc2.stop()


@pytest.mark.slow
def test_sigkill_during_boundary_convergence(emulator: EmulatorProc, tmp_path: Path) -> None:
    """The boundary of an applied upgrade passes; the reconciler is killed as it starts looking at
    the customer; the next process converges the change without any mutation."""
    api = emulator.api
    _onboard(emulator, "free")
    api.clear_requests()
    svc = _start(tmp_path, emulator, "doomed")
    try:
        assert svc.webhook(CUSTOMER, "starter").status_code == 202
        wait_status(svc, CUSTOMER, "applied")
        expected = ops(api)
        assert expected == ["PATCH sub", "POST change"]
        api.clear_requests()
        api.fault(**SLOW_READS)
        killer = KillOnMutation(
            emulator.url,
            svc.pid,
            nth=0,
            predicate=lambda rows: any(
                r["method"] == "GET" and r["path"].startswith(f"/api/v1/customers/{CUSTOMER}")
                for r in rows
            ),
        )
        killer.start()
        api.advance(32 * 86400)
        with contextlib.suppress(httpx.HTTPError):  # the process dies while answering
            svc.admin("POST", "/v1/sweeps", json={"full": False}, timeout=60)
        killer.join(timeout=60)
    finally:
        svc.stop()
    assert killer.error is None and killer.killed_at_count == 0
    api.clear_faults()
    svc2 = _start(tmp_path, emulator, "restarted")
    try:
        wait_status(svc2, CUSTOMER, "converged")
        assert ops(api) == []  # converging at the boundary needs no mutation
        assert api.plans_of(CUSTOMER).get("active") == ["starter"]
        assert "scheduled" not in api.plans_of(CUSTOMER)
        assert api.value(CUSTOMER)["usage"] == 0  # a new usage period began at the boundary
        assert api.allowance(CUSTOMER) == ALLOWANCE["starter"]
    finally:
        svc2.stop()
