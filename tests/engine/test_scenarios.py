"""Every behaviour of the plan-change engine, end to end on the emulator over HTTP."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.domain.model import META_CHANGE, META_PLAN
from reconciler.emulator.server import EmulatorServer
from reconciler.engine import adopt
from reconciler.runtime import Runtime, open_runtime
from reconciler.store.types import AuditKind

from .conftest import POLICY_NEXT_BOUNDARY, START, make_settings
from .helpers import mutations, onboard, plan_key


@pytest.fixture
def policy_path() -> Path:
    """This module is about the edit + scheduled-change path: ``plan_record: next_boundary``
    (the default ``billing_safe`` path is in test_billing_safe.py)."""
    return POLICY_NEXT_BOUNDARY


BOUNDARY = START + timedelta(days=31)  # Jan 15 -> Feb 15


async def test_upgrade_keeps_usage_edits_in_place_and_schedules_plan_record(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=3)
    ent_before = (await rt.client.list_customer_entitlements_v2("acme"))[0]
    out = await story.change("starter")

    assert out.status == "applied"
    assert await story.value() == (3, 549_997)
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    cur, succ = await story.subs()
    assert plan_key(cur) == "free" and cur.status == "canceled" and cur.active_to == BOUNDARY
    assert plan_key(succ) == "starter" and succ.active_from == BOUNDARY
    assert (succ.metadata or {}).get(META_PLAN) == "starter"

    ents = await rt.client.list_customer_entitlements_v2("acme")
    credits = next(e for e in ents if e.feature_key == "api_credits")
    assert credits.id != ent_before.id  # OpenMeter re-creates edited items' entitlements
    assert credits.metadata is not None and credits.metadata[META_PLAN] == "starter"
    assert credits.metadata["tier"] == "starter"

    change = await rt.store.desired_for("acme")
    assert change is not None and change.status.value == "applied"
    assert change.direction is not None and change.direction.value == "upgrade"
    assert change.rule == "defaults.upgrade"
    assert change.converges_at == BOUNDARY
    proof = change.details["proof"]
    assert proof["usage_preserved"] is True
    assert proof["before"]["api_credits"]["usage"] == 3
    assert proof["after"]["api_credits"] == {
        "has_access": True,
        "usage": 3,
        "balance": 549_997,
        "total_available_grant_amount": 550_000,
    }
    assert credits.metadata[META_CHANGE] == change.id

    calls = [
        a for a in await rt.store.list_audit(customer="acme", limit=50) if a.kind is AuditKind.CALL
    ]
    # every call made for the change is in the audit, reads included
    assert [(a.method, a.status) for a in calls if a.method != "GET"] == [
        ("POST", 200),
        ("PATCH", 200),
    ]  # newest first
    assert {a.operation for a in calls if a.method == "GET"} >= {
        "list_customer_subscriptions",
        "get_subscription",
        "get_entitlement_value",
    }
    assert all(a.change_id == change.id for a in calls)

    # The boundary passes: the plan record converges, the new period starts fresh.
    await story.set_clock(BOUNDARY + timedelta(minutes=1))
    out = await story.reconcile()
    assert out.status == "converged" and out.applied == []
    cur, succ = await story.subs()
    assert plan_key(cur) == "starter" and succ is None
    assert await story.value() == (0, 550_000)


async def test_downgrade_waits_for_next_cycle(story: Story, control: httpx.AsyncClient) -> None:
    await onboard(story, "starter", START, used=700_00)
    out = await story.change("free")
    assert out.status == "scheduled"
    assert await mutations(control) == [("POST", "change")]
    assert await story.value() == (70_000, 480_000)  # starter's allowance until the boundary
    cur, succ = await story.subs()
    assert plan_key(cur) == "starter" and plan_key(succ) == "free" and succ.active_from == BOUNDARY
    await story.set_clock(BOUNDARY + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    cur, _ = await story.subs()
    assert plan_key(cur) == "free"
    assert await story.value() == (0, 50_000)


async def test_asking_for_current_plan_clears_pending_change(
    story: Story, control: httpx.AsyncClient
) -> None:
    await onboard(story, "starter", START)
    await story.change("free")
    out = await story.change("starter")
    assert out.status == "converged"
    assert await mutations(control) == [
        ("POST", "change"),
        ("DELETE", ""),
        ("POST", "unschedule-cancelation"),
    ]
    cur, succ = await story.subs()
    assert cur.status == "active" and cur.active_to is None and succ is None


async def test_up_then_down_keeps_items_and_changes_record_at_boundary(
    story: Story, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=10)
    await story.change("starter")
    out = await story.change("free")  # record says free, but the items are starter's
    assert out.status == "scheduled"
    cur, succ = await story.subs()
    assert plan_key(cur) == "free" and plan_key(succ) == "free"
    assert await story.value() == (10, 549_990)
    await story.set_clock(BOUNDARY + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    assert await story.value() == (0, 50_000)


async def test_a_to_b_to_c_in_one_period(story: Story, control: httpx.AsyncClient) -> None:
    await onboard(story, "free", START, used=42)
    await story.change("starter")
    out = await story.change("pro")
    assert out.status == "applied"
    assert await story.value() == (42, 4_999_958)
    assert await mutations(control) == [
        ("PATCH", ""),
        ("POST", "change"),
        ("DELETE", ""),
        ("POST", "unschedule-cancelation"),
        ("PATCH", ""),
        ("POST", "change"),
    ]
    _, succ = await story.subs()
    assert plan_key(succ) == "pro"


async def test_down_then_up_replans(story: Story, control: httpx.AsyncClient) -> None:
    await onboard(story, "starter", START, used=5)
    await story.change("free")
    out = await story.change("pro")
    assert out.status == "applied"
    assert await story.value() == (5, 4_999_995)
    _, succ = await story.subs()
    assert plan_key(succ) == "pro"


async def test_no_subscription_creates_one(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await rt.client.create_customer(
        {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme"]}}
    )
    out = await story.change("starter")
    assert out.status == "converged"
    assert await mutations(control) == [("POST", "")]
    cur, _ = await story.subs()
    assert plan_key(cur) == "starter" and (cur.metadata or {}).get(META_PLAN) == "starter"


async def test_multi_phase_layout_mismatch_is_refused(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    doc = Path(__file__).with_name("trial_plan.yaml").read_text()
    (await control.post("/_emulator/catalog", content=doc)).raise_for_status()
    await onboard(story, "free", START)
    out = await story.change("trial_pro")
    assert out.status == "failed"
    assert out.error is not None and "refusing to guess" in out.error
    assert await mutations(control) == []
    change = await rt.store.desired_for("acme")
    assert change is not None and change.last_error == out.error


async def test_unknown_plan_fails_clearly(story: Story, control: httpx.AsyncClient) -> None:
    await onboard(story, "free", START)
    out = await story.change("platinum")
    assert out.status == "failed"
    assert out.error == "plan 'platinum' has no active version in OpenMeter"
    assert await mutations(control) == []


async def test_lost_database_is_rebuilt_from_openmeter_tags(
    emulator: EmulatorServer, story: Story, control: httpx.AsyncClient, tmp_path: Path
) -> None:
    await onboard(story, "free", START, used=3)
    await story.change("starter")
    # A brand-new database knows nothing; the tags OpenMeter holds give the desired state back.
    fresh_settings = make_settings(
        emulator, tmp_path / "fresh.db", policy_path=POLICY_NEXT_BOUNDARY
    )
    async with open_runtime(fresh_settings) as fresh:
        assert await fresh.store.desired_for("acme") is None
        adopted = await adopt(fresh.collaborators, "acme")
        assert adopted is not None and adopted.plan_key == "starter" and adopted.plan_version == 1
        out = await fresh.engine.reconcile("acme")
        assert out.status == "applied" and out.applied == []
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]


async def test_drift_by_hand_is_healed(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START, used=1)
    await story.change("starter")
    # Someone deletes the scheduled successor and un-cancels by hand in OpenMeter.
    _, succ = await story.subs()
    await rt.client.delete_subscription(succ.id)
    cur, _ = await story.subs()
    await rt.client.unschedule_cancelation(cur.id)
    out = await story.reconcile()
    assert out.status == "applied"
    assert [a.action for a in out.applied] == ["schedule_change"]
    _, succ = await story.subs()
    assert plan_key(succ) == "starter"


async def test_usage_lost_by_an_edit_is_detected_and_not_retried(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """If OpenMeter ever dropped usage on an edit, the proof catches it and stops. The change
    at the next boundary the plan had next went out with the proof's after-read (on the
    edit's answer, ``engine._pipelined``): its successor is the target's, what the change
    needed anyway, and it leaves the period's entitlements alone."""
    from dataclasses import replace

    from reconciler.domain.actions import Action
    from reconciler.engine import Engine

    await onboard(story, "free", START, used=3)
    edited = False

    async def after(action: Action) -> None:
        nonlocal edited
        edited = edited or action.kind == "edit_items"

    engine = Engine(rt.collaborators, after_action=after)
    real_values = engine.observer.values

    async def values(customer_id: str, features: object) -> dict[str, object]:
        got = await real_values(customer_id, features)  # type: ignore[arg-type]
        if edited:  # pretend OpenMeter restarted the period's usage
            return {k: replace(v, usage=v.usage * 0) for k, v in got.items()}
        return got  # type: ignore[return-value]

    engine.observer.values = values  # type: ignore[method-assign]
    await story.request("starter")
    out = await engine.reconcile("acme")
    assert out.status == "failed"
    assert out.usage_not_preserved == ["api_credits: usage 3 -> 0"]
    assert out.error == "usage_not_preserved: api_credits: usage 3 -> 0"
    # nothing else was attempted
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    _, succ = await story.subs()
    assert succ is not None and plan_key(succ) == "starter"
    change = await rt.store.desired_for("acme")
    assert change is not None and change.status.value == "failed"
    assert change.details["proof"]["usage_preserved"] is False
    events, _ = await rt.store.list_events()
    assert {e.type for e in events} == {"plan_change.usage_not_preserved", "plan_change.failed"}
    # A later pass does not retry a failed change blindly.
    again = await rt.engine.reconcile("acme")
    assert again.state == "not_open"
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]


