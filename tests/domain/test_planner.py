from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.domain.actions import (
    CreateSubscription,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
    Unschedule,
)
from reconciler.domain.model import (
    META_CHANGE,
    META_PLAN,
    Desired,
    Direction,
    EntitlementValue,
    Plan,
    SubscriptionStatus,
    Timing,
)
from reconciler.domain.planner import State, items_match, plan
from reconciler.domain.policy import Policy

from .omodel import FREE, PLANS, PRO, STARTER, T0, World, subscription

LADDER = ["free", "starter", "pro"]


def policy(extra: str = "") -> Policy:
    return Policy.from_yaml("version: 1\nladder: [free, starter, pro]\n" + extra, source="test")


POLICY = policy()
_seq = iter(range(1, 10_000_000))


def want(p: Plan) -> Desired:
    return Desired(
        change_id=f"chg{next(_seq)}", plan_key=p.key, plan_version=p.version, requested_at=T0
    )


def converge(
    world: World,
    target: Plan,
    desired: Desired | None = None,
    *,
    settled: bool = False,
    limit: int = 8,
) -> list[str]:
    """Run the engine's loop on the model: plan, apply the first action, re-observe."""
    desired = desired or want(target)
    kinds: list[str] = []
    for _ in range(limit):
        result = plan(world.observe(), desired, target, POLICY, world.now, settled=settled)
        if not result.actions:
            return kinds
        world.apply(result.actions[0])
        kinds.append(result.actions[0].kind)
    raise AssertionError(f"no convergence after {limit} steps: {kinds}")


def test_upgrade_edits_now_and_schedules_plan_record() -> None:
    w = World(subscription(FREE))
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0)
    assert r.state is State.ACTING
    assert r.direction is Direction.UPGRADE and r.timing is Timing.IMMEDIATE
    assert [a.kind for a in r.actions] == ["edit_items", "schedule_change"]
    edit = r.actions[0]
    assert isinstance(edit, EditItems)
    # changed api_credits replaced by add_item alone; base_fee added; nothing removed
    assert sorted(c.key for c in edit.add) == ["api_credits", "base_fee"]
    assert edit.remove == ()
    body = edit.request().body
    assert body is not None and body["timing"] == "immediate"
    ops = body["customizations"]
    assert [o["op"] for o in ops] == ["add_item", "add_item"]
    md = ops[0]["rateCard"]["entitlementTemplate"]["metadata"]
    assert (
        md[META_PLAN] == "starter" and md["tier"] == "starter" and md[META_CHANGE].startswith("chg")
    )
    change = r.actions[1]
    assert isinstance(change, ScheduleChange)
    assert change.request().body == {
        "timing": "next_billing_cycle",
        "plan": {"key": "starter", "version": 1},
        "metadata": change.metadata,
    }
    assert r.effective_at == T0
    assert r.converges_at == w.observe().current.current_period[1]  # type: ignore[union-attr]


def test_upgrade_converges_then_plan_record_matches_after_boundary() -> None:
    w = World(subscription(FREE))
    assert converge(w, STARTER) == ["edit_items", "schedule_change"]
    assert w.current is not None and w.current.status is SubscriptionStatus.CANCELED
    assert w.current.plan is not None and w.current.plan.key == "free"
    assert items_match(w.current.phases[0], STARTER.phases[0])
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, w.now)
    assert r.state is State.WAITING and r.actions == ()
    w.advance(timedelta(days=40))
    assert w.current.plan is not None and w.current.plan.key == "starter"
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, w.now)
    assert r.state is State.CONVERGED and r.actions == ()


def test_downgrade_schedules_only() -> None:
    w = World(subscription(STARTER))
    r = plan(w.observe(), want(FREE), FREE, POLICY, T0)
    assert r.direction is Direction.DOWNGRADE and r.timing is Timing.NEXT_BILLING_CYCLE
    assert [a.kind for a in r.actions] == ["schedule_change"]
    assert r.effective_at == r.converges_at == w.observe().current.current_period[1]  # type: ignore[union-attr]
    converge(w, FREE)
    assert w.current is not None and items_match(w.current.phases[0], STARTER.phases[0])
    assert (
        w.successor is not None and w.successor.plan is not None and w.successor.plan.key == "free"
    )


def test_same_plan_clears_pending_change() -> None:
    w = World(subscription(STARTER))
    converge(w, FREE)
    assert converge(w, STARTER) == ["delete_scheduled", "unschedule_cancelation"]
    assert w.successor is None
    assert w.current is not None and w.current.status is SubscriptionStatus.ACTIVE


