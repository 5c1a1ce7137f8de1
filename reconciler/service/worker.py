"""The reconcile loop of ``reconciler run``: a work queue woken by requests, due-work polling,
and (on the leader replica) sweeps over OpenMeter's customers.

* **Requests** (webhooks, admin API) call :meth:`Worker.kick` after the change is stored: the
  customer is reconciled at once, not at the next poll.
* **Due work** (retries with backoff, changes waiting for a billing boundary) is polled every
  ``due_poll_seconds`` with ``store.claim_due(now)`` (only then: a kick starts its customer
  without querying the store for due work).
* **Sweeps** (leader only, every ``sweep_interval_seconds``) list OpenMeter's customers page by
  page and reconcile those whose desired state is not what OpenMeter shows (a change made by hand,
  a boundary passed while the reconciler was down, a scheduled change that vanished, items
  PATCHed by hand on a converged customer — seen through the observed mark stored at
  convergence, ``reconciler.domain.drift``). The nightly full sweep also reads every converged
  customer's items and adopts customers without desired state from the tags OpenMeter holds.

Every reconcile goes through ``Engine.reconcile``, which claims the customer in the store, so one
customer is never worked on twice at once, in this process or across replicas. The schedule lives
in memory (APScheduler) and is rebuilt at start; everything durable is in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from reconciler.domain.drift import NO_SUBSCRIPTION, ObservedMark, mark_of, subscription_token
from reconciler.engine import OutcomeState, adopt
from reconciler.engine.observe import pick
from reconciler.engine.pacing import background
from reconciler.events import EventDeliverer
from reconciler.logs import bound, get_logger
from reconciler.openmeter import mapping
from reconciler.openmeter.models import CustomerListing, SubscriptionListing
from reconciler.runtime import Runtime
from reconciler.service.metrics import Metrics
from reconciler.store import ChangeStatus, DesiredSummary, Leadership

log = get_logger("reconciler.service.worker")

SWEEP_PAGE_SIZE = 500
ERROR_BACKOFF_S = (1.0, 60.0)  # in-memory backoff for a customer whose reconcile raised
T = TypeVar("T")


def _plan_of(sub: SubscriptionListing | None) -> tuple[str, int] | None:
    if sub is None or sub.plan is None:
        return None
    return sub.plan.key, sub.plan.version


class DesiredView(Protocol):
    """What ``needs_reconcile`` reads of a desired request (a ``ChangeRecord`` or the sweep's
    ``DesiredSummary``)."""

    @property
    def plan_key(self) -> str: ...
    @property
    def plan_version(self) -> int | None: ...
    @property
    def status(self) -> ChangeStatus: ...
    @property
    def converges_at(self) -> datetime | None: ...
    @property
    def observed_mark(self) -> str | None: ...


def _matches(change: DesiredView, sub: SubscriptionListing | None) -> bool:
    got = _plan_of(sub)
    if got is None or got[0] != change.plan_key:
        return False
    return change.plan_version is None or got[1] == change.plan_version


SUPERSEDING = "subscription.superseding.id"


class Check(StrEnum):
    """The sweep's verdict on one listed customer."""

    IN_SYNC = "in_sync"
    RECONCILE = "reconcile"
    READ_ITEMS = "read_items"  # one read of the current subscription decides (item drift)