async def test_healed_drift_after_convergence_emits_fresh_events(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    await onboard(story, "free", START)
    await story.change("starter")
    await story.set_clock(BOUNDARY + timedelta(minutes=1))
    assert (await story.reconcile()).status == "converged"
    # Someone edits pro credits onto the starter subscription by hand.
    pro = await rt.engine.catalog.get("pro")
    card = pro.phases[0].card("api_credits")
    assert card is not None
    cur, _ = await story.subs()
    await rt.client.edit_subscription(
        cur.id, [{"op": "add_item", "phaseKey": "default", "rateCard": dict(card.raw)}]
    )
    out = await story.reconcile()
    assert out.status == "scheduled"  # healed at the next boundary, never mid-period
    await story.set_clock(BOUNDARY + timedelta(days=28, minutes=2))
    assert (await story.reconcile()).status == "converged"
    cur, _ = await story.subs()
    assert plan_key(cur) == "starter"
    events, _ = await rt.store.list_events(limit=20)
    assert sorted(e.type for e in events) == [
        "plan_change.applied",
        "plan_change.converged",
        "plan_change.converged",
        "plan_change.scheduled",
    ]
    assert len({e.id for e in events}) == 4


async def test_multi_phase_upgrade_edits_the_current_phase_and_keeps_it_at_the_boundary(
    emulator: EmulatorServer, control: httpx.AsyncClient, tmp_path: Path
) -> None:
    doc = Path(__file__).with_name("phased_plans.yaml").read_text()
    (await control.post("/_emulator/catalog", content=doc)).raise_for_status()
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nladder: [team, business]\n")
    settings = make_settings(emulator, tmp_path / "r.db", policy_path=policy)
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await story.onboard("team", START)
        # Day 20: the trial (14 days) is over, the customer is in the paid phase.
        await story.set_clock(START + timedelta(days=20))
        await story.use(50_000)
        (await control.delete("/_emulator/requests")).raise_for_status()
        out = await story.change("business")
        assert out.status == "applied"
        patch = next(a for a in out.applied if a.action == "edit_items")
        assert {op["phaseKey"] for op in patch.body["customizations"]} == {"paid"}
        change = next(a for a in out.applied if a.action == "schedule_change")
        assert change.body["startingPhase"] == "paid"  # no second trial after the boundary
        # The paid phase started on day 14, inside this usage period: usage counts from then.
        assert await story.value() == (50_000, 1_950_000)
        change_rec = await rt.store.desired_for("acme")
        assert change_rec is not None
        assert any(
            "started inside the current usage period" in w
            for w in change_rec.details.get("warnings", [])
        )
        await story.set_clock(BOUNDARY + timedelta(minutes=1))
        assert (await story.reconcile()).status == "converged"
        cur, _ = await story.subs()
        assert plan_key(cur) == "business"
        assert await story.value() == (0, 2_000_000)


async def test_hand_scheduled_successor_on_converged_customer_is_undone_even_after_a_crash(
    emulator: EmulatorServer, control: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Deleting the successor leaves a canceled subscription behind; that cancelation is ours
    to undo (not one made outside the reconciler), also when we crash right after the DELETE."""
    from reconciler.domain.actions import Action
    from reconciler.engine import Engine

    class Crash(BaseException):
        pass

    async def crash_after_delete(action: Action) -> None:
        if action.kind == "delete_scheduled":
            raise Crash

    settings = make_settings(emulator, tmp_path / "r.db", policy_path=POLICY_NEXT_BOUNDARY)
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await onboard(story, "starter", START)
        assert (await story.change("starter")).status == "converged"
        cur, _ = await story.subs()
        await rt.client.change_subscription(
            cur.id, {"timing": "next_billing_cycle", "plan": {"key": "free"}}
        )
        crashing = Engine(rt.collaborators, after_action=crash_after_delete)
        with pytest.raises(Crash):
            await crashing.reconcile("acme")
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        out = await story.reconcile()
        assert out.status == "converged"
        assert [a.action for a in out.applied] == ["unschedule_cancelation"]
        cur, succ = await story.subs()
        assert cur.status == "active" and cur.active_to is None and succ is None
        change = await rt.store.desired_for("acme")
        assert change is not None and "resuming" not in change.details


async def test_one_customer_addressed_by_key_and_by_id_keeps_one_intent(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    from reconciler.store.types import ChangeSource

    await onboard(story, "free", START, used=5)
    cust_id = (await rt.client.get_customer("acme")).id
    now = await story.now()
    by_key = await rt.store.submit_change("acme", "starter", None, now, ChangeSource.CLI, "k", now)
    assert (await rt.engine.reconcile("acme")).status == "applied"
    # A later request names the customer by its OpenMeter id.
    later = now + timedelta(minutes=5)
    by_id = await rt.store.submit_change(cust_id, "free", None, later, ChangeSource.CLI, "i", later)
    out = await rt.engine.reconcile(cust_id)
    assert out.status == "scheduled"  # back to free at the boundary (items kept until then)
    old = await rt.store.get_change(by_key.change.id)
    assert old is not None and old.status.value == "superseded"
    assert old.last_error is not None and f"addressed as '{cust_id}'" in old.last_error
    # The superseded intent no longer acts: nothing undoes the newer one.
    assert (await rt.engine.reconcile("acme")).state == "not_open"
    _, succ = await story.subs()
    assert plan_key(succ) == "free"
    # An older request arriving late under the other name loses to the newer one.
    stale = await rt.store.submit_change(
        "acme", "pro", None, now + timedelta(minutes=1), ChangeSource.CLI, "late", later
    )
    out = await rt.engine.reconcile("acme")
    assert out.state == "superseded" and out.error is not None
    stale_rec = await rt.store.get_change(stale.change.id)
    assert stale_rec is not None and stale_rec.status.value == "superseded"
    winner = await rt.store.get_change(by_id.change.id)
    assert winner is not None and winner.status.value == "scheduled"
    assert [m for m in await mutations(control) if m[0] == "PATCH"] == [("PATCH", "")]
