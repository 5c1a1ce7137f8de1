"""The reconcile loop for one customer: observe, plan, apply one action, repeat.

Contract (the same as controller-runtime's ``Reconcile``): ``reconcile(customer)`` may be called
any number of times, at any moment, after any crash; it reads the desired state from the store
and the observed state from OpenMeter and does only what the difference requires. A mutation
whose outcome is unknown (timeout, dropped connection, 5xx) is never repeated blindly: the next
observation shows whether it was applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any

import httpx

from reconciler.domain.actions import (
    Action,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
)
from reconciler.domain.addons import AddonMode, addons_matter
from reconciler.domain.addons import gate as addon_gate
from reconciler.domain.drift import mark_of
from reconciler.domain.model import (
    Desired,
    Direction,
    EntitlementValue,
    Observed,
    ObservedSubscription,
    Plan,
    SubscriptionStatus,
)
from reconciler.domain.planner import PlanResult, State, plan
from reconciler.domain.policy import PolicyError
from reconciler.engine import proofs
from reconciler.engine.aliases import one_customer_one_intent
from reconciler.engine.audit import AuditWriter
from reconciler.engine.catalog import UnknownPlan
from reconciler.engine.collaborators import Collaborators
from reconciler.engine.decisions import (
    credit_due,
    drift_found,
    drift_kind,
    execute,
    reads_invoices,
    record_decision,
)
from reconciler.engine.observe import plan_metered_features
from reconciler.engine.passes import Pass
from reconciler.engine.results import AppliedCall, Hooks, Outcome, OutcomeState
from reconciler.engine.transitions import (
    RETRY_BASE,
    backoff,
    failure_events,
    next_transition,
    status_after,
    status_event,
)
from reconciler.engine.views import (
    convergence_view,
    response_summary,
)
from reconciler.logs import bound, get_logger
from reconciler.openmeter import mapping
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
from reconciler.openmeter.models import Subscription, SubscriptionChangeResponse
from reconciler.store.errors import StaleChangeError
from reconciler.store.store import Claim
from reconciler.store.types import (
    ChangeRecord,
    ChangeStatus,
    NewEvent,
)

log = get_logger("reconciler.engine")


def _may_still_be_running(exc: TransportError) -> bool:
    """A mutation whose response timed out was sent and may still be in progress server-side
    (a dropped connection, by contrast, means the server has finished with it)."""
    return exc.ambiguous and isinstance(exc.cause, httpx.TimeoutException)


def _pipelined(
    result: PlanResult, edit: EditItems, observed: Observed, answer: Any
) -> ScheduleChange | None:
    """The plan's next action after ``edit``, to send on the edit's answer without observing
    again: a change scheduled on the same subscription, when the answer shows that subscription
    as the plan saw it (still active, no end, nothing scheduled after it).

    An in-place edit changes the subscription's items, nothing the change's request depends on
    (its plan, the billing boundary, the phase it starts in), and OpenMeter applies an edit's
    operations together or not at all; the edit's answer is OpenMeter's own word on the rest.
    So the plan made before the edit still holds, and the round trip of observing it again is
    saved. What the edit left is still read (the re-read and the proof's after-read run while
    the change is sent) and the next step plans on it: an edit made meanwhile by someone else
    is healed from there, level-triggered."""
    if len(result.actions) < 2 or result.actions[0] is not edit:
        return None
    nxt = result.actions[1]
    cur = observed.current
    if not isinstance(nxt, ScheduleChange) or cur is None or observed.successor is not None:
        return None
    if not isinstance(answer, Subscription) or nxt.subscription_id != edit.subscription_id:
        return None
    return (
        nxt
        if answer.id == cur.id == edit.subscription_id
        and cur.status is SubscriptionStatus.ACTIVE
        and cur.active_to is None
        and answer.status == "active"
        and answer.active_to is None
        and not (answer.annotations or {}).get("subscription.superseding.id")
        else None
    )


def _same_call(a: Action, b: Action) -> bool:
    return a.request().as_dict() == b.request().as_dict()


class Engine:
    def __init__(
        self,
        c: Collaborators,
        *,
        hooks: Hooks | None = None,
        max_steps: int = 8,
        after_action: Callable[[Action], Awaitable[None]] | None = None,
        call_audit: AuditWriter | None = None,
    ) -> None:
        self.c = c
        self.client = c.client
        self.store = c.store
        self.policy = c.policy
        self.clock = c.clock
        self.catalog = c.catalog
        self.pacer = c.pacer
        self.observer = c.observer
        self.hooks = hooks or Hooks()
        self.max_steps = max_steps
        self._after_action = after_action  # test seam: crash injection right after a mutation
        self.call_audit = call_audit  # the client's audit observer: its rows go with ours
        self._passes: dict[str, Pass] = {}
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
                return Outcome(customer, None, None, OutcomeState.BUSY)
            self._passes[customer] = Pass(self.store, self.pacer, self.call_audit, claim, aliases)
            if self.call_audit is not None:
                self.call_audit.bind(customer)
            try:
                return await self._reconcile_claimed(customer, claim)
            except StaleChangeError as exc:
                # A newer request superseded this one while we worked on it (the store keeps
                # superseded final): nothing to record, and no event for it; the worker runs
                # the customer again for the newer request.
                log.info("change_superseded_while_reconciling", change=exc.change_id)
                return Outcome(customer, exc.change_id, exc.actual, OutcomeState.SUPERSEDED)
            finally:
                await self._passes.pop(customer).close(customer)

    # -- staged writes --------------------------------------------------------------------------

    def _stage(self, change: ChangeRecord, *, durable: bool = False, **fields: Any) -> ChangeRecord:
        return self._passes[change.customer].stage(change, durable=durable, **fields)

    def _note(self, change: ChangeRecord, operation: str, at: datetime, **fields: Any) -> None:
        self._passes[change.customer].note(change, operation, at, **fields)

    def _schedule(self, customer: str, at: datetime | None) -> None:
        self._passes[customer].schedule(at)

    async def _commit(
        self, change: ChangeRecord | None, customer: str, events: list[NewEvent] | None = None
    ) -> ChangeRecord | None:
        return await self._passes[customer].commit(change, customer, events)

    async def _commit_change(
        self, change: ChangeRecord, events: list[NewEvent] | None = None
    ) -> ChangeRecord:
        return await self._passes[change.customer].commit_change(change, events)

    async def _reconcile_claimed(self, customer: str, claim: Claim) -> Outcome:
        change = claim.desired
        until = self._settling.get(customer)
        if until is not None:
            wait = until - time.monotonic()
            if wait > 0:
                # Not even an observation yet: it could miss the mutation still running.
                self._schedule(customer, await self.clock.now() + timedelta(seconds=wait))
                await self._commit(None, customer)
                return Outcome(customer, change.id if change else None, None, OutcomeState.SETTLING)
            del self._settling[customer]
        if change is None:
            self._schedule(customer, None)
            await self._commit(None, customer)
            return Outcome(customer, None, None, OutcomeState.NO_DESIRED_STATE)
        if change.status in (ChangeStatus.FAILED, ChangeStatus.SUPERSEDED):
            self._schedule(customer, None)
            await self._commit(None, customer)
            return Outcome(
                customer,
                change.id,
                change.status.value,
                OutcomeState.NOT_OPEN,
                error=change.last_error,
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
        # A target plan not in the catalog's cache (a new process, or the active version's
        # entry expired) is read with the customer's listing, not before it: one round trip
        # less on the way to an edit. The listing is the step-0 observation's first read.
        listing: asyncio.Task[list[Subscription]] | None = None
        if self.catalog.cached(change.plan_key, change.plan_version) is None:
            listing = asyncio.ensure_future(self._listing(customer))
        try:
            target = await self.catalog.get(change.plan_key, change.plan_version)
        except BaseException:
            if listing is not None:
                listing.cancel()
            raise
        if change.plan_version is None:
            change = self._stage(change, plan_version=target.version)
        desired = change.to_desired()
        converged = change.status is ChangeStatus.CONVERGED
        outcome = Outcome(customer, change.id, change.status.value, OutcomeState.ACTING)
        last_failure: tuple[Action, OpenMeterError] | None = None
        ambiguous = 0
        result: PlanResult | None = None
        # Within one pass the customer's identity does not change, and entitlement values are
        # read once and then after every edit (the proof): later steps reuse the newest ones.
        identity: tuple[str, str | None] | None = None
        values: dict[str, EntitlementValue] | None = None
        # After an edit or a scheduled change, the next step's observation reads only the
        # current subscription (``Observer.follow``); anything unexpected means a full one.
        # That read is started right after the mutation (``soon``, ``read_current_soon``).
        follow: tuple[Observed, ObservedSubscription | None] | None = None
        soon: Awaitable[ObservedSubscription | None] | None = None
        # After our own scheduled change: OpenMeter's answer (its current subscription).
        answered: Subscription | None = None
        target_features = plan_metered_features(target)
        guessed: list[str] = []
        # An edit's next action sent on the edit's answer (``_pipelined``), and the edit's proof
        # still being read meanwhile (its ``proof_before`` and the after-read, started at once).
        queued: Action | None = None
        proof_of: tuple[str, Mapping[str, Any]] | None = None  # (customer id, proof_before)
        proof_read: Awaitable[dict[str, EntitlementValue] | None] | None = None
        # The re-read of the edited subscription, started with the after-read.
        pending: Awaitable[ObservedSubscription | None] | None = None

        async def prefetch(listed: tuple[str, int] | None) -> set[str] | None:
            if listed == (target.key, target.version):
                return None  # on the target already: most likely nothing to do
            guessed.append("yes")
            return target_features | (await self._plan_features(*listed) if listed else set())

        for step in range(self.max_steps):
            now = await self.clock.now()
            if queued is not None:
                # The plan's next action, sent on the edit's answer (``_pipelined``).
                action, queued = queued, None
            else:
                if proof_read is not None and proof_of is not None:
                    # The proof of an edit whose next action was sent on its answer.
                    change, values = await self._take_proof(
                        change, values, *proof_of, proof_read, outcome
                    )
                    proof_read = proof_of = pending = None
                    if outcome.usage_not_preserved:
                        return await self._usage_lost(change, outcome)
                observed_or_none = None
                if (
                    follow is not None
                    and values is not None
                    and answered is not None
                    and follow[1] is not None
                ):
                    # After our own change: its answer, if planning on it sends nothing.
                    guess = self.observer.answered(follow[0], now, values, follow[1], answered)
                    if guess is not None and self._plans_nothing(
                        guess, change, desired, target, now, converged
                    ):
                        observed_or_none = guess
                    answered = None
                if observed_or_none is None:
                    # Whatever is read next, a mutation's staged audit row is committed first.
                    change = await self._settle(change)
                if follow is not None and values is not None:
                    if observed_or_none is None:
                        observed_or_none = await self.observer.follow(
                            follow[0], now, values, follow[1], soon
                        )
                    follow = None
                # Entitlement values are read only once a decision may depend on them (below).
                has_values = observed_or_none is not None or values is not None
                # A new request is about to be acted on: its values are read with the current
                # subscription, not after it (one round trip less before the mutation).
                fresh = step == 0 and change.status is ChangeStatus.PENDING
                guessed.clear()
                observed = observed_or_none or await self.observer.observe(
                    customer,
                    now,
                    identity=identity,
                    known_values=values,
                    values=False,
                    prefetch=prefetch if fresh else None,
                    listing=listing,
                )
                listing = None
                has_values = has_values or bool(guessed and observed.current is not None)
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
                    change, stop = await one_customer_one_intent(
                        self.store, self._passes[customer], change, observed, now, RETRY_BASE
                    )
                    if stop is not None:
                        return stop
                change = await self._check_pending_proof(change, observed, outcome)
                cleared = proofs.without_resuming(change, observed)
                if cleared is not None:
                    change = self._stage(change, details=cleared)
                # A cancelation left behind by our own deletion of a successor (marked durably
                # before the DELETE, so a crash in between is covered) is ours to undo, not a
                # cancelation made outside the reconciler.
                settled = converged and not proofs.resuming(change, observed)
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
                    p = self._passes[customer]
                    change = record_decision(p, change, result, observed, await self.clock.now())
                    if converged and result.actions:
                        drift_found(p, change, observed, target, result, now)
                        if self.hooks.on_drift_found:
                            self.hooks.on_drift_found(drift_kind(observed, target))
                if result.convergence is not None:
                    # When and why the plan record converges, as decided by the step that chose
                    # it (later steps find its successor scheduled and decide nothing more).
                    view = convergence_view(result)
                    if change.details.get("convergence") != view:
                        change = self._stage(
                            change, details={**change.details, "convergence": view}
                        )
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
                before = await proofs.proof_before(self.observer, observed, target)
                change = self._stage(
                    change, durable=True, details={**change.details, "proof_before": before}
                )
            state = self._passes[customer]
            if state.durable or state.owed or not state.acted:
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
            soon = None
            if not isinstance(raw, SubscriptionChangeResponse) and (
                isinstance(action, (EditItems, ScheduleChange))
            ):
                # The next step's read, and the proof's after-read of an edit, start now: they
                # overlap the mutation's commit below (and the action sent on the edit's answer).
                soon = self.observer.read_current_soon(observed)
            if isinstance(action, EditItems) and before is not None:
                proof_read = self.observer.values_soon(observed.customer_id, before.keys())
            if isinstance(raw, SubscriptionChangeResponse):
                # The next step plans on the change's answer and, most often, calls nothing
                # before the pass ends: the audit row goes with the next commit, which comes
                # before any other call (``_settle``) or ends the pass.
                self._passes[customer].owed = True
            else:
                # The mutation's audit row, at once, with whatever this step staged.
                change = await self._commit_change(change)
            call = action.request()
            outcome.applied.append(
                AppliedCall(action.kind, call.method, call.path, call.body, response_summary(raw))
            )
            if self.hooks.on_action:
                self.hooks.on_action(action.kind, "applied")
            if converged and self.hooks.on_drift_healed:
                self.hooks.on_drift_healed(action.kind)
            if self._after_action is not None:
                await self._after_action(action)
            if isinstance(action, EditItems) and before is not None:
                last_step = step + 1 >= self.max_steps
                queued = (
                    None
                    if last_step or result is None
                    else _pipelined(result, action, observed, raw)
                )
                if queued is not None:
                    # Sent next without observing again; the proof and the re-read finish
                    # after it (below, on the queued action's answer).
                    proof_of, pending, soon = (observed.customer_id, before), soon, None
                    continue
                change, values = await self._take_proof(
                    change, values, observed.customer_id, before, proof_read, outcome
                )
                proof_read = None
                if outcome.usage_not_preserved:
                    return await self._usage_lost(change, outcome)
            elif proof_of is not None and proof_read is not None:
                # The action sent on an edit's answer has been answered: the edit's proof, then
                # what to plan on next (the re-read made after the edit, and this answer).
                change, values = await self._take_proof(
                    change, values, *proof_of, proof_read, outcome
                )
                proof_read = proof_of = None
                if outcome.usage_not_preserved:
                    return await self._usage_lost(change, outcome)
                if isinstance(raw, SubscriptionChangeResponse) and pending is not None:
                    follow, answered, soon = self.observer.after_change(
                        observed, now, values, await pending, raw
                    )
                pending = None
                continue
            if isinstance(raw, SubscriptionChangeResponse):
                # the next step plans on the change's answer (``Observer.answered``)
                answered = raw.current
            if isinstance(action, EditItems):
                follow = (observed, observed.successor)
            elif isinstance(raw, SubscriptionChangeResponse):
                follow = (observed, mapping.to_observed_subscription(raw.next))
        assert result is not None
        return await self._finish(change, result, outcome, observed)

    # ------------------------------------------------------------------------------------------
    async def _settle(self, change: ChangeRecord) -> ChangeRecord:
        """Commit a mutation's staged audit row before the next OpenMeter call."""
        if self._passes[change.customer].owed:
            return await self._commit_change(change)
        return change

    def _plans_nothing(
        self,
        observed: Observed,
        change: ChangeRecord,
        desired: Desired,
        target: Plan,
        now: datetime,
        converged: bool,
    ) -> bool:
        """Whether the planner, on ``observed``, has nothing left to send."""
        settled = converged and not proofs.resuming(change, observed)
        return not plan(observed, desired, target, self.policy, now, settled=settled).actions

    async def _listing(self, customer: str) -> list[Subscription]:
        await self.pacer.yield_point()
        return await self.client.list_customer_subscriptions(customer)

    async def _plan_features(self, key: str, version: int) -> set[str]:
        """The metered features of a plan version (cached), for the prefetch's guess; a plan
        that cannot be read guesses nothing (the expanded subscription fills the gap)."""
        try:
            return plan_metered_features(await self.catalog.get(key, version))
        except (UnknownPlan, OpenMeterError):
            return set()

    async def _execute(self, action: Action) -> Any:
        await self.pacer.yield_point()
        return await execute(self.client, action)

    async def _proof_after(
        self, change: ChangeRecord, customer_id: str, before: Mapping[str, Any], outcome: Outcome
    ) -> tuple[ChangeRecord, dict[str, EntitlementValue]]:
        details, after_values = await proofs.proof_after(
            self.observer, self.hooks, change, customer_id, before, outcome
        )
        return self._stage(change, details=details), after_values

    async def _take_proof(
        self,
        change: ChangeRecord,
        values: Mapping[str, EntitlementValue] | None,
        customer_id: str,
        before: Mapping[str, Any],
        read: Awaitable[dict[str, EntitlementValue] | None] | None,
        outcome: Outcome,
    ) -> tuple[ChangeRecord, dict[str, EntitlementValue]]:
        """Finish an edit's proof with the after-read started right after the edit; when that
        read failed, read again now (an error then retries the pass, ``proof_before`` stays).
        Returns the change and ``values`` updated with the values read after the edit."""
        got = await read if read is not None else None
        if got is None:
            change, got = await self._proof_after(change, customer_id, before, outcome)
        else:
            change = self._stage(
                change, details=proofs.finished(self.hooks, change, before, got, outcome)
            )
        return change, {**(values or {}), **got}

    async def _usage_lost(self, change: ChangeRecord, outcome: Outcome) -> Outcome:
        return await self._fail(
            change,
            "usage_not_preserved: " + "; ".join(outcome.usage_not_preserved),
            event="plan_change.usage_not_preserved",
            outcome=outcome,
        )

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
        outcome.state = OutcomeState(result.state.value)
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
        status, next_check = status_after(result, change, now)
        details = dict(change.details)
        if status is ChangeStatus.APPLIED and status is not change.status:
            if reads_invoices(observed):
                change = await self._settle(change)
            details["credit_due"] = await credit_due(self.client, observed)
        if status is not change.status and status is not ChangeStatus.PENDING:
            n = next_transition(details)
            events.append(status_event(change, status, result, n, details))
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
            applied=[a.action for a in outcome.applied],
        )
        return outcome

    async def _fail(
        self,
        change: ChangeRecord,
        error: str,
        *,
        event: str = "plan_change.failed",
        outcome: Outcome | None = None,
    ) -> Outcome:
        now = await self.clock.now()
        details = dict(change.details)
        events = failure_events(change, error, event, next_transition(details))
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
        out = outcome or Outcome(change.customer, change.id, None, OutcomeState.FAILED)
        out.status = ChangeStatus.FAILED.value
        out.state = OutcomeState.FAILED
        out.error = error
        return out

    async def _retry_later(self, change: ChangeRecord, exc: OpenMeterError) -> Outcome:
        now = await self.clock.now()
        attempts = change.attempts + 1
        retry_at = now + backoff(attempts)
        detail = f"{type(exc).__name__}: {exc.detail or exc}"
        change = self._stage(change, attempts=attempts, last_error=detail, next_attempt_at=retry_at)
        self._schedule(change.customer, retry_at)
        await self._commit_change(change)
        log.warning("retry_later", error=detail, attempts=attempts, retry_at=retry_at.isoformat())
        return Outcome(
            change.customer, change.id, change.status.value, OutcomeState.RETRY, error=detail
        )

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
