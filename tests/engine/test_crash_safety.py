"""Crash safety: a crash or a lost response after any mutation never applies anything twice.

For each action of each scenario the reconciler is stopped right after OpenMeter applied the
action (before the change's state was recorded), a new process-equivalent (fresh runtime on the
same database) starts, and the customer must converge with every mutation served exactly once
according to the emulator's request log. The same with the response lost after the mutation
was applied (the emulator applies it, then drops the connection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.domain.actions import Action
from reconciler.emulator.server import EmulatorServer
from reconciler.engine import Engine
from reconciler.runtime import Runtime, open_runtime

from .conftest import POLICY_NEXT_BOUNDARY, START, make_settings
from .helpers import mutations, onboard, plan_key


@pytest.fixture
def policy_path() -> Path:
    """This module is about the edit + scheduled-change path: ``plan_record: next_boundary``
    (the default ``billing_safe`` path is in test_billing_safe.py)."""
    return POLICY_NEXT_BOUNDARY


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


@dataclass(frozen=True)
class Scenario:
    name: str
    start_plan: str
    before: tuple[str, ...]  # changes made (and converged) before the one under test
    target: str
    expected: tuple[tuple[str, str], ...]  # the mutations the change needs, once each
    final_status: str
    record_after: str  # plan on record of the subscription that runs after the boundary


SCENARIOS = [
    Scenario(
        "upgrade", "free", (), "starter", (("PATCH", ""), ("POST", "change")), "applied", "starter"
    ),
    Scenario("downgrade", "starter", (), "free", (("POST", "change"),), "scheduled", "free"),
    Scenario(
        "replan_up",
        "free",
        ("starter",),
        "pro",
        (("DELETE", ""), ("POST", "unschedule-cancelation"), ("PATCH", ""), ("POST", "change")),
        "applied",
        "pro",
    ),
    Scenario(
        "replan_down",
        "free",
        ("starter",),
        "free",
        (("DELETE", ""), ("POST", "unschedule-cancelation"), ("POST", "change")),
        "scheduled",
        "free",
    ),
    Scenario(
        "cancel_pending",
        "starter",
        ("free",),
        "starter",
        (("DELETE", ""), ("POST", "unschedule-cancelation")),
        "converged",
        "starter",
    ),
]
CASES = [(s, k) for s in SCENARIOS for k in range(len(s.expected))]


def _crash_after(k: int) -> Callable[[Action], Awaitable[None]]:
    seen = 0

    async def hook(action: Action) -> None:
        nonlocal seen
        seen += 1
        if seen == k + 1:
            raise Crash(action.kind)

    return hook


async def _prepare(story: Story, sc: Scenario) -> None:
    await onboard(story, sc.start_plan, START, used=7)
    for plan in sc.before:
        await story.change(plan)
    (await story.control.delete("/_emulator/requests")).raise_for_status()


async def _verify(
    story: Story, control: httpx.AsyncClient, sc: Scenario, status: str | None
) -> None:
    assert tuple(await mutations(control)) == sc.expected
    assert status == sc.final_status
    usage, _ = await story.value()
    assert usage == 7  # no edit ever lost usage
    # ...and after the boundary the plan record is the target's.
    await story.set_clock(START.replace(month=2) + timedelta(minutes=1))
    out = await story.reconcile()
    assert out.status == "converged"
    cur, succ = await story.subs()
    assert plan_key(cur) == sc.record_after and succ is None
    assert tuple(await mutations(control)) == sc.expected  # the boundary needed no mutation


@pytest.mark.parametrize(
    ("sc", "k"), CASES, ids=[f"{s.name}-crash-after-{k + 1}" for s, k in CASES]
)
async def test_crash_after_each_mutation_then_restart(
    emulator: EmulatorServer, control: httpx.AsyncClient, tmp_path: Path, sc: Scenario, k: int
) -> None:
    db = tmp_path / "r.db"
    settings = make_settings(emulator, db, policy_path=POLICY_NEXT_BOUNDARY)
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await _prepare(story, sc)
        crashing = Engine(rt.collaborators, after_action=_crash_after(k))
        await story.request(sc.target)
        with pytest.raises(Crash):
            await crashing.reconcile("acme")
    assert len(await mutations(control)) == k + 1

    async with open_runtime(settings) as rt2:  # "the process starts again"
        story2 = Story(rt2, control)
        out = await story2.reconcile()
        await _verify(story2, control, sc, out.status)


def _fault_for(method: str, tail: str) -> dict[str, object]:
    path = (
        "/api/v1/subscriptions"
        if method == "POST" and tail == ""
        else (f"/api/v1/subscriptions/*/{tail}" if tail else "/api/v1/subscriptions/*")
    )
    return {"method": method, "path": path, "dropAfterApply": True, "count": 1}


@pytest.mark.parametrize(
    ("sc", "k"), CASES, ids=[f"{s.name}-lost-response-{k + 1}" for s, k in CASES]
)
async def test_lost_response_after_apply_is_not_repeated(
    rt: Runtime, story: Story, control: httpx.AsyncClient, sc: Scenario, k: int
) -> None:
    await _prepare(story, sc)
    method, tail = sc.expected[k]
    (await control.post("/_emulator/faults", json=_fault_for(method, tail))).raise_for_status()
    out = await story.change(sc.target)
    faults = (await control.get("/_emulator/faults")).json()["faults"]
    assert faults[0]["count"] == 0  # the fault fired
    await _verify(story, control, sc, out.status)
