"""``reconciler/domain/addons.py`` ``gate``: the planner's edit for a subscription with add-ons."""

from __future__ import annotations

import dataclasses

from reconciler.domain.actions import ScheduleChange
from reconciler.domain.addons import AddonMode, addons_matter, gate
from reconciler.domain.model import META_PLAN, Desired, Observed, Timing
from reconciler.domain.planner import PlanResult, State, plan
from reconciler.domain.policy import Policy

from .omodel import FREE, STARTER, T0, World, subscription

POLICY = Policy.from_yaml("version: 1\nladder: [free, starter, pro]\n", source="test")
WANT = Desired(change_id="chg1", plan_key="starter", plan_version=1, requested_at=T0)


def _upgrade() -> tuple[Observed, PlanResult]:
    w = World(subscription(FREE))
    observed = w.observe()
    return observed, plan(observed, WANT, STARTER, POLICY, T0)


def test_without_addons_or_unread_the_result_is_unchanged() -> None:
    observed, result = _upgrade()
    assert addons_matter(result)
    for addons in (None, ()):
        obs = dataclasses.replace(observed, addons=addons)
        assert gate(result, obs, STARTER, AddonMode.REFUSE, "chg1") is result


def test_refuse_sends_nothing_and_says_why() -> None:
    observed, result = _upgrade()
    obs = dataclasses.replace(observed, addons=("extra_credits",))
    out = gate(result, obs, STARTER, AddonMode.REFUSE, "chg1")
    assert out.state is State.REFUSED and out.actions == ()
    assert "has add-ons (extra_credits)" in out.refusal
    assert "subscription with addons cannot be edited" in out.refusal
    assert out.refusal.endswith(
        "(policy addons: refuse; set addons: change_resets_usage to allow it)"
    )


def test_change_resets_usage_is_one_immediate_change() -> None:
    observed, result = _upgrade()
    obs = dataclasses.replace(observed, addons=("extra_credits",))
    out = gate(result, obs, STARTER, AddonMode.CHANGE_RESETS_USAGE, "chg1")
    assert out.state is State.ACTING and len(out.actions) == 1
    change = out.actions[0]
    assert isinstance(change, ScheduleChange) and change.timing is Timing.IMMEDIATE
    body = change.request().body
    assert body is not None and body["timing"] == "immediate"
    assert body["plan"] == {"key": "starter", "version": 1}
    assert body["metadata"][META_PLAN] == "starter"
    assert change.describe().endswith(" now")
    assert out.timing is Timing.IMMEDIATE and out.converges_at == T0
    assert any("usage restarts from 0" in w for w in out.warnings)


def test_a_scheduled_change_is_not_affected() -> None:
    w = World(subscription(STARTER))
    observed = w.observe()
    down = Desired(change_id="chg2", plan_key="free", plan_version=1, requested_at=T0)
    result = plan(observed, down, FREE, POLICY, T0)
    assert not addons_matter(result)
    obs = dataclasses.replace(observed, addons=("extra_credits",))
    assert gate(result, obs, FREE, AddonMode.REFUSE, "chg2") is result