def sweep_check(
    change: DesiredView, subs: Sequence[SubscriptionListing], now: datetime, *, full: bool = False
) -> Check:
    """Cheap check on the flat subscription list of ``GET /customers?expand=subscriptions``:
    does OpenMeter differ from what the change request wants (or is it not settled yet)?

    OpenMeter expands only the subscription active now, so a scheduled successor is seen
    through the current subscription's ``subscription.superseding.id`` annotation (and its plan
    only when the list happens to include it). ``full`` (the nightly sweep) reconciles every
    change that is not converged, which also catches a successor replaced by hand.

    The listing has no items. A converged change carries the mark OpenMeter showed when it
    converged (``reconciler.domain.drift``): a current subscription whose ``id@updatedAt``
    moved since is read once (``READ_ITEMS``) and its items compared; the full sweep reads every
    converged active subscription. A cancelation respected at convergence (the mark names the
    canceled subscription, or none) stays in sync while nothing else moves.
    """
    if change.status in (ChangeStatus.FAILED, ChangeStatus.SUPERSEDED):
        return Check.IN_SYNC
    if change.status is ChangeStatus.PENDING:
        return Check.RECONCILE
    current, successor = pick(subs)
    superseded_by = (current.annotations or {}).get(SUPERSEDING) if current else None
    if change.status is ChangeStatus.CONVERGED:
        mark = ObservedMark.decode(change.observed_mark)
        token = subscription_token(current.id, current.updated_at) if current else NO_SUBSCRIPTION
        unmoved = mark is not None and mark.token == token
        if current is None:
            # gone: a cancelation that took effect (respected once, then left alone)
            return Check.IN_SYNC if unmoved else Check.RECONCILE
        if not _matches(change, current):
            return Check.RECONCILE  # the plan on record was changed by hand
        if superseded_by or (successor is not None and not _matches(change, successor)):
            return Check.RECONCILE  # a change scheduled by hand after we converged
        if current.status != "active":
            # canceled: respected when the engine saw it so, else it has to look
            return Check.IN_SYNC if unmoved else Check.RECONCILE
        if mark is None:
            # converged before marks were stored: the full sweep settles it once (and marks it)
            return Check.RECONCILE if full else Check.IN_SYNC
        if full or not unmoved:
            return Check.READ_ITEMS
        return Check.IN_SYNC
    # applied / scheduled: waiting for a billing boundary
    if full:
        return Check.RECONCILE
    if change.converges_at is not None and change.converges_at <= now:
        return Check.RECONCILE  # the boundary passed (perhaps while we were down)
    if successor is not None:
        return Check.RECONCILE if not _matches(change, successor) else Check.IN_SYNC
    if superseded_by:
        return Check.IN_SYNC  # a successor is scheduled (its plan is checked by the full sweep)
    # no successor: in sync only if the current subscription already is the desired plan
    if current is not None and _matches(change, current):
        return Check.IN_SYNC
    return Check.RECONCILE


def needs_reconcile(
    change: DesiredView, subs: Sequence[SubscriptionListing], now: datetime, *, full: bool = False
) -> bool:
    """``sweep_check`` as a yes/no: anything but in sync (an item read included)."""
    return sweep_check(change, subs, now, full=full) is not Check.IN_SYNC


async def read_ahead_pages(pages: AsyncIterator[list[T]]) -> AsyncIterator[list[T]]:
    """The pages of ``pages``; the next one is read (in a task) while the caller works on the
    one just yielded, so reading OpenMeter's next page overlaps checking this one (two pages in
    memory at most)."""

    async def next_page() -> list[T] | None:
        try:
            return await anext(pages)
        except StopAsyncIteration:
            return None

    pending: asyncio.Task[list[T] | None] = asyncio.create_task(next_page())
    try:
        while True:
            page = await pending
            if page is None:
                return
            pending = asyncio.create_task(next_page())
            yield page
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


class EventsConfigError(ValueError):
    """Outbound events are configured but unusable (URL or secret); the message has no secret."""


