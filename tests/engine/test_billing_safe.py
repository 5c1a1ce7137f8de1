"""Billing-safe plan-record convergence (the default ``plan_record: billing_safe``), end to end
on the emulator: an upgrade that starts a flat fee mid-period edits now and moves the plan record
one period later, so OpenMeter keeps prorating the fee (``shouldProrate``); usage is kept at
every boundary and each mutation is served once, across crashes too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.cli.demo import Story
from reconciler.domain.actions import Action
from reconciler.emulator.server import EmulatorServer
from reconciler.engine import Engine
from reconciler.engine.views import preview_json, quote_json, status_json
from reconciler.runtime import Runtime, open_runtime

from .conftest import DEMO, START, make_settings
from .helpers import mutations, onboard, plan_key

B1 = START + timedelta(days=31)  # Feb 15
B2 = B1 + timedelta(days=28)  # Mar 15
REASON = (
    "deferred: scheduling at 2026-02-15T10:00:00Z would stop OpenMeter prorating platform_fee; "
    "the change is scheduled at 2026-02-15T10:00:00Z to converge at 2026-03-15T10:00:00Z"
)


async def _stored(rt: Runtime) -> Any:
    change = await rt.store.desired_for("acme")
    assert change is not None
    return change


async def test_upgrade_edits_now_and_converges_the_record_a_period_later(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=3)
    out = await story.change("starter")
    assert out.status == "applied"
    assert await story.value() == (3, 549_997)
    assert await mutations(control) == [("PATCH", "")]  # no change scheduled yet
    cur, succ = await story.subs()
    assert plan_key(cur) == "free" and cur.active_to is None and succ is None

    change = await _stored(rt)
    assert change.converges_at == B2
    assert change.next_attempt_at == B1 + timedelta(seconds=2)  # looked at again at B1
    conv = change.details["convergence"]
    assert conv["deferred"] is True and conv["reason"] == REASON
    assert conv["converges_at"] == "2026-03-15T10:00:00Z"
    assert conv["schedule_at"] == "2026-02-15T10:00:00Z"
    [hit] = conv["suppressed"]
    assert (hit["item"], hit["billed_if_scheduled"]) == ("platform_fee", "29.00")
    assert hit["service_period"] == {"from": "2026-01-24T10:00:00Z", "to": "2026-02-15T10:00:00Z"}
    assert hit["prorated"] == "20.58"  # 22 of 31 days of 29.00
    events, _ = await rt.store.list_events()
    [applied] = [e for e in events if e.type == "plan_change.applied"]
    assert applied.payload["converges_at"] == B2.isoformat()
    assert applied.payload["convergence"]["reason"] == REASON

    status = status_json(await rt.queries.status("acme"))
    assert status["convergence"] == "waiting"
    assert status["desired"]["convergence"]["reason"] == REASON
    assert status["desired"]["pending_actions"] == []

    # A pass inside the window changes nothing.
    await story.set_clock(B1 - timedelta(days=1))
    assert (await story.reconcile()).applied == []

    # First boundary: a fresh usage period on the same subscription; the record change is
    # scheduled now, for the next boundary.
    await story.set_clock(B1 + timedelta(minutes=1))
    out = await story.reconcile()
    assert out.status == "applied"
    assert [a.action for a in out.applied] == ["schedule_change"]
    assert await story.value() == (0, 550_000)
    cur, succ = await story.subs()
    assert plan_key(cur) == "free" and cur.active_to == B2
    assert plan_key(succ) == "starter" and succ.active_from == B2
    await story.use(11)
    assert await story.value() == (11, 549_989)

    # Second boundary: converged with no further mutation.
    await story.set_clock(B2 + timedelta(minutes=1))
    out = await story.reconcile()
    assert out.status == "converged" and out.applied == []
    cur, succ = await story.subs()
    assert plan_key(cur) == "starter" and succ is None
    assert await story.value() == (0, 550_000)
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    events, _ = await rt.store.list_events()
    assert sorted(e.type for e in events) == ["plan_change.applied", "plan_change.converged"]


async def test_allowance_only_upgrade_still_converges_at_the_next_boundary(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    catalog = yaml.safe_load(yaml.safe_dump(DEMO))
    for plan in catalog["plans"]:
        for phase in plan["phases"]:
            phase["rateCards"] = [c for c in phase["rateCards"] if c.get("price") is None]
    (await control.post("/_emulator/reset", json={"catalog": catalog})).raise_for_status()
    await onboard(story, "free", START, used=3)
    out = await story.change("starter")
    assert out.status == "applied"
    assert await story.value() == (3, 549_997)
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    change = await _stored(rt)
    assert change.converges_at == B1
    assert change.details["convergence"]["deferred"] is False
    assert "no flat fee" in change.details["convergence"]["reason"]
    await story.set_clock(B1 + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    cur, _ = await story.subs()
    assert plan_key(cur) == "starter"


async def test_downgrade_in_the_deferred_window_is_scheduled_and_its_cost_shown(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=3)
    await story.change("starter")
    doc = quote_json(await rt.quoter.quote("acme", plan_key="free"))
    assert doc["change"]["timing"] == "next_billing_cycle"
    assert doc["change"]["actions"] == ["schedule_change"]
    fee = [ln for ln in doc["with_change"]["lines"] if ln["key"] == "platform_fee"]
    assert [(f["amount"], f["proration"]) for f in fee] == [("29.00", None)]
    assert any("not prorated: the subscription ends" in n for n in fee[0]["notes"])
    assert any("does not prorate a flat fee" in n for n in doc["notes"])
    now_fee = [ln for ln in doc["current"]["lines"] if ln["key"] == "platform_fee"]
    assert [f["amount"] for f in now_fee] == ["20.58"]

    out = await story.change("free")
    assert out.status == "scheduled"
    assert await story.value() == (3, 549_997)  # starter's allowance until the boundary
    _, succ = await story.subs()
    assert plan_key(succ) == "free" and succ.active_from == B1
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    await story.set_clock(B1 + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    assert await story.value() == (0, 50_000)


async def test_asking_again_for_the_effective_plan_converges_when_safe(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=3)
    await story.change("starter")
    await story.change("free")  # scheduled for B1 …
    out = await story.change("starter")  # … and back: what the customer has already
    assert out.status == "applied"
    assert await mutations(control) == [
        ("PATCH", ""),
        ("POST", "change"),
        ("DELETE", ""),
        ("POST", "unschedule-cancelation"),
    ]
    change = await _stored(rt)
    assert change.converges_at == B2 and change.details["convergence"]["deferred"] is True
    await story.set_clock(B1 + timedelta(minutes=1))
    assert [a.action for a in (await story.reconcile()).applied] == ["schedule_change"]
    await story.set_clock(B2 + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    cur, _ = await story.subs()
    assert plan_key(cur) == "starter"
    assert await story.value() == (0, 550_000)


async def test_dry_run_preview_says_when_and_why(story: Story, rt: Runtime) -> None:
    await onboard(story, "free", START, used=3)
    doc = preview_json(await rt.queries.preview("acme", "starter"))
    assert [a["method"] for a in doc["actions"]] == ["PATCH"]
    assert doc["converges_at"] == "2026-03-15T10:00:00Z"
    assert doc["convergence"]["reason"] == REASON
    fee = [ln for ln in doc["charges"]["with_change"]["lines"] if ln["key"] == "platform_fee"]
    assert [f["amount"] for f in fee] == ["20.58"]  # prorated, not the full 29.00


class Crash(BaseException):
    """Stands for SIGKILL."""


def _crash_after_first(kind: str) -> Callable[[Action], Awaitable[None]]:
    async def hook(action: Action) -> None:
        if action.kind == kind:
            raise Crash(kind)

    return hook


async def _crash_at(rt: Runtime, kind: str) -> None:
    """A pass of an engine killed right after its first ``kind`` mutation."""
    crashing = Engine(rt.collaborators, after_action=_crash_after_first(kind))
    with pytest.raises(Crash):
        await crashing.reconcile("acme")


@pytest.mark.parametrize("where", ["after_edit", "in_window", "after_boundary_schedule"])
async def test_crash_on_the_deferred_path_applies_each_mutation_once(
    emulator: EmulatorServer, control: httpx.AsyncClient, tmp_path: Path, where: str
) -> None:
    settings = make_settings(emulator, tmp_path / "r.db")
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await onboard(story, "free", START, used=7)
        await story.request("starter")
        if where == "after_edit":
            await _crash_at(rt, "edit_items")
        else:
            await rt.engine.reconcile("acme")
        if where == "after_boundary_schedule":
            await story.set_clock(B1 + timedelta(minutes=1))
            await _crash_at(rt, "schedule_change")

    async with open_runtime(settings) as rt2:  # the process starts again
        story2 = Story(rt2, control)
        if where == "in_window":
            await story2.set_clock(B1 - timedelta(hours=1))
        out = await story2.reconcile()
        assert out.applied == []
        expected = [("PATCH", "")]
        if where == "after_boundary_schedule":
            expected.append(("POST", "change"))
        assert await mutations(control) == expected
        assert await story2.value() == (
            (7, 549_993) if where != "after_boundary_schedule" else (0, 550_000)
        )
        change = await rt2.store.desired_for("acme")
        assert change is not None and change.status.value == "applied"
        assert change.details["proof"]["usage_preserved"] is True

        await story2.set_clock(B1 + timedelta(minutes=1))
        await story2.reconcile()
        await story2.set_clock(B2 + timedelta(minutes=1))
        assert (await story2.reconcile()).status == "converged"
        cur, succ = await story2.subs()
        assert plan_key(cur) == "starter" and succ is None
        assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
        assert await story2.value() == (0, 550_000)
