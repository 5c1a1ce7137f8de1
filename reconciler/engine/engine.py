"""The reconcile loop for one customer: observe, plan, apply one action, repeat.

Contract (the same as controller-runtime's ``Reconcile``): ``reconcile(customer)`` may be called
any number of times, at any moment, after any crash; it reads the desired state from the store
and the observed state from OpenMeter and does only what the difference requires. A mutation
whose outcome is unknown (timeout, dropped connection, 5xx) is never repeated blindly: the next
observation shows whether it was applied.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from reconciler.domain.actions import (
    Action,
    CreateSubscription,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
    Unschedule,
)
from reconciler.domain.addons import AddonMode, addons_matter
from reconciler.domain.addons import gate as addon_gate
from reconciler.domain.drift import ObservedMark, items_summary, mark_of
from reconciler.domain.model import (
    META_CHANGE,
    META_PLAN,
    META_VERSION,
    Desired,
    Direction,
    EntitlementValue,
    Observed,
    ObservedSubscription,
    Plan,
    SubscriptionStatus,
    Timing,
)
from reconciler.domain.planner import ChangePolicy, PlanResult, State, plan
from reconciler.domain.policy import PolicyError
from reconciler.domain.pricing.replay import observed_versions
from reconciler.engine.audit import AuditWriter
from reconciler.engine.catalog import Catalog, UnknownPlan
from reconciler.engine.clock import Clock
from reconciler.engine.invoices import credit_due_view, read_invoiced
from reconciler.engine.observe import Observer
from reconciler.engine.pacing import Pacer
from reconciler.engine.preview import (
    convergence_view,
    preview_document,
    subscription_view,
    values_view,
)
from reconciler.logs import bound, get_logger
from reconciler.openmeter import mapping
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OpenMeterError,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TransportError,
)
from reconciler.openmeter.models import SubscriptionChangeResponse
from reconciler.store import Store
from reconciler.store.errors import StaleChangeError
from reconciler.store.store import KEEP, Claim, Keep
from reconciler.store.types import (
    AuditEntry,
    AuditKind,
    ChangeRecord,
    ChangeSource,
    ChangeStatus,
    NewEvent,
)

log = get_logger("reconciler.engine")

RETRY_BASE = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=30)
AFTER_BOUNDARY = timedelta(seconds=2)


@dataclass
class Hooks:
    """Callbacks the service uses for metrics; all optional."""

    on_action: Callable[[str, str], None] | None = None  # (kind, outcome)
    on_status: Callable[[str], None] | None = None
    on_usage_not_preserved: Callable[[str], None] | None = None  # feature key
    on_drift_healed: Callable[[str], None] | None = None  # action kind
    on_drift_found: Callable[[str], None] | None = None  # what drifted: items | subscription


@dataclass
class Outcome:
    customer: str
    change_id: str | None
    status: str | None
    state: str
    applied: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    usage_not_preserved: list[str] = field(default_factory=list)
    result: PlanResult | None = None


@dataclass
class _Pass:
    """One reconcile pass of one customer: its claims and the writes staged for the next commit.

    Writes are staged and committed together (``Engine._commit``): before the pass's first
    mutation and before any mutation that needs a durable marker (``proof_before``,
    ``resuming``), right after every mutation (with its audit row), and when the pass ends.
    """

    claim: Claim
    aliases: AsyncExitStack
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[AuditEntry] = field(default_factory=list)
    reschedule: datetime | Keep | None = KEEP
    customer_id: str | None = None
    durable: bool = False  # a staged field must be stored before the next mutation
    acted: bool = False  # a mutation was sent in this pass


def _value_dict(v: EntitlementValue | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "has_access": v.has_access,
        "usage": _num(v.usage),
        "balance": _num(v.balance),
        "total_available_grant_amount": _num(v.total_available_grant_amount),
    }


def _num(d: Decimal | None) -> int | float | str | None:
    if d is None:
        return None
    if d == d.to_integral_value():
        return int(d)
    return str(d)


def _backoff(attempts: int) -> timedelta:
    return min(RETRY_MAX, RETRY_BASE * (1 << min(16, max(0, attempts - 1))))


def _may_still_be_running(exc: TransportError) -> bool:
    """A mutation whose response timed out was sent and may still be in progress server-side
    (a dropped connection, by contrast, means the server has finished with it)."""
    return exc.ambiguous and isinstance(exc.cause, httpx.TimeoutException)


def _same_call(a: Action, b: Action) -> bool:
    return a.request().as_dict() == b.request().as_dict()


class Engine:
    def __init__(
        self,
        client: OpenMeterClient,
        store: Store,
        policy: ChangePolicy,
        clock: Clock,
        *,
        hooks: Hooks | None = None,
        max_steps: int = 8,
        after_action: Callable[[Action], Awaitable[None]] | None = None,
        call_audit: AuditWriter | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.policy = policy
        self.clock = clock
        self.catalog = Catalog(client)
        self.pacer = pacer or Pacer(0)
        self.observer = Observer(client, self.pacer)
        self.hooks = hooks or Hooks()
        self.max_steps = max_steps
        self._after_action = after_action  # test seam: crash injection right after a mutation
        self.call_audit = call_audit  # the client's audit observer: its rows go with ours
        self._passes: dict[str, _Pass] = {}
        # customer -> monotonic time until which a timed-out mutation may still be running
        self._settling: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------
    async def reconcile(self, customer: str) -> Outcome:
        """Move one customer toward its desired state. Safe to call at any time, repeatedly.

        The customer is claimed first (a row lock on PostgreSQL, so two replicas never work on
        one customer at once); a customer claimed elsewhere returns the state ``busy``.
        """
        await self.pacer.yield_point()
        async with self.store.claim(customer) as claim, AsyncExitStack() as aliases:
            if claim is None:
                return Outcome(customer, None, None, "busy")
            self._passes[customer] = _Pass(claim, aliases)
            if self.call_audit is not None:
                self.call_audit.bind(customer)
            try:
                return await self._reconcile_claimed(customer, claim)
            except StaleChangeError as exc:
                # A newer request superseded this one while we worked on it (the store keeps
                # superseded final): nothing to record, and no event for it; the worker runs
                # the customer again for the newer request.
                log.info("change_superseded_while_reconciling", change=exc.change_id)
                return Outcome(customer, exc.change_id, exc.actual, "superseded")
            finally:
                state = self._passes.pop(customer)
                if self.call_audit is not None:
                    await self.call_audit.flush(customer)
                if state.notes:
                    await self.store.append_audit(state.notes)

    # -- staged writes --------------------------------------------------------------------------

    def _stage(self, change: ChangeRecord, *, durable: bool = False, **fields: Any) -> ChangeRecord:
        """Stage fields of the change for the next commit; returns the change as it will be."""
        state = self._passes[change.customer]
        state.fields.update(fields)
        state.durable = state.durable or durable
        if "customer_id" in fields:
            state.customer_id = fields["customer_id"]
        return dataclasses.replace(change, **fields)

    def _note(self, change: ChangeRecord, operation: str, at: datetime, **fields: Any) -> None:
        """Stage a decision row of the audit log for this change."""
        self._passes[change.customer].notes.append(
            AuditEntry(
                at=at,
                kind=AuditKind.DECISION,
                operation=operation,
                customer=change.customer,
                change_id=change.id,
                **fields,
            )
        )

    def _schedule(self, customer: str, at: datetime | None) -> None:
        """Stage when the worker should look at this customer next (None: nothing due)."""
        self._passes[customer].reschedule = at

    async def _commit(
        self, change: ChangeRecord | None, customer: str, events: list[NewEvent] | None = None
    ) -> ChangeRecord | None:
        """Write what the pass staged, the audit rows of its calls and ``events`` in one store
        transaction (see ``Store.commit``)."""
        await self.pacer.yield_point()
        state = self._passes[customer]
        audit = [*(self.call_audit.take(customer) if self.call_audit else ()), *state.notes]
        fields, reschedule = state.fields, state.reschedule
        state.fields, state.notes, state.reschedule, state.durable = {}, [], KEEP, False
        if change is None:
            fields = {}
        try:
            stored = await self.store.commit(
                change.id if change is not None else None,
                fields=fields,
                events=events or (),
                audit=audit,
                claim=state.claim,
                customer_id=state.customer_id,
                reschedule=reschedule,
            )
        except StaleChangeError:
            await self.store.append_audit(audit)  # what was called stays on record
            raise
        return stored if stored is not None else change

    async def _commit_change(
        self, change: ChangeRecord, events: list[NewEvent] | None = None
    ) -> ChangeRecord:
        stored = await self._commit(change, change.customer, events)
        assert stored is not None
        return stored

    async def _reconcile_claimed(self, customer: str, claim: Claim) -> Outcome:
        change = claim.desired
        until = self._settling.get(customer)
        if until is not None:
            wait = until - time.monotonic()
            if wait > 0:
                # Not even an observation yet: it could miss the mutation still running.
                self._schedule(customer, await self.clock.now() + timedelta(seconds=wait))
                await self._commit(None, customer)
                return Outcome(customer, change.id if change else None, None, "settling")
            del self._settling[customer]
        if change is None:
            self._schedule(customer, None)
            await self._commit(None, customer)
            return Outcome(customer, None, None, "no_desired_state")
        if change.status in (ChangeStatus.FAILED, ChangeStatus.SUPERSEDED):
            self._schedule(customer, None)
            await self._commit(None, customer)
            return Outcome(
                customer, change.id, change.status.value, "not_open", error=change.last_error
            )
        with bound(customer=customer, change=change.id):
            try:
                return await self._reconcile(change)
            except (UnknownPlan, PolicyError) as exc:
                return await self._fail(change, str(exc))
            except (TransportError, ServerError, RateLimited) as exc:
                return await self._retry_later(change, exc)
            except OpenMeterError as exc:
                if isinstance(exc, NotFound) and "customer" in (exc.detail or "").lower():
                    return await self._fail(
                        change, f"customer not found in OpenMeter: {exc.detail}"
                    )
                return await self._retry_later(change, exc)

    async def _reconcile(self, change: ChangeRecord) -> Outcome:
        customer = change.customer
        target = await self.catalog.get(change.plan_key, change.plan_version)
        if change.plan_version is None:
            change = self._stage(change, plan_version=target.version)
        desired = change.to_desired()
        converged = change.status is ChangeStatus.CONVERGED
        outcome = Outcome(customer, change.id, change.status.value, "acting")
        last_failure: tuple[Action, OpenMeterError] | None = None
        ambiguous = 0
        result: PlanResult | None = None
        # Within one pass the customer's identity does not change, and entitlement values are
        # read once and then after every edit (the proof): later steps reuse the newest ones.
        identity: tuple[str, str | None] | None = None
        values: dict[str, EntitlementValue] | None = None
        # After an edit or a scheduled change, the next step's observation reads only the
        # current subscription (``Observer.follow``); anything unexpected means a full one.
        follow: tuple[Observed, ObservedSubscription | None] | None = None
        for step in range(self.max_steps):
            now = await self.clock.now()
            observed_or_none = None
            if follow is not None and values is not None:
                observed_or_none = await self.observer.follow(follow[0], now, values, follow[1])
                follow = None
            # Entitlement values are read only once a decision may depend on them (below).
            has_values = observed_or_none is not None or values is not None
            observed = observed_or_none or await self.observer.observe(
                customer, now, identity=identity, known_values=values, values=False
            )
            if observed.current is not None and observed.current.phase_at(now) is None:
                # A billing boundary passed between our clock read and OpenMeter computing the
                # statuses (the next subscription is already current): read the clock again,
                # never earlier than OpenMeter's view, and observe again before planning.
                now = max(await self.clock.now(), observed.current.active_from)
                observed = await self.observer.observe(customer, now, identity=identity)
                has_values = True
            identity = (observed.customer_id, observed.customer_key)
            values = dict(observed.values) if has_values else None
            if step == 0:
                change, stop = await self._one_customer_one_intent(change, observed, now)
                if stop is not None:
                    return stop
            change = await self._check_pending_proof(change, observed, outcome)
            change = await self._clear_resuming(change, observed)
            # A cancelation left behind by our own deletion of a successor (marked durably
            # before the DELETE, so a crash in between is covered) is ours to undo, not a
            # cancelation made outside the reconciler.
            settled = converged and not _resuming(change, observed)
            result = plan(observed, desired, target, self.policy, now, settled=settled)
            if (
                not has_values
                and observed.current is not None
                and (result.actions or result.direction is not Direction.NOOP)
            ):
                # Usage may matter (the policy's rules, the decision's record, the proof): read
                # the values and plan again. A pass that finds the customer on the desired plan
                # (the policy says NOOP without consulting usage) never needs them.
                observed = await self.observer.with_values(observed, now)
                values = dict(observed.values)
                result = plan(observed, desired, target, self.policy, now, settled=settled)
            if addons_matter(result) and observed.addons is None:
                # OpenMeter refuses to edit a subscription with add-ons: one read, only now
                observed = await self.observer.with_addons(observed)
            mode = getattr(self.policy, "addons", AddonMode.REFUSE)
            result = addon_gate(result, observed, target, mode, desired.change_id)
            if step == 0:
                change = await self._record_decision(change, result, observed)
                if converged and result.actions:
                    self._drift_found(change, observed, target, result, now)
            if result.convergence is not None:
                # When and why the plan record converges, as decided by the step that chose
                # it (later steps find its successor scheduled and decide nothing more).
                view = convergence_view(result)
                if change.details.get("convergence") != view:
                    change = self._stage(change, details={**change.details, "convergence": view})
            outcome.result = result
            if not result.actions:
                break
            action = result.actions[0]
            if last_failure is not None and _same_call(last_failure[0], action):
                err = last_failure[1]
                return await self._fail(
                    change, f"{action.kind} refused by OpenMeter ({err.status}): {err.detail}"
                )
            before = None
            cur = observed.current
            if isinstance(action, DeleteScheduled) and cur is not None:
                # Stored before the DELETE: a crash in between still knows the cancelation
                # it causes is ours to undo.
                change = self._stage(
                    change, durable=True, details={**change.details, "resuming": cur.id}
                )
            if isinstance(action, EditItems):
                before = await self._proof_before(change, observed, target)
                change = self._stage(
                    change, durable=True, details={**change.details, "proof_before": before}
                )
            state = self._passes[customer]
            if state.durable or not state.acted:
                # The decision, and any marker the mutation relies on, are stored first (this
                # also finds out, before acting, whether a newer request superseded ours).
                change = await self._commit_change(change)
            state.acted = True
            try:
                raw = await self._execute(action)
            except TransportError as exc:
                # Applied or not? Only the next observation can tell.
                ambiguous += 1
                change = await self._audit_outcome(change, action, "ambiguous", str(exc))
                if ambiguous > 2 or _may_still_be_running(exc):
                    # A timed-out mutation may still be running in OpenMeter: an observation
                    # now could miss it and send it again (both would apply). Look again after
                    # the retry backoff, once it has settled — no pass of this process looks
                    # earlier, whatever triggers it (a new request, an admin call).
                    if _may_still_be_running(exc):
                        self._settling[customer] = time.monotonic() + RETRY_BASE.total_seconds()
                    raise
                continue
            except ServerError as exc:
                ambiguous += 1
                change = await self._audit_outcome(change, action, "ambiguous", exc.detail)
                if ambiguous > 2:
                    raise
                continue
            except (Conflict, Forbidden, BadRequest, NotFound, PreconditionFailed) as exc:
                # Maybe our observation was stale; re-observe. The same call failing twice is
                # not explained by state: the change fails with OpenMeter's words.
                last_failure = (action, exc)
                change = await self._audit_outcome(change, action, "rejected", exc.detail)
                if self.hooks.on_action:
                    self.hooks.on_action(action.kind, "rejected")
                continue
            last_failure = None
            # The mutation's audit row, at once, with whatever this step staged.
            change = await self._commit_change(change)
            outcome.applied.append(
                {"action": action.kind, **action.request().as_dict(), "result": _summary(raw)}
            )
            if self.hooks.on_action:
                self.hooks.on_action(action.kind, "applied")
            if converged and self.hooks.on_drift_healed:
                self.hooks.on_drift_healed(action.kind)
            if self._after_action is not None:
                await self._after_action(action)
            if isinstance(action, EditItems) and before is not None:
                change, after_values = await self._proof_after(
                    change, observed.customer_id, before, outcome
                )
                values = {**(values or {}), **after_values}
                if outcome.usage_not_preserved:
                    return await self._fail(
                        change,
                        "usage_not_preserved: " + "; ".join(outcome.usage_not_preserved),
                        event="plan_change.usage_not_preserved",
                        outcome=outcome,
                    )
            if isinstance(action, EditItems):
                follow = (observed, observed.successor)
            elif isinstance(raw, SubscriptionChangeResponse):
                follow = (observed, mapping.to_observed_subscription(raw.next))
        assert result is not None
        return await self._finish(change, result, outcome, observed)

    def _drift_found(
        self,
        change: ChangeRecord,
        observed: Observed,
        target: Plan,
        result: PlanResult,
        now: datetime,
    ) -> None:
        """A converged change whose OpenMeter state moved: audit what was found (the current
        items against the mark stored at convergence) and count it."""
        cur = observed.current
        on_plan = (
            cur is not None
            and cur.plan is not None
            and (cur.plan.key, cur.plan.version) == (target.key, target.version)
            and cur.status is SubscriptionStatus.ACTIVE
            and observed.successor is None
        )
        kind = "items" if on_plan else "subscription"
        stored = ObservedMark.decode(change.observed_mark)
        self._note(
            change,
            "drift_found",
            now,
            detail=f"{kind} drifted from {target.ref} after convergence: {result.reason}",
            data={
                "kind": kind,
                "found": items_summary(cur, now),
                "expected_plan": str(target.ref),
                "mark_at_convergence": stored.encode() if stored else None,
                "mark_now": mark_of(cur).encode(),
                "actions": [a.request().as_dict() for a in result.actions],
            },
        )
        if self.hooks.on_drift_found:
            self.hooks.on_drift_found(kind)
        log.warning("drift_found", kind=kind, found=items_summary(cur, now))

    async def adopt(self, customer: str) -> ChangeRecord | None:
        """Re-derive a customer's desired state from the tags OpenMeter holds.

        The reconciler tags what it writes: the successor it schedules carries
        ``reconciler.plan/version/change`` in its metadata and the items it adds carry them in
        their entitlement metadata. A customer without desired state in our store (a lost or
        new database) gets it back from those tags; a customer without tags is left alone.
        """
        if await self.store.desired_for(customer) is not None:
            return None
        now = await self.clock.now()
        observed = await self.observer.observe(customer, now, values=False)
        found = _tags_of(observed, now)
        if found is None:
            return None
        tags, requested_at = found
        try:
            version: int | None = int(tags.get(META_VERSION, ""))
        except ValueError:
            version = None
        result = await self.store.submit_change(
            customer,
            tags[META_PLAN],
            version,
            requested_at,
            ChangeSource.SWEEP,
            tags.get(META_CHANGE) or f"adopted-{observed.customer_id}",
            now,
            customer_id=observed.customer_id,
        )
        log.info(
            "desired_state_adopted",
            customer=customer,
            plan=tags[META_PLAN],
            change=result.change.id,
        )
        return result.change

    # ------------------------------------------------------------------------------------------
    async def _execute(self, action: Action) -> Any:
        await self.pacer.yield_point()
        call = action.request()
        body = dict(call.body or {})
        c = self.client
        if isinstance(action, EditItems):
            resp: Any = await c.edit_subscription(
                action.subscription_id, body["customizations"], body["timing"]
            )
        elif isinstance(action, ScheduleChange):
            resp = await c.change_subscription(action.subscription_id, body)
        elif isinstance(action, DeleteScheduled):
            await c.delete_subscription(action.subscription_id)
            return {"status": 204}
        elif isinstance(action, Unschedule):
            resp = await c.unschedule_cancelation(action.subscription_id)
        elif isinstance(action, CreateSubscription):
            resp = await c.create_subscription(body)
        else:  # pragma: no cover - exhaustive union
            raise TypeError(action)
        return resp

    async def _record_decision(
        self, change: ChangeRecord, result: PlanResult, observed: Observed
    ) -> ChangeRecord:
        now = await self.clock.now()
        self._note(
            change,
            "plan",
            now,
            data={
                "state": result.state.value,
                "direction": result.direction.value,
                "timing": result.timing.value if result.timing else None,
                "rule": result.rule,
                "reason": result.reason,
                "from_plan": str(result.from_plan) if result.from_plan else None,
                "actions": [a.request().as_dict() for a in result.actions],
                "warnings": list(result.warnings),
                "refusal": result.refusal,
            },
        )
        if change.direction is not None or not result.actions:
            return change
        details = dict(change.details)
        details["entitlements_before"] = {
            k: _value_dict(v) for k, v in sorted(observed.values.items())
        }
        if result.warnings:
            details["warnings"] = list(result.warnings)
        return self._stage(
            change,
            direction=result.direction,
            timing=result.timing,
            rule=result.rule,
            effective_at=result.effective_at,
            converges_at=result.converges_at,
            details=details,
        )

    async def _proof_before(
        self, change: ChangeRecord, observed: Observed, target: Plan
    ) -> dict[str, Any]:
        """Usage of every metered feature of the current and target items, right before the
        edit. The observation that planned the edit has just read the current ones; only the
        target's features it did not cover are read now."""
        features = set(observed.values)
        for phase in target.phases:
            for card in phase.rate_cards:
                if card.entitlement and card.entitlement.type == "metered" and card.feature_key:
                    features.add(card.feature_key)
        values = dict(observed.values)
        missing = features - set(values)
        if missing:
            values.update(await self.observer.values(observed.customer_id, missing))
        return {k: _value_dict(v) for k, v in sorted(values.items())}

    async def _proof_after(
        self,
        change: ChangeRecord,
        customer_id: str,
        before: Mapping[str, Any],
        outcome: Outcome,
    ) -> tuple[ChangeRecord, dict[str, EntitlementValue]]:
        after_vals = await self.observer.values(customer_id, before.keys())
        after = {k: _value_dict(v) for k, v in sorted(after_vals.items())}
        lost = _usage_lost(before, after)
        outcome.usage_not_preserved.extend(lost)
        for feature in lost:
            if self.hooks.on_usage_not_preserved:
                self.hooks.on_usage_not_preserved(feature.split(":")[0])
        details = {k: v for k, v in change.details.items() if k != "proof_before"}
        details["proof"] = {"before": dict(before), "after": after, "usage_preserved": not lost}
        details["entitlements_after"] = after
        return self._stage(change, details=details), after_vals

    async def _one_customer_one_intent(
        self, change: ChangeRecord, observed: Observed, now: datetime
    ) -> tuple[ChangeRecord, Outcome | None]:
        """A portal may address one OpenMeter customer by id in one request and by key in
        another; the store then holds two desired states for it. They are reconciled under
        both claims, and the latest ``requested_at`` wins: the older one is superseded, so the
        two can never undo each other."""
        customer, cid = change.customer, observed.customer_id
        state = self._passes[customer]
        if change.customer_id is None:
            change = self._stage(change, customer_id=cid)
        elif state.claim.customer_id is None:
            state.customer_id = cid
        for rec in await self.store.aliases(cid):
            if rec.customer == customer:
                continue
            other_claim = await state.aliases.enter_async_context(self.store.claim(rec.customer))
            if other_claim is None:  # being worked on right now: look again shortly
                self._schedule(customer, now + RETRY_BASE)
                change = await self._commit_change(change)
                return change, Outcome(customer, change.id, change.status.value, "busy")
            other = other_claim.desired
            if other is None or other.status in (ChangeStatus.SUPERSEDED, ChangeStatus.FAILED):
                continue
            ours_newer = change.requested_at >= other.requested_at
            older, newer, newer_ref = (
                (other, change, customer) if ours_newer else (change, other, rec.customer)
            )
            reason = (
                f"superseded by change {newer.id} (requested {newer.requested_at.isoformat()}) "
                f"for the same OpenMeter customer {cid}, addressed as '{newer_ref}'"
            )
            if not ours_newer:
                self._schedule(customer, None)
                updated = self._stage(
                    change,
                    status=ChangeStatus.SUPERSEDED,
                    last_error=reason,
                    next_attempt_at=None,
                )
                updated = await self._commit_change(updated)
                log.warning(
                    "alias_superseded", superseded=older.id, winner=newer.id, customer_id=cid
                )
                return updated, Outcome(
                    customer, change.id, "superseded", "superseded", error=reason
                )
            await self.store.update_change(
                older.id, status=ChangeStatus.SUPERSEDED, last_error=reason, next_attempt_at=None
            )
            log.warning("alias_superseded", superseded=older.id, winner=newer.id, customer_id=cid)
        return change, None

    async def _clear_resuming(self, change: ChangeRecord, observed: Observed) -> ChangeRecord:
        if change.details.get("resuming") is None or _resuming(change, observed):
            return change
        details = {k: v for k, v in change.details.items() if k != "resuming"}
        return self._stage(change, details=details)

    async def _check_pending_proof(
        self, change: ChangeRecord, observed: Observed, outcome: Outcome
    ) -> ChangeRecord:
        """A crash between an edit and its after-read leaves ``proof_before`` behind; finish the
        proof from the next observation so no edit goes unverified."""
        before = change.details.get("proof_before")
        if not before or observed.current is None:
            return change
        change, _ = await self._proof_after(change, observed.customer_id, before, outcome)
        return change

    async def _finish(
        self, change: ChangeRecord, result: PlanResult, outcome: Outcome, observed: Observed
    ) -> Outcome:
        now = await self.clock.now()
        outcome.state = result.state.value
        outcome.result = result
        if result.state is State.REFUSED:
            return await self._fail(change, result.refusal or result.reason, outcome=outcome)
        # What OpenMeter shows once settled (converged, or a cancelation respected): the sweep
        # compares it with the customer listing to find drift (reconciler.domain.drift).
        settled_mark = (
            mark_of(observed.current).encode()
            if result.state in (State.CONVERGED, State.RESPECTED)
            else None
        )
        if result.state is State.RESPECTED:
            self._schedule(change.customer, None)
            if change.observed_mark != settled_mark:
                change = self._stage(change, observed_mark=settled_mark)
            await self._commit_change(change)
            outcome.status = change.status.value
            log.warning("cancelation_respected", reason=result.reason)
            return outcome
        events: list[NewEvent] = []
        next_check: datetime | None
        if result.state is State.CONVERGED:
            status = ChangeStatus.CONVERGED
            next_check = None
        elif result.state is State.WAITING:
            status = (
                ChangeStatus.APPLIED
                if (result.timing or change.timing) is Timing.IMMEDIATE
                else ChangeStatus.SCHEDULED
            )
            # A deferred plan-record change is looked at again when it may be scheduled.
            when = result.next_check_at or result.converges_at or now
            next_check = max(when, now) + AFTER_BOUNDARY
        else:  # still acting after max_steps: come back soon
            status = ChangeStatus.PENDING
            next_check = now + _backoff(change.attempts + 1)
        details = dict(change.details)
        if status is ChangeStatus.APPLIED and status is not change.status:
            details["credit_due"] = await self._credit_due(observed)
        if status is not change.status and status is not ChangeStatus.PENDING:
            n = _next_transition(details)
            events.append(self._event(change, status, result, n, details=details))
        updated = self._stage(
            change,
            status=status,
            last_error=None,
            next_attempt_at=next_check,
            converges_at=result.converges_at if status is not ChangeStatus.CONVERGED else now,
            details=details,
            observed_mark=settled_mark,
        )
        self._schedule(change.customer, next_check)
        transition = status is not change.status
        updated = await self._commit_change(updated, events)
        if self.hooks.on_status and transition:
            self.hooks.on_status(status.value)
        outcome.status = updated.status.value
        log.info(
            "reconciled",
            status=status.value,
            state=result.state.value,
            applied=[a["action"] for a in outcome.applied],
        )
        return outcome

    async def _credit_due(self, observed: Observed) -> dict[str, Any] | None:
        """What the customer is owed for in-advance fees already invoiced (issue 13)."""
        sub = observed.current
        if sub is None:
            return None
        invoiced = await read_invoiced(self.client, observed.customer_id, [sub.id])
        return credit_due_view(sub, observed_versions(sub), invoiced)

    def _event(
        self,
        change: ChangeRecord,
        status: ChangeStatus,
        result: PlanResult,
        n: int,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> NewEvent:
        details = change.details if details is None else details
        kind = f"plan_change.{status.value}"
        payload: dict[str, Any] = {
            "change_id": change.id,
            "customer": change.customer,
            "customer_id": change.customer_id,
            "plan": {"key": change.plan_key, "version": change.plan_version},
            "direction": (change.direction or result.direction).value,
            "timing": (change.timing or result.timing or Timing.IMMEDIATE).value,
            "effective_at": _iso(change.effective_at or result.effective_at),
            "converges_at": _iso(result.converges_at),
        }
        if details.get("convergence") is not None:
            payload["convergence"] = details["convergence"]
        if status is ChangeStatus.APPLIED:
            payload["credit_due"] = details.get("credit_due")
            payload["entitlements"] = {
                "before": details.get("entitlements_before"),
                "after": details.get("entitlements_after"),
            }
        return NewEvent(type=kind, payload=payload, id=_event_id(change.id, n, kind))

    async def _fail(
        self,
        change: ChangeRecord,
        error: str,
        *,
        event: str = "plan_change.failed",
        outcome: Outcome | None = None,
    ) -> Outcome:
        now = await self.clock.now()
        payload = {
            "change_id": change.id,
            "customer": change.customer,
            "plan": {"key": change.plan_key, "version": change.plan_version},
            "error": error,
        }
        details = dict(change.details)
        n = _next_transition(details)
        kinds = dict.fromkeys([event, "plan_change.failed"])
        events = [NewEvent(type=k, payload=payload, id=_event_id(change.id, n, k)) for k in kinds]
        change = self._stage(
            change,
            status=ChangeStatus.FAILED,
            last_error=error,
            next_attempt_at=None,
            details=details,
        )
        self._schedule(change.customer, None)
        self._note(change, "failed", now, detail=error)
        await self._commit_change(change, events)
        if self.hooks.on_status:
            self.hooks.on_status(ChangeStatus.FAILED.value)
        log.error("change_failed", error=error)
        out = outcome or Outcome(change.customer, change.id, None, "failed")
        out.status = ChangeStatus.FAILED.value
        out.state = "failed"
        out.error = error
        return out

    async def _retry_later(self, change: ChangeRecord, exc: OpenMeterError) -> Outcome:
        now = await self.clock.now()
        attempts = change.attempts + 1
        retry_at = now + _backoff(attempts)
        detail = f"{type(exc).__name__}: {exc.detail or exc}"
        change = self._stage(change, attempts=attempts, last_error=detail, next_attempt_at=retry_at)
        self._schedule(change.customer, retry_at)
        await self._commit_change(change)
        log.warning("retry_later", error=detail, attempts=attempts, retry_at=retry_at.isoformat())
        return Outcome(change.customer, change.id, change.status.value, "retry", error=detail)

    async def _audit_outcome(
        self, change: ChangeRecord, action: Action, outcome: str, detail: str | None
    ) -> ChangeRecord:
        """Record a mutation that failed or may not have been applied, with its call's row."""
        call = action.request()
        self._note(
            change,
            outcome,
            await self.clock.now(),
            method=call.method,
            path=call.path,
            detail=detail,
            data={"action": action.kind},
        )
        return await self._commit_change(change)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _resuming(change: ChangeRecord, observed: Observed) -> bool:
    """True while the current subscription is canceled because we deleted its successor."""
    cur = observed.current
    return (
        cur is not None
        and cur.status is SubscriptionStatus.CANCELED
        and change.details.get("resuming") == cur.id
    )


def _next_transition(details: dict[str, Any]) -> int:
    """Count the change's status transitions (kept in its details): event ids stay unique when
    a converged change is healed and passes through a status again."""
    n = int(details.get("transitions", 0)) + 1
    details["transitions"] = n
    return n


def _event_id(change_id: str, n: int, kind: str) -> str:
    """Stable event id: written once, in the transaction of the transition it reports."""
    return f"evt_{change_id}_{n}_{kind.rsplit('.', 1)[-1]}"


def _tags_of(observed: Observed, now: datetime) -> tuple[Mapping[str, str], datetime] | None:
    """The newest reconciler tags visible in OpenMeter, and when they were written."""
    succ = observed.successor
    if succ is not None and succ.metadata.get(META_PLAN):
        return succ.metadata, succ.active_from if succ.active_from < now else now
    cur = observed.current
    if cur is None:
        return None
    phase = cur.phase_at(now)
    tagged = [i for i in (phase.items if phase else ()) if i.provenance.get(META_PLAN)]
    if tagged:
        latest = max(tagged, key=lambda i: i.active_from)
        return latest.provenance, latest.active_from
    if cur.metadata.get(META_PLAN):
        return cur.metadata, cur.active_from
    return None


def _usage_lost(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    lost = []
    for feature, b in before.items():
        a = after.get(feature)
        if not b or not a or b.get("usage") is None:
            continue
        if a.get("usage") is None or Decimal(str(a["usage"])) < Decimal(str(b["usage"])):
            lost.append(f"{feature}: usage {b['usage']} -> {a.get('usage')}")
    return lost


def _summary(resp: Any) -> Any:
    if resp is None:
        return None
    dump = getattr(resp, "model_dump", None)
    if dump is None:
        return resp
    data: Any = dump(by_alias=True, mode="json", exclude_none=True)
    if isinstance(data, dict) and "current" in data and "next" in data:
        return {"current": _brief(data["current"]), "next": _brief(data["next"])}
    return _brief(data)


def _brief(d: Any) -> Any:
    if not isinstance(d, dict):
        return d
    keys = ("id", "status", "plan", "activeFrom", "activeTo")
    return {k: d[k] for k in keys if k in d}


async def _charges(
    engine: Engine, observed: Observed, result: PlanResult, target: Plan, now: datetime
) -> dict[str, Any]:
    """The preview's ``charges``: this period's quote now and with the change, and the
    difference (``reconciler.engine.quote``); ``{"error": ...}`` when it cannot be quoted."""
    from reconciler.engine.quote import QuoteError, Quoter, charges_document

    if observed.current is None:
        return {"error": "no current subscription: nothing to quote"}
    try:
        charges = await Quoter(engine).charges(observed, result, target, now)
    except QuoteError as exc:
        return {"error": str(exc)}
    except OpenMeterError as exc:  # e.g. a meter query refused: the dry run still answers
        return {"error": f"cannot read usage from OpenMeter: {exc.detail or exc}"}
    return charges_document(charges)


class Queries:
    """Read-only views built on the same observation and planner as ``Engine.reconcile``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def preview(
        self, customer: str, plan_key: str, plan_version: int | None = None
    ) -> dict[str, Any]:
        e = self.engine
        target = await e.catalog.get(plan_key, plan_version)
        now = await e.clock.now()
        observed = await e.observer.observe(customer, now)
        desired = Desired("preview", target.key, target.version, now)
        result = plan(observed, desired, target, e.policy, now)
        if addons_matter(result):
            observed = await e.observer.with_addons(observed)
            mode = getattr(e.policy, "addons", AddonMode.REFUSE)
            result = addon_gate(result, observed, target, mode, desired.change_id)
        doc = preview_document(observed, result, target, now)
        doc["charges"] = await _charges(e, observed, result, target, now)
        return doc

    async def status(self, customer: str, *, audit_limit: int = 20) -> dict[str, Any]:
        e = self.engine
        now = await e.clock.now()
        observed = await e.observer.observe(customer, now)
        change = await e.store.desired_for(customer)
        if change is None and observed.customer_key and observed.customer_key != customer:
            change = await e.store.desired_for(observed.customer_key)
        if change is None:
            change = await e.store.desired_for(observed.customer_id)
        convergence = "no_desired_state"
        target_doc: dict[str, Any] | None = None
        if change is not None:
            target_doc = {
                "change_id": change.id,
                "plan": change.plan_key,
                "plan_version": change.plan_version,
                "status": change.status.value,
                "requested_at": _iso(change.requested_at),
                "effective_at": _iso(change.effective_at),
                "converges_at": _iso(change.converges_at),
                "last_error": change.last_error,
            }
            if change.details.get("credit_due") is not None:
                target_doc["credit_due"] = change.details["credit_due"]
            convergence = change.status.value
            try:
                target = await e.catalog.get(change.plan_key, change.plan_version)
            except UnknownPlan as exc:
                convergence = f"unknown plan: {exc}"
            else:
                result = plan(
                    observed,
                    change.to_desired(),
                    target,
                    e.policy,
                    now,
                    settled=change.status is ChangeStatus.CONVERGED,
                )
                convergence = result.state.value
                target_doc["pending_actions"] = [a.request().as_dict() for a in result.actions]
                target_doc["convergence"] = (
                    convergence_view(result)
                    if result.convergence is not None
                    else change.details.get("convergence")
                )
        audit = await e.store.list_audit(
            customer=change.customer if change else customer, limit=audit_limit
        )
        cur = observed.current
        return {
            "customer": customer,
            "customer_id": observed.customer_id,
            "customer_key": observed.customer_key,
            "observed_at": _iso(now),
            "plan_on_record": str(cur.plan) if cur and cur.plan else None,
            "subscription": subscription_view(cur, now),
            "scheduled_successor": subscription_view(observed.successor, now),
            "entitlements": values_view(observed.values),
            "desired": target_doc,
            "convergence": convergence,
            "recent_audit": [
                {
                    "at": _iso(a.at),
                    "kind": a.kind.value,
                    "operation": a.operation,
                    "method": a.method,
                    "path": a.path,
                    "status": a.status,
                    "detail": a.detail,
                }
                for a in audit
            ],
        }