def test_up_then_down_keeps_items_and_schedules_free() -> None:
    w = World(subscription(FREE))
    converge(w, STARTER)
    # plan record already says free, but the items are starter's: a change at the boundary is needed
    assert converge(w, FREE) == ["delete_scheduled", "unschedule_cancelation", "schedule_change"]
    assert w.current is not None and items_match(w.current.phases[0], STARTER.phases[0])
    assert (
        w.successor is not None and w.successor.plan is not None and w.successor.plan.key == "free"
    )
    w.advance(timedelta(days=40))
    assert w.current.plan is not None and w.current.plan.key == "free"
    assert items_match(w.current.phases[0], FREE.phases[0])


def test_up_down_up_within_period() -> None:
    w = World(subscription(FREE))
    converge(w, STARTER)
    converge(w, FREE)
    assert converge(w, STARTER) == ["delete_scheduled", "unschedule_cancelation", "schedule_change"]
    assert (
        w.successor is not None
        and w.successor.plan is not None
        and w.successor.plan.key == "starter"
    )
    assert w.mutations.count("edit_items") == 1  # items were never taken away


def test_a_to_b_to_c_upgrades() -> None:
    w = World(subscription(FREE))
    converge(w, STARTER)
    kinds = converge(w, PRO)
    assert kinds == ["delete_scheduled", "unschedule_cancelation", "edit_items", "schedule_change"]
    assert w.current is not None and items_match(w.current.phases[0], PRO.phases[0])


def test_no_subscription_creates_one() -> None:
    w = World(None)
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0)
    assert [type(a) for a in r.actions] == [CreateSubscription]
    body = r.actions[0].request().body
    assert body is not None and body["plan"] == {"key": "starter", "version": 1}
    assert body["customerId"] == "cust1" and body["timing"] == "immediate"


def test_scheduled_successor_without_current_is_replaced() -> None:
    s = subscription(PRO, start=T0 + timedelta(days=3), status=SubscriptionStatus.SCHEDULED)
    w = World(None, s)
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0)
    assert [type(a) for a in r.actions] == [DeleteScheduled, CreateSubscription]
    r2 = plan(w.observe(), want(PRO), PRO, POLICY, T0)
    assert r2.state is State.WAITING and r2.actions == ()


def test_remove_items_target_lacks() -> None:
    w = World(subscription(STARTER))
    r = plan(w.observe(), want(FREE), FREE, POLICY, T0)
    assert [a.kind for a in r.actions] == ["schedule_change"]
    # An immediate downgrade (by policy) removes the base fee and replaces credits in one PATCH.
    immediate = policy("rules:\n  - direction: downgrade\n    timing: immediate\n")
    r = plan(w.observe(), want(FREE), FREE, immediate, T0)
    edit = r.actions[0]
    assert isinstance(edit, EditItems)
    assert edit.remove == ("base_fee",) and [c.key for c in edit.add] == ["api_credits"]
    body = edit.request().body
    assert body is not None
    assert [o["op"] for o in body["customizations"]] == ["remove_item", "add_item"]


def test_policy_illegal_refuses() -> None:
    w = World(subscription(STARTER))
    closed = policy("rules:\n  - from: starter\n    to: free\n    timing: illegal\n")
    r = plan(w.observe(), want(FREE), FREE, closed, T0)
    assert r.state is State.REFUSED and r.actions == ()
    assert r.refusal is not None and "starter@v1 -> free@v1" in r.refusal
    assert r.rule is not None and "rules[0]" in r.rule


def test_guard_uses_observed_usage() -> None:
    w = World(subscription(STARTER))
    obs = w.observe()
    obs = type(obs)(
        obs.customer_id,
        obs.customer_key,
        obs.observed_at,
        obs.current,
        obs.successor,
        {"api_credits": EntitlementValue(True, Decimal(449_000), Decimal(101_000))},
    )
    strict = policy(
        "rules:\n  - direction: downgrade\n    timing: immediate\n"
        "guards:\n  downgrade_below_usage: refuse\n"
    )
    r = plan(obs, want(FREE), FREE, strict, T0)
    assert r.state is State.REFUSED
    assert "api_credits" in (r.refusal or "") and "101000" in (r.refusal or "")
    deferring = policy(
        "rules:\n  - direction: downgrade\n    timing: immediate\n"
        "guards:\n  downgrade_below_usage: defer\n"
    )
    r = plan(obs, want(FREE), FREE, deferring, T0)
    assert r.timing is Timing.NEXT_BILLING_CYCLE
    assert [a.kind for a in r.actions] == ["schedule_change"]


def test_layout_mismatch_refused() -> None:
    from .omodel import card, make_plan

    trial = make_plan("pro", 2, [card("api_credits", 10)], phases=("trial", "paid"))
    w = World(subscription(FREE))
    r = plan(w.observe(), want(trial), trial, POLICY, T0)
    assert r.state is State.REFUSED
    assert r.refusal is not None and "phases ['trial', 'paid']" in r.refusal