class Worker:
    def __init__(
        self,
        rt: Runtime,
        metrics: Metrics,
        *,
        refresh_seconds: float = 5.0,
        sweep_at_start: bool = True,
    ) -> None:
        s = rt.settings
        self.rt = rt
        self.metrics = metrics
        self.refresh_seconds = refresh_seconds
        self.sweep_at_start = sweep_at_start
        self.concurrency = s.concurrency
        self._sem = asyncio.Semaphore(s.concurrency)
        self._wake = asyncio.Event()
        self._kicked: dict[str, None] = {}
        # the due poll asked for due work (a kick alone does not: its customer is started
        # directly, and a store query per webhook would slow intake for nothing)
        self._due_wanted = False
        self._inflight: dict[str, asyncio.Task[str | None]] = {}
        self._rerun: set[str] = set()
        self._backoff: dict[str, tuple[float, float]] = {}  # customer -> (not before, delay)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._scheduler: AsyncIOScheduler | None = None
        self._leader_cm: AbstractAsyncContextManager[Leadership] | None = None
        self.leadership: Leadership | None = None
        self._leader_lock = asyncio.Lock()
        self.deliverer: EventDeliverer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        s = self.rt.settings
        if s.events_url is not None:
            try:
                self.deliverer = EventDeliverer(
                    self.rt.store,
                    s.events_url.get_secret_value(),
                    s.events_secret.get_secret_value() if s.events_secret else "",
                    self.rt.clock,
                    on_attempt=self.metrics.count_event_attempt,
                )
            except ValueError as exc:
                raise EventsConfigError(str(exc)) from None
        self._leader_cm = self.rt.store.leader("sweep")
        self.leadership = await self._leader_cm.__aenter__()
        self.metrics.leader.labels("sweep").set(1 if self.leadership.held else 0)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="reconcile-dispatch")
        sched = self._scheduler = AsyncIOScheduler(timezone=UTC)
        sched.add_job(
            self._poll_due,
            IntervalTrigger(seconds=s.due_poll_seconds),
            id="due",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
        )
        first_sweep: dict[str, Any] = (
            {"next_run_time": datetime.now(UTC)} if self.sweep_at_start else {}
        )
        sched.add_job(
            self._spawn_job,
            IntervalTrigger(seconds=s.sweep_interval_seconds),
            args=["sweep"],
            id="sweep",
            coalesce=True,
            max_instances=1,
            **first_sweep,
        )
        sched.add_job(
            self._spawn_job,
            CronTrigger(hour=s.full_sweep_hour_utc, minute=0, timezone=UTC),
            args=["full_sweep"],
            id="full_sweep",
            coalesce=True,
            max_instances=1,
        )
        sched.add_job(
            self._spawn_job,
            IntervalTrigger(seconds=self.refresh_seconds),
            args=["refresh"],
            id="refresh",
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
        )
        if self.deliverer is not None:
            sched.add_job(
                self._spawn_job,
                IntervalTrigger(seconds=s.due_poll_seconds),
                args=["events"],
                id="events",
                next_run_time=datetime.now(UTC),
                coalesce=True,
                max_instances=1,
            )
        sched.start()
        log.info(
            "worker_started",
            instance=s.instance_id,
            leader=self.leadership.held,
            concurrency=s.concurrency,
            sweep_interval_seconds=s.sweep_interval_seconds,
            due_poll_seconds=s.due_poll_seconds,
            full_sweep_hour_utc=s.full_sweep_hour_utc,
        )

    def begin_shutdown(self) -> None:
        """Stop taking work (called from the signal handler, before HTTP has drained)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking work, let work in flight finish for ``drain_seconds``, then cancel it.

        A cancelled reconcile releases its claim (PostgreSQL: the row lock's transaction is
        rolled back; SQLite: the in-process flag is cleared) and the customer stays due, so the
        next start (or another replica) picks it up; the engine re-observes before acting.
        """
        self.begin_shutdown()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        pending: set[asyncio.Task[Any]] = {*self._inflight.values(), *self._jobs.values()}
        if pending:
            log.info("draining", in_flight=sorted(self._inflight), jobs=sorted(self._jobs))
            _, still = await asyncio.wait(pending, timeout=drain_seconds)
            if still:
                log.warning(
                    "drain_timeout_cancelling",
                    in_flight=sorted(self._inflight),
                    drain_seconds=drain_seconds,
                )
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        if self.deliverer is not None:
            await self.deliverer.aclose()
            self.deliverer = None
        if self._leader_cm is not None:
            await self._leader_cm.__aexit__(None, None, None)
            self._leader_cm = None
        self.metrics.leader.labels("sweep").set(0)
        log.info("worker_stopped")

    # -- work queue --------------------------------------------------------------------------

    def kick(self, customer: str) -> None:
        """Reconcile this customer as soon as possible (its change is already stored)."""
        if self._stopping:
            return
        self._kicked[customer] = None
        self._wake.set()

    async def _poll_due(self) -> None:
        self._due_wanted = True
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            names = list(self._kicked)
            self._kicked.clear()
            for name in names:
                self._start(name, "request")
            room = max(0, 2 * self.concurrency - len(self._inflight))
            if not self._due_wanted or room == 0:
                continue  # no room: the next wake looks again
            self._due_wanted = False
            try:
                now = await self.rt.clock.now()
                due = await self.rt.store.claim_due(now, limit=room)
            except Exception as exc:  # the store or the clock is down: try at the next poll
                log.warning("due_poll_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            mono = time.monotonic()
            for name in due:
                until = self._backoff.get(name)
                if until is not None and until[0] > mono:
                    continue
                self._start(name, "due")

    def _start(self, customer: str, trigger: str) -> asyncio.Task[str | None]:
        task = self._inflight.get(customer)
        if task is not None:
            if trigger not in ("sweep", "due"):
                # Asked for again while running (a new request): once more after. A customer
                # merely due is not: the running pass decides its next check itself, and a
                # pass right after it would skip a retry backoff it has just set.
                self._rerun.add(customer)
            return task
        task = asyncio.create_task(self._run(customer, trigger), name=f"reconcile:{customer}")
        self._inflight[customer] = task
        task.add_done_callback(functools.partial(self._done, customer))
        return task

    def _done(self, customer: str, _task: asyncio.Task[str | None]) -> None:
        self._inflight.pop(customer, None)
        if customer in self._rerun:
            self._rerun.discard(customer)
            if not self._stopping:
                self._start(customer, "request")

    async def _run(self, customer: str, trigger: str) -> str | None:
        async with self._sem:
            if self._stopping:
                return None
            try:
                with background(customer):
                    outcome = await self.rt.engine.reconcile(customer)
            except asyncio.CancelledError:
                with bound(customer=customer):
                    log.warning("reconcile_cancelled", trigger=trigger)
                raise
            except Exception as exc:
                prev = self._backoff.get(customer, (0.0, ERROR_BACKOFF_S[0] / 2))[1]
                delay = min(ERROR_BACKOFF_S[1], prev * 2)
                self._backoff[customer] = (time.monotonic() + delay, delay)
                self.metrics.reconciles.labels(trigger, "error").inc()
                with bound(customer=customer):
                    log.error(
                        "reconcile_error",
                        trigger=trigger,
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=delay,
                    )
                return "error"
            self._backoff.pop(customer, None)
            self.metrics.reconciles.labels(trigger, outcome.state.value).inc()
            if outcome.state is OutcomeState.BUSY:
                with bound(customer=customer):
                    log.debug("reconcile_busy", trigger=trigger)
            else:
                with bound(customer=customer, change=outcome.change_id):
                    log.info(
                        "reconcile_done",
                        trigger=trigger,
                        state=outcome.state.value,
                        status=outcome.status,
                        applied=[a.action for a in outcome.applied],
                        error=outcome.error,
                    )
            return outcome.state.value

    async def reconcile(self, customer: str, trigger: str = "admin") -> str | None:
        """Reconcile one customer now (joins a reconcile already running for it)."""
        return await self._start(customer, trigger)

    # -- periodic jobs -----------------------------------------------------------------------

    async def _spawn_job(self, name: str) -> None:
        self.spawn_job(name)

    def spawn_job(self, name: str) -> asyncio.Task[None] | None:
        """Start a job (``sweep``, ``full_sweep``, ``refresh``) unless it is already running."""
        if self._stopping:
            return None
        running = self._jobs.get(name)
        if running is not None and not running.done():
            log.debug("job_still_running", job=name)
            return running
        if name == "refresh":
            coro = self.refresh()
        elif name == "events":
            coro = self.deliver_events()
        else:
            coro = self._sweep_job(full=name == "full_sweep")
        task = asyncio.create_task(coro, name=f"job:{name}")
        self._jobs[name] = task
        task.add_done_callback(functools.partial(self._job_done, name))
        return task

    def _job_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._jobs.get(name) is task:
            del self._jobs[name]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("job_failed", job=name, error=f"{type(exc).__name__}: {exc}")

    async def deliver_events(self) -> None:
        """Deliver due outbound events (leader only, so one replica posts each event)."""
        if self.deliverer is None or not await self.check_leader():
            return
        await self.deliverer.run_once(await self.deliverer.now())

    async def _sweep_job(self, *, full: bool) -> None:
        await self.sweep(full=full)

    async def check_leader(self) -> bool:
        if self.leadership is None or self._stopping:
            return False
        async with self._leader_lock:
            held = await self.leadership.check()
        self.metrics.leader.labels("sweep").set(1 if held else 0)
        return held

    async def refresh(self) -> None:
        """Store-derived gauges: changes and events by status, queue depth, leadership."""
        store = self.rt.store
        try:
            changes = await store.count_changes_by_status()
            events = await store.count_events_by_status()
            now = await self.rt.clock.now()
            depth = len(await store.due_customers(now, limit=10_000))
        except Exception as exc:
            log.warning("metrics_refresh_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.metrics.set_counts(changes, events)
        self.metrics.queue_depth.set(depth)
        await self.check_leader()

    async def sweep(self, *, full: bool = False) -> dict[str, int]:
        """One pass over OpenMeter's customers (leader only). Returns counts by result."""
        kind = "full_sweep" if full else "sweep"
        counts: dict[str, int] = {}
        if not await self.check_leader():
            log.debug("sweep_skipped_not_leader", kind=kind)
            return counts
        started = time.perf_counter()
        log.info("sweep_started", kind=kind)
        pages = self.rt.client.iter_customer_listings(page_size=SWEEP_PAGE_SIZE)
        try:
            # The next page is read while this one is checked (bounded: two pages in memory).
            async for batch in read_ahead_pages(pages):
                if self._stopping:
                    break
                await self._sweep_batch(batch, full, counts)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.sweep_seconds.labels(kind).observe(elapsed)
            log.info("sweep_finished", kind=kind, seconds=round(elapsed, 3), **counts)
        return counts

    async def _items_drifted(
        self, cust: CustomerListing, change: DesiredSummary, now: datetime
    ) -> bool | None:
        """One read of the converged customer's current subscription: do its items differ from
        those it had when the change converged? The same items under a moved token (a metadata
        edit, say) refresh the stored mark, so the next quick sweep reads nothing. None: the
        read failed (the next sweep tries again)."""
        current, _ = pick(cust.subscriptions or [])
        if current is None:  # pragma: no cover - sweep_check reads only a current subscription
            return True
        stored = ObservedMark.decode(change.observed_mark)
        try:
            sub = await self.rt.client.get_subscription(current.id)
        except Exception as exc:
            with bound(customer=change.customer, change=change.id):
                log.warning("sweep_read_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        seen = mark_of(mapping.to_observed_subscription(sub))
        if stored is None or seen.digest != stored.digest:
            return True
        if seen.token != stored.token:
            with contextlib.suppress(Exception):  # only a saving: the next sweep reads again
                await self.rt.store.refresh_observed_mark(
                    change.id, change.observed_mark, seen.encode()
                )
        return False

    async def _sweep_batch(
        self, batch: Iterable[CustomerListing], full: bool, counts: dict[str, int]
    ) -> None:
        kind = "full_sweep" if full else "sweep"
        now = await self.rt.clock.now()
        store = self.rt.store
        batch = list(batch)
        # One store round trip per page, not one per customer (the no-op sweep's hot path).
        # By key, and by id for the customers their keys did not find: one transaction.
        known = await store.desired_summaries((c.key, c.id) for c in batch)
        check_sem = asyncio.Semaphore(self.concurrency)
        page_counts: dict[str, int] = {}

        def count(result: str) -> None:
            page_counts[result] = page_counts.get(result, 0) + 1

        # The cheap checks run inline; only customers that need work get a task (a task per
        # customer of a no-op page was a quarter of the sweep's time).
        work: list[tuple[CustomerListing, DesiredSummary | None, Check]] = []
        for cust in batch:
            change = (known.get(cust.key) if cust.key else None) or (
                known.get(cust.id) if cust.id else None
            )
            check = Check.RECONCILE
            if change is None:
                if not full:
                    count("no_desired_state")
                    continue
            else:
                check = sweep_check(change, cust.subscriptions or [], now, full=full)
                if check is Check.IN_SYNC:
                    count("in_sync")
                    continue
            work.append((cust, change, check))

        async def one(cust: CustomerListing, change: DesiredSummary | None, check: Check) -> None:
            async with check_sem:
                if self._stopping:
                    return
                if change is not None and check is Check.READ_ITEMS:
                    drifted = await self._items_drifted(cust, change, now)
                    if drifted is None:
                        count("error")
                        return
                    if not drifted:
                        count("in_sync")
                        return
                if change is None:
                    ref = cust.key or cust.id
                    try:
                        adopted = await adopt(self.rt.collaborators, ref)
                    except Exception as exc:
                        with bound(customer=ref):
                            log.warning("adopt_failed", error=f"{type(exc).__name__}: {exc}")
                        count("error")
                        return
                    if adopted is None:
                        count("untagged")
                        return
                    count("adopted")
                    customer = adopted.customer
                else:
                    with bound(customer=change.customer, change=change.id):
                        log.info(
                            "sweep_found_difference",
                            status=change.status.value,
                            items_drifted=check is Check.READ_ITEMS,
                        )
                    count("reconciled")
                    customer = change.customer
            await self._start(customer, "sweep")

        try:
            await asyncio.gather(*(one(c, ch, k) for c, ch, k in work))
        finally:
            for result, n in page_counts.items():
                counts[result] = counts.get(result, 0) + n
                self.metrics.sweep_customers.labels(kind, result).inc(n)
