"""The planner: observed OpenMeter state + desired state -> the least actions that converge.

``plan()`` is pure and total: for any observation it either returns the ordered actions that
lead to the goal (assuming each succeeds), an empty list when the customer already is where the
desired state says, or a refusal with a reason. The engine executes only the first action (an
upgrade's change also goes out on the edit's answer, ``engine._pipelined``), then observes again
and calls ``plan()`` again, so every step is re-derived from what OpenMeter shows
(level-triggered; see docs/ENGINE.md).

The goal for a target plan T, given the policy's timing:

* ``immediate`` (upgrades by default): the current phase's items equal T's phase of the same
  key now (PATCH edit: the phase, and so the usage measured since its start, is kept), and the
  plan record converges at a billing boundary: either the subscription already names T, or a
  successor on T is scheduled there (POST change, ``next_billing_cycle``). With the policy's
  ``plan_record: billing_safe`` that is the first boundary where ending the subscription does
  not stop OpenMeter prorating a flat fee (``reconciler.domain.convergence``); until then the
  planner waits and says when to look again (``PlanResult.next_check_at``).
* ``next_billing_cycle`` (downgrades, laterals): the items stay until the boundary and a
  successor on T is scheduled there — unless the subscription already names T and has T's items.

A subscription with a scheduled change is ``canceled`` and frozen in OpenMeter; to change
course the planner deletes the successor and unschedules the cancelation first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

from reconciler.domain.actions import (
    Action,
    CreateSubscription,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
    Unschedule,
    provenance,
)
from reconciler.domain.convergence import Convergence, PlanRecordMode, plan_record_convergence
from reconciler.domain.model import (
    META_CHANGE,
    META_PLAN,
    META_VERSION,
    Desired,
    Direction,
    Observed,
    ObservedPhase,
    ObservedSubscription,
    Plan,
    PlanPhase,
    PlanRef,
    SubscriptionStatus,
    Timing,
)
from reconciler.domain.pricing.replay import observed_versions, replay_edit
from reconciler.domain.timefmt import iso_offset


class DecisionLike(Protocol):
    @property
    def direction(self) -> Direction: ...
    @property
    def timing(self) -> Timing: ...
    @property
    def rule(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def plan_record(self) -> PlanRecordMode: ...


class ChangePolicy(Protocol):
    def decide(
        self,
        from_key: str,
        to_key: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        usage_by_feature: Mapping[str, Decimal] | None = None,
        target_allowance_by_feature: Mapping[str, Decimal] | None = None,
    ) -> DecisionLike: ...


class State(StrEnum):
    """Where the customer stands relative to the desired state."""

    CONVERGED = "converged"  # plan record and items are the target's; nothing pending
    WAITING = "waiting"  # nothing to do now; the plan record converges at ``converges_at``
    ACTING = "acting"  # actions remain
    REFUSED = "refused"  # the change cannot be made (policy, layout); see ``refusal``
    RESPECTED = "respected"  # a cancelation made outside the reconciler is left alone


@dataclass(frozen=True, slots=True)
class PlanResult:
    state: State
    actions: tuple[Action, ...]
    direction: Direction
    timing: Timing | None
    rule: str | None
    reason: str
    effective_at: datetime | None
    converges_at: datetime | None
    from_plan: PlanRef | None
    refusal: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # How the plan record converges (set when a successor is needed only for the record).
    convergence: Convergence | None = None
    # When to look again, if earlier than ``converges_at`` (a deferred plan-record change).
    next_check_at: datetime | None = None

    @property
    def convergence_reason(self) -> str | None:
        return self.convergence.reason if self.convergence is not None else None


class LayoutMismatch(ValueError):
    """The target plan's phases do not line up with the subscription's."""


def effective_plan(sub: ObservedSubscription, phase: ObservedPhase) -> PlanRef | None:
    """The plan whose items the customer has now.

    Items the reconciler added carry provenance tags; the most recently started tagged item
    wins. Without tags, the subscription's plan record is the best knowledge.
    """
    tagged = [i for i in phase.items if i.provenance.get(META_PLAN)]
    if tagged:
        latest = max(tagged, key=lambda i: i.active_from)
        tags = latest.provenance
        try:
            version = int(tags.get(META_VERSION, "0"))
        except ValueError:
            version = 0
        return PlanRef(tags[META_PLAN], version)
    return sub.plan


def items_match(phase: ObservedPhase, target: PlanPhase) -> bool:
    have = sorted(i.fingerprint() for i in phase.items)
    want = sorted(c.fingerprint() for c in target.rate_cards)
    return have == want


def _edit(
    sub: ObservedSubscription,
    phase: ObservedPhase,
    target_phase: PlanPhase,
    tags: Mapping[str, str],
    now: datetime,
) -> EditItems:
    current = {i.key: i for i in phase.items}
    add = tuple(
        card
        for card in target_phase.rate_cards
        if card.key not in current or current[card.key].fingerprint() != card.fingerprint()
    )
    target_keys = {c.key for c in target_phase.rate_cards}
    remove = tuple(sorted(k for k in current if k not in target_keys))
    # A version that starts later (a scheduled edit) would make add_item overlap it; OpenMeter's
    # unschedule_edit op clears those first, in the same request.
    scheduled = any(v.active_from > now for versions in phase.timelines.values() for v in versions)
    return EditItems(
        subscription_id=sub.id,
        phase_key=phase.key,
        add=add,
        remove=remove,
        tags=dict(tags),
        unschedule_edits=scheduled,
    )


def _layout_error(sub: ObservedSubscription, target: Plan) -> str | None:
    """The subscription's phases must be the target's, or their tail: a subscription started
    in a later phase (``startingPhase``) has only the phases from there on."""
    have = [p.key for p in sub.phases]
    want = [p.key for p in target.phases]
    if (len(want) == 1 and len(have) == 1) or (have and want[-len(have) :] == have):
        return None
    return (
        f"target plan {target.key}@v{target.version} has phases {want} but the subscription "
        f"has {have}; refusing to guess how to map them"
    )


def _single_phase_target(sub_phase: ObservedPhase, target: Plan) -> PlanPhase | None:
    found = target.phase(sub_phase.key)
    if found is None and len(target.phases) == 1:
        return target.phases[0]
    return found


def _successor_matches(succ: ObservedSubscription, target: Plan) -> bool:
    return succ.plan is not None and (succ.plan.key, succ.plan.version) == (
        target.key,
        target.version,
    )


def _usage_and_allowance(
    observed: Observed, target_phase: PlanPhase
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    usage = {k: v.usage for k, v in observed.values.items() if v.usage is not None}
    allowance: dict[str, Decimal] = {}
    for card in target_phase.rate_cards:
        ent = card.entitlement
        if card.feature_key and ent and ent.type == "metered" and ent.issue_after_reset is not None:
            allowance[card.feature_key] = ent.issue_after_reset
    return usage, allowance


def _warnings(sub: ObservedSubscription, phase: ObservedPhase) -> tuple[str, ...]:
    out: list[str] = []
    first_phase = sub.phases[0].key if sub.phases else phase.key
    for item in phase.items:
        ent = item.entitlement
        if ent is None or ent.type != "metered" or ent.current_usage_period is None:
            continue
        period_from = ent.current_usage_period[0]
        if (
            ent.measure_usage_from is not None
            and period_from == ent.measure_usage_from
            and (phase.key != first_phase or sub.previous_id is not None)
        ):
            out.append(
                f"the current phase '{phase.key}' started inside the current usage period "
                f"({period_from.isoformat()}); usage of '{ent.feature_key}' is kept only since "
                "the phase start"
            )
    return tuple(dict.fromkeys(out))


def plan(
    observed: Observed,
    desired: Desired,
    target: Plan,
    policy: ChangePolicy,
    now: datetime,
    *,
    settled: bool = False,
) -> PlanResult:
    """Plan the actions that move ``observed`` to ``desired`` (whose plan is ``target``).

    ``settled`` says the desired state was reached before: a cancelation or a missing
    subscription seen now was made outside the reconciler and is respected, not undone.
    """
    tags = provenance(target.ref, desired.change_id)
    meta = {
        META_PLAN: target.key,
        META_VERSION: str(target.version),
        META_CHANGE: desired.change_id,
    }
    cur, succ = observed.current, observed.successor

    if cur is None:
        return _plan_without_current(observed, target, now, settled=settled, meta=meta)

    phase = cur.phase_at(now)
    if phase is None:
        return _refused(cur, f"subscription {cur.id} has no phase active at {now.isoformat()}")
    layout = _layout_error(cur, target)
    target_phase = _single_phase_target(phase, target)
    if layout is None and target_phase is None:
        layout = f"target plan {target.key}@v{target.version} has no phase '{phase.key}'"
    if layout is not None or target_phase is None:
        return _refused(cur, layout or "layout mismatch")

    from_plan = effective_plan(cur, phase)
    usage, allowance = _usage_and_allowance(observed, target_phase)
    decision = policy.decide(
        from_plan.key if from_plan else target.key,
        target.key,
        from_version=from_plan.version if from_plan else None,
        to_version=target.version,
        usage_by_feature=usage,
        target_allowance_by_feature=allowance,
    )
    if decision.timing is Timing.ILLEGAL:
        return PlanResult(
            state=State.REFUSED,
            actions=(),
            direction=decision.direction,
            timing=decision.timing,
            rule=decision.rule,
            reason=decision.reason,
            effective_at=None,
            converges_at=None,
            from_plan=from_plan,
            refusal=f"policy forbids {from_plan} -> {target.ref}: {decision.reason}",
        )

    match = items_match(phase, target_phase)
    timing = decision.timing
    direction = decision.direction
    if direction is Direction.NOOP and not match:
        # Items drifted on a subscription whose plan is right: heal at the boundary, never
        # take allowance away mid-period.
        direction, timing = Direction.LATERAL, Timing.NEXT_BILLING_CYCLE

    immediate = timing is Timing.IMMEDIATE
    edit_needed = immediate and not match
    items_after_match = match or immediate
    record_ok = cur.plan is not None and cur.plan.key == target.key
    record_ok = record_ok and cur.plan is not None and cur.plan.version == target.version
    successor_needed = not (record_ok and items_after_match)
    keep_succ = (
        succ is not None
        and successor_needed
        and _successor_matches(succ, target)
        and not edit_needed
    )

    if cur.status is SubscriptionStatus.CANCELED and succ is None and settled:
        # Someone canceled the subscription outside the reconciler after it had converged.
        return _result(
            State.RESPECTED,
            (),
            decision,
            direction,
            timing,
            from_plan,
            now,
            cur.active_to,
            warnings=(
                f"subscription {cur.id} is canceled as of {iso_offset(cur.active_to) or 'never'}; "
                "the cancelation was not made by the reconciler and is left alone",
            ),
        )

    boundary = _boundary(cur, succ)
    actions: list[Action] = []
    if succ is not None and not keep_succ:
        actions.append(DeleteScheduled(succ.id, succ.plan))
    canceled_after = cur.status is SubscriptionStatus.CANCELED and (keep_succ or succ is None)
    if cur.status is SubscriptionStatus.CANCELED and not keep_succ:
        # Our successor is gone (deleted now, or by an earlier step): the cancelation it caused
        # must go too, whether or not anything else changes.
        actions.append(Unschedule(cur.id))
        canceled_after = False
    edit = _edit(cur, phase, target_phase, tags, now) if edit_needed else None
    if edit is not None:
        actions.append(edit)
    convergence: Convergence | None = None
    if successor_needed and not keep_succ and not canceled_after:
        if items_after_match and boundary is not None:
            # The successor only moves the plan record: choose a boundary where it does not
            # change what OpenMeter bills (the items are T's already, or will be after the edit).
            convergence = _record_convergence(cur, edit, now, boundary, decision.plan_record)
        if convergence is None or convergence.due(now):
            actions.append(
                ScheduleChange(
                    cur.id,
                    target.ref,
                    starting_phase=_starting_phase(cur, phase, target),
                    metadata=meta,
                )
            )

    effective_at = now if immediate or not actions else boundary
    converges_at = boundary if successor_needed else now
    next_check_at: datetime | None = None
    if convergence is not None:
        converges_at = convergence.at
        if not convergence.due(now):
            next_check_at = convergence.schedule_at
    if not actions:
        state = State.WAITING if successor_needed else State.CONVERGED
    else:
        state = State.ACTING
    return _result(
        state,
        tuple(actions),
        decision,
        direction,
        timing,
        from_plan,
        effective_at,
        converges_at,
        warnings=_warnings(cur, phase) if edit_needed else (),
        convergence=convergence,
        next_check_at=next_check_at,
    )


def _record_convergence(
    cur: ObservedSubscription,
    edit: EditItems | None,
    now: datetime,
    boundary: datetime,
    mode: PlanRecordMode,
) -> Convergence:
    """Where the plan record converges, judged on the item versions after ``edit``.

    The subscription is judged as it runs once this plan's deletions and unschedulings are
    done: without an end (the only successor it may have is the one being planned)."""
    running = replace(cur, active_to=None, status=SubscriptionStatus.ACTIVE)
    versions = observed_versions(running)
    if cur.active_to is not None:  # versions cut by the cancelation run on once it is undone
        versions = [
            replace(v, active_to=None) if v.active_to == cur.active_to else v for v in versions
        ]
    if edit is not None:
        versions = replay_edit(versions, edit, running, now)
    return plan_record_convergence(running, versions, first=boundary, mode=mode)


def _boundary(cur: ObservedSubscription, succ: ObservedSubscription | None) -> datetime | None:
    if cur.status is SubscriptionStatus.CANCELED and cur.active_to is not None:
        return cur.active_to
    if cur.current_period is not None:
        return cur.current_period[1]
    if succ is not None:
        return succ.active_from
    return cur.active_to


def _starting_phase(cur: ObservedSubscription, phase: ObservedPhase, target: Plan) -> str | None:
    """For multi-phase plans the successor starts in the phase the customer is in at the
    boundary, so a change never restarts a trial."""
    if len(target.phases) <= 1:
        return None
    boundary = _boundary(cur, None)
    if phase.active_to is not None and boundary is not None and boundary >= phase.active_to:
        keys = [p.key for p in cur.phases]
        idx = keys.index(phase.key)
        if idx + 1 < len(keys):
            return keys[idx + 1]
    return phase.key


def _result(
    state: State,
    actions: tuple[Action, ...],
    decision: DecisionLike,
    direction: Direction,
    timing: Timing | None,
    from_plan: PlanRef | None,
    effective_at: datetime | None,
    converges_at: datetime | None,
    *,
    warnings: tuple[str, ...] = (),
    convergence: Convergence | None = None,
    next_check_at: datetime | None = None,
) -> PlanResult:
    return PlanResult(
        state=state,
        actions=actions,
        direction=direction,
        timing=timing,
        rule=decision.rule,
        reason=decision.reason,
        effective_at=effective_at,
        converges_at=converges_at,
        from_plan=from_plan,
        warnings=warnings,
        convergence=convergence,
        next_check_at=next_check_at,
    )


def _refused(cur: ObservedSubscription, why: str) -> PlanResult:
    return PlanResult(
        state=State.REFUSED,
        actions=(),
        direction=Direction.NOOP,
        timing=None,
        rule=None,
        reason=why,
        effective_at=None,
        converges_at=None,
        from_plan=cur.plan,
        refusal=why,
    )


def _plan_without_current(
    observed: Observed, target: Plan, now: datetime, *, settled: bool, meta: Mapping[str, str]
) -> PlanResult:
    succ = observed.successor
    if settled and succ is None:
        return PlanResult(
            state=State.RESPECTED,
            actions=(),
            direction=Direction.NOOP,
            timing=None,
            rule=None,
            reason="the customer's subscription ended outside the reconciler; not recreated",
            effective_at=None,
            converges_at=None,
            from_plan=None,
            warnings=("customer has no subscription; it ended after the change had converged",),
        )
    if succ is not None and _successor_matches(succ, target):
        return PlanResult(
            state=State.WAITING,
            actions=(),
            direction=Direction.NOOP,
            timing=Timing.NEXT_BILLING_CYCLE,
            rule=None,
            reason=f"a subscription on {target.ref} is scheduled to start",
            effective_at=succ.active_from,
            converges_at=succ.active_from,
            from_plan=None,
        )
    actions: list[Action] = []
    if succ is not None:
        actions.append(DeleteScheduled(succ.id, succ.plan))
    actions.append(CreateSubscription(observed.customer_id, target.ref, metadata=meta))
    return PlanResult(
        state=State.ACTING,
        actions=tuple(actions),
        direction=Direction.UPGRADE,
        timing=Timing.IMMEDIATE,
        rule="no subscription",
        reason="the customer has no subscription: create one on the target plan now",
        effective_at=now,
        converges_at=now,
        from_plan=None,
    )