def test_canceled_by_someone_else_is_respected_once_settled() -> None:
    sub = subscription(STARTER)
    from dataclasses import replace

    canceled = replace(sub, status=SubscriptionStatus.CANCELED, active_to=T0 + timedelta(days=20))
    w = World(canceled)
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0, settled=True)
    assert r.state is State.RESPECTED and r.actions == ()
    # a new request (not settled) clears the pending cancelation
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0, settled=False)
    assert [type(a) for a in r.actions] == [Unschedule]


def test_item_drift_on_right_plan_heals_at_boundary() -> None:
    w = World(subscription(STARTER, items_plan=PRO))  # someone edited pro items by hand
    r = plan(w.observe(), want(STARTER), STARTER, POLICY, T0)
    assert r.direction is Direction.LATERAL and r.timing is Timing.NEXT_BILLING_CYCLE
    assert [a.kind for a in r.actions] == ["schedule_change"]


def test_new_plan_version_is_lateral_change() -> None:
    from .omodel import make_plan

    starter2 = make_plan("starter", 2, list(STARTER.phases[0].rate_cards))
    w = World(subscription(STARTER))
    r = plan(w.observe(), want(starter2), starter2, POLICY, T0)
    assert [a.kind for a in r.actions] == ["schedule_change"]
    assert r.actions[0].request().body["plan"] == {"key": "starter", "version": 2}  # type: ignore[index]


# ---- properties -------------------------------------------------------------------------------

plans = st.sampled_from([FREE, STARTER, PRO])


@st.composite
def worlds(draw: st.DrawFn) -> World:
    record = draw(plans)
    items = draw(plans)
    tagged = items is not record and draw(st.booleans())
    tags = {META_PLAN: items.key, "reconciler.version": "1", META_CHANGE: "old"} if tagged else None
    cur = subscription(record, items_plan=items, tags=tags)
    w = World(cur)
    if draw(st.booleans()):
        w.apply(ScheduleChange(cur.id, draw(plans).ref))
    return w


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), requests=st.lists(st.tuples(plans, st.booleans()), min_size=1, max_size=5))
def test_any_request_sequence_converges_and_replanning_is_idempotent(
    world: World, requests: list[tuple[Plan, bool]]
) -> None:
    for target, pass_boundary in requests:
        desired = want(target)
        converge(world, target, desired)
        again = plan(world.observe(), desired, target, POLICY, world.now)
        assert again.actions == ()
        assert again.state in (State.CONVERGED, State.WAITING)
        cur = world.current
        assert cur is not None
        # immediate targets: the items are already the target's
        if again.timing is Timing.IMMEDIATE:
            assert items_match(cur.phases[0], target.phases[0])
        if pass_boundary:
            world.advance(timedelta(days=35))
            converge(world, target, desired)
            cur = world.current
            assert cur is not None and cur.plan is not None
            if cur.plan.key != target.key:
                # billing_safe: a flat fee the edit started mid-period stays prorated only if
                # the record moves one period later; past the deferral the change is scheduled.
                waiting = plan(world.observe(), desired, target, POLICY, world.now)
                assert waiting.state is State.WAITING and waiting.actions == ()
                succ = world.successor
                assert succ is not None and succ.plan is not None
                assert succ.plan.key == target.key
                world.advance(timedelta(days=35))
                converge(world, target, desired)
            cur = world.current
            assert cur is not None and cur.plan is not None
            assert cur.plan.key == target.key
            assert items_match(cur.phases[0], target.phases[0])
            assert (
                plan(world.observe(), desired, target, POLICY, world.now).state is State.CONVERGED
            )


@pytest.mark.parametrize("target", [FREE, STARTER, PRO], ids=lambda p: p.key)
@pytest.mark.parametrize("start", [FREE, STARTER, PRO], ids=lambda p: p.key)
def test_each_mutation_at_most_once_per_request(start: Plan, target: Plan) -> None:
    w = World(subscription(start))
    kinds = converge(w, target)
    assert len(kinds) == len(set(kinds))
    assert set(kinds) <= {"edit_items", "schedule_change"}
    assert ("edit_items" in kinds) == (LADDER.index(target.key) > LADDER.index(start.key))
    assert PLANS[target.key] is target


def test_subscription_started_in_a_later_phase_matches_the_tail_of_the_layout() -> None:
    from .omodel import card, make_plan

    paid_only = make_plan("starter", 1, [card("api_credits", 10)], phases=("paid",))
    phased = make_plan("pro", 1, [card("api_credits", 99)], phases=("trial", "paid"))
    w = World(subscription(paid_only))
    r = plan(w.observe(), want(phased), phased, POLICY, T0)
    assert r.state is State.ACTING and r.refusal is None
    edit = r.actions[0]
    assert isinstance(edit, EditItems) and edit.phase_key == "paid"
    wrong_order = make_plan("pro", 2, [card("api_credits", 99)], phases=("paid", "trial"))
    r = plan(w.observe(), want(wrong_order), wrong_order, POLICY, T0)
    assert r.state is State.REFUSED
